"""Megatron operations that hit each CPU-compat patch; run in a fresh process per patch set.

:func:`probe` runs in a fresh process (``run_on_ranks`` with one rank): for each plan it
installs ``cpu_compat`` minus the patches named in ``skip``, runs the named operations and
reports, per operation, None (it worked) or the error with the Megatron frame it came from.
"""
from __future__ import annotations

import os
import tempfile
import traceback
from typing import Dict, List, Optional

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


def op_install_is_idempotent():
    """A second ``install()`` adds nothing: one mode on the stack, stand-ins unchanged."""
    import torch

    from megatron_brrm.parallel import cpu_compat

    before = (torch._C._len_torch_function_stack(), torch.cuda.current_device, torch.cuda.synchronize)
    assert cpu_compat.install() is True
    after = (torch._C._len_torch_function_stack(), torch.cuda.current_device, torch.cuda.synchronize)
    assert before == after and before[0] == 1, (before, after)


OPS = {name[3:]: fn for name, fn in globals().items() if name.startswith("op_")}


def _describe(exc: BaseException) -> Dict[str, str]:
    """Error text plus the innermost Megatron-Core frame and the innermost frame overall."""
    frames = traceback.extract_tb(exc.__traceback__)
    megatron = [f for f in frames if "megatron/core/" in f.filename.replace(os.sep, "/")]
    where = lambda f: f"{f.filename.replace(os.sep, '/').split('site-packages/')[-1]}:{f.name}"  # noqa: E731
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return {"error": f"{type(exc).__name__}: {msg}", "megatron_frame": where(megatron[-1]) if megatron else "",
            "innermost_frame": where(frames[-1]) if frames else ""}


def probe(rank: int, world_size: int, plans: List[Dict]) -> List[Dict[str, Optional[Dict[str, str]]]]:
    """For each plan ``{"skip": [...], "ops": [...]}``: install every cpu_compat patch except
    ``skip``, run the ops, record None (worked) or the error (:func:`_describe`), reinstall.

    One fresh single-process gloo world (started by ``run_on_ranks``), so the patches never
    touch the pytest process.
    """
    import torch
    from megatron.core import parallel_state as mpu

    from megatron_brrm.parallel import cpu_compat
    from megatron_brrm.parallel.init import seed_rngs

    cpu_compat.install()
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    mpu.initialize_model_parallel()
    out = []
    try:
        for plan in plans:
            cpu_compat.uninstall(plan["skip"])
            if cpu_compat.is_installed("rng_tracker"):
                seed_rngs(1234, tp_rank=0)
            results: Dict[str, Optional[Dict[str, str]]] = {}
            for name in plan["ops"]:
                try:
                    OPS[name]()
                    results[name] = None
                except Exception as exc:  # the failure is the measurement
                    results[name] = _describe(exc)
            out.append(results)
            cpu_compat.install()
            seed_rngs(1234, tp_rank=0)
    finally:
        mpu.destroy_model_parallel()
        torch.distributed.destroy_process_group()
    return out
