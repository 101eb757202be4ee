"""Megatron operations that hit each CPU-compat patch; run in a fresh process per patch set.

:func:`probe` installs ``cpu_compat`` minus the patches named in ``skip``, starts a
single-process gloo world, runs the named operations in order and reports, per operation,
None (it worked) or ``"ExceptionType: first line of the message"``.
"""
from __future__ import annotations

import os
import tempfile
from typing import Dict, List, Optional, Sequence

TINY = dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"], num_hidden_layers=2, hidden_size=32,
            intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=256,
            max_position_embeddings=64, rms_norm_eps=1e-6, rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
            tie_word_embeddings=False, hidden_act="silu")


def _model(**model_kwargs):
    from megatron_brrm.config import ModelConfig, ParallelConfig
    from megatron_brrm.model.build import build_gpt_model

    mcfg = ModelConfig(transformer_impl="local", make_vocab_size_divisible_by=1, **model_kwargs)
    return build_gpt_model(TINY, mcfg, ParallelConfig())


def _fwd_bwd(model):
    import torch

    ids = torch.arange(16).reshape(1, 16) % TINY["vocab_size"]
    out = model(ids, torch.arange(16).unsqueeze(0), attention_mask=None, labels=ids)
    out.sum().backward()


def _ddp(model):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    return DistributedDataParallel(model.config, DistributedDataParallelConfig(), model)


def op_seed():
    """Megatron's named RNG streams (model-parallel / data-parallel / expert-parallel)."""
    from megatron_brrm.parallel.init import seed_rngs

    seed_rngs(1234, tp_rank=0)


def op_forward_backward():
    """GPTModel built on CPU (use_cpu_initialization) forward + backward."""
    _fwd_bwd(_model())


def op_recompute():
    """Full activation recompute: CheckpointFunction snapshots/restores the RNG state."""
    _fwd_bwd(_model(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1))


def op_ddp():
    """Megatron DDP: contiguous grad buffers are allocated on ``torch.cuda.current_device()``."""
    _fwd_bwd(_ddp(_model()))


def op_bf16_optimizer():
    """Mixed-precision optimizer: checks ``param.type() == 'torch.cuda.BFloat16Tensor'``."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    model = _ddp(_model(params_dtype="bf16"))
    get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-3, bf16=True, use_distributed_optimizer=False),
                           [model])


def op_broadcast_data():
    """``tensor_parallel.broadcast_data`` moves the batch with ``.cuda()``."""
    import torch
    from megatron.core import tensor_parallel

    out = tensor_parallel.broadcast_data(["x"], {"x": torch.arange(4)}, torch.int64)
    assert torch.equal(out["x"], torch.arange(4))


def op_dist_ckpt_save():
    """dist_checkpointing torch_dist save: ``torch.cuda.synchronize()`` after the D2H copies."""
    from megatron.core import dist_checkpointing

    model = _model()
    with tempfile.TemporaryDirectory() as d:
        dist_checkpointing.save(model.sharded_state_dict(), d)


OPS = {name[3:]: fn for name, fn in globals().items() if name.startswith("op_")}


def probe(rank: int, world_size: int, skip: Sequence[str], ops: Sequence[str]) -> Dict[str, Optional[str]]:
    """Run ``ops`` with every cpu_compat patch except ``skip`` (one process; see module doc)."""
    import torch
    from megatron.core import parallel_state as mpu

    from megatron_brrm.parallel import cpu_compat
    from megatron_brrm.parallel.launch import find_free_port

    # Each probe is its own single-process world, whatever run_on_ranks started around it.
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_PORT=str(find_free_port()))
    cpu_compat.install(skip=list(skip))
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    mpu.initialize_model_parallel()
    results: Dict[str, Optional[str]] = {}
    try:
        for name in ops:
            try:
                OPS[name]()
                results[name] = None
            except Exception as exc:  # the failure is the measurement
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                results[name] = f"{type(exc).__name__}: {msg}"
    finally:
        mpu.destroy_model_parallel()
        torch.distributed.destroy_process_group()
    return results


def probe_many(rank: int, world_size: int, plans: List[Dict]) -> Dict[str, Optional[str]]:
    """Rank ``rank`` runs ``plans[rank]`` (``{"skip": [...], "ops": [...]}``) with :func:`probe`."""
    plan = plans[rank]
    return probe(rank, world_size, plan["skip"], plan["ops"])
