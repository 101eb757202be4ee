"""Rank functions for the checkpoint-conversion tests (spawned by ``run_on_ranks``).

Kept out of the test modules so the spawned children import only this small file.
"""
from __future__ import annotations

import os
import runpy
from pathlib import Path
from typing import Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]


def _cli(tool: str):
    """The ``main(argv)`` of ``tools/<tool>.py`` (loaded as a module, not run)."""
    return runpy.run_path(str(REPO_ROOT / "tools" / f"{tool}.py"), run_name="cli_under_test")["main"]


def _inject_fault(job: Dict):
    """Patch the converter to raise mid-write after ``job['fault_after']`` tensors."""
    from unittest import mock

    from megatron_brrm.checkpoint import hf_io

    calls = {"n": 0}
    cls, target = ((hf_io.HFSafetensorsReader, "get_tensor") if job["op"] == "hf2mg"
                   else (hf_io.ShardedSafetensorsWriter, "write"))
    original = getattr(cls, target)

    def faulty(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > job["fault_after"]:
            raise RuntimeError("simulated crash mid-write")
        return original(self, *args, **kwargs)

    return mock.patch.object(cls, target, faulty)


def run_jobs(rank: int, world_size: int, jobs: List[Dict]) -> List[Dict]:
    """Run conversion jobs in one process; each returns ``{"ok", "error", "type", "exists", "leftovers"}``.

    Job keys: ``op`` ("hf2mg" | "mg2hf" | "cli_hf2mg" | "cli_mg2hf" | "copy_ckpt" | "tp1_logits"),
    ``kwargs`` (converter arguments) or ``argv`` (CLI), optional ``fault_after`` (simulated crash)
    and ``target`` (report whether it exists and any hidden temporary folders next to it).
    """
    import contextlib

    from megatron_brrm.checkpoint.model_ckpt import convert_hf_to_megatron
    from megatron_brrm.checkpoint.model_export import convert_megatron_to_hf

    from megatron_brrm.parallel import destroy_parallel

    results = []
    for job in jobs:
        op = job["op"]
        out: Dict = {"ok": False, "error": None, "type": None}
        fault = _inject_fault(job) if "fault_after" in job else contextlib.nullcontext()
        try:
            with fault:
                if op == "hf2mg":
                    out["summary"] = convert_hf_to_megatron(**job["kwargs"]).__dict__
                elif op == "mg2hf":
                    out["summary"] = convert_megatron_to_hf(**job["kwargs"]).__dict__
                elif op in ("cli_hf2mg", "cli_mg2hf"):
                    tool = "convert_hf_to_megatron" if op == "cli_hf2mg" else "convert_megatron_to_hf"
                    out["rc"] = _cli(tool)(job["argv"])
                elif op == "copy_ckpt":
                    copy_checkpoint(job["src"], job["dst"], drop_hf=job.get("drop_hf", False),
                                    drop_key=job.get("drop_key"))
                elif op == "tp1_logits":
                    out["logits"] = megatron_logits(job["hf_dir"], job["ckpt"], job["ids"], tp=1, pp=1)
                else:
                    raise ValueError(op)
            out["ok"] = True
        except Exception as exc:  # reported to the test, which asserts on it
            out["error"], out["type"] = str(exc), type(exc).__name__
        target = job.get("target")
        if target:
            parent = Path(target).parent
            out["exists"] = Path(target).exists()
            out["leftovers"] = sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{Path(target).name}."))
        results.append(out)
    destroy_parallel()
    return results


def copy_checkpoint(src: str, dst: str, drop_hf: bool = False, drop_key: Optional[str] = None) -> None:
    """Copy a converted checkpoint, optionally without ``hf/`` + ``run_config.yaml`` (like a
    bare training checkpoint) or without one tensor key.

    Dropping a key edits the DCP ``.metadata`` (the pickled ``Metadata``): its
    ``state_dict_metadata`` entry and storage records go, as if the tensor had never been saved.
    """
    import pickle
    import shutil

    shutil.copytree(src, dst)
    if drop_hf:
        shutil.rmtree(Path(dst) / "hf")
        (Path(dst) / "run_config.yaml").unlink()
    if drop_key:
        path = Path(dst) / ".metadata"
        md = pickle.loads(path.read_bytes())
        assert drop_key in md.state_dict_metadata, sorted(md.state_dict_metadata)
        del md.state_dict_metadata[drop_key]
        md.storage_data = {k: v for k, v in md.storage_data.items() if k.fqn != drop_key}
        path.write_bytes(pickle.dumps(md))


def megatron_logits(hf_dir: str, ckpt: str, ids, tp: int, pp: int, save_to: Optional[str] = None):
    """Build the model at TP/PP, ``dist_checkpointing.load`` ``ckpt``, return full-vocab logits.

    Logits ``[batch, seq, padded_vocab]`` (fp32 numpy array, TP-gathered) on the last pipeline
    stage's TP rank 0, None elsewhere. With ``save_to``, the loaded model is saved again there with
    ``dist_checkpointing.save`` (a checkpoint written by this TP/PP layout).
    """
    import torch
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as mpu
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_brrm.config import ModelConfig, ParallelConfig
    from megatron_brrm.model.build import build_gpt_model, load_hf_config
    from megatron_brrm.parallel import initialize_parallel

    pcfg = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, backend="gloo")
    initialize_parallel(pcfg)
    model = build_gpt_model(load_hf_config(hf_dir), ModelConfig(transformer_impl="local", params_dtype="fp32"), pcfg)
    with torch.no_grad():
        for p in model.parameters():  # loading must overwrite every value
            p.fill_(float("nan"))
    state = dist_checkpointing.load(model.sharded_state_dict(), ckpt)
    model.load_state_dict(state, strict=True)
    if save_to is not None:
        if torch.distributed.get_rank() == 0:
            os.makedirs(save_to, exist_ok=False)
        torch.distributed.barrier()
        dist_checkpointing.save(model.sharded_state_dict(), save_to)
    model.eval()
    batch, seq = ids.shape

    def forward_step(data_iterator, m):
        tokens = next(data_iterator)
        out = m(tokens, torch.arange(seq).unsqueeze(0), attention_mask=None)
        return out, lambda t: (t.sum() * 0.0, {"logits": t.detach()})

    with torch.no_grad():
        store = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter([ids[i:i + 1] for i in range(batch)]), model=model,
            num_microbatches=batch, seq_length=seq, micro_batch_size=1, forward_only=True)
    if not mpu.is_pipeline_last_stage():
        return None
    local = torch.cat([d["logits"] for d in store], dim=0)
    parts = [torch.empty_like(local) for _ in range(tp)]
    torch.distributed.all_gather(parts, local.contiguous(), group=mpu.get_tensor_model_parallel_group())
    if mpu.get_tensor_model_parallel_rank() != 0:
        return None
    # numpy, not a tensor: torch's queue pickling shares tensor storage through file
    # descriptors, which fails once this process has exited.
    return torch.cat(parts, dim=-1).numpy()


def load_save_layout(rank: int, world_size: int, cases: List[Dict], tp: int, pp: int) -> List:
    """For each case: load ``ckpt`` at TP/PP, save it to ``save_to``, return logits (see above)."""
    from megatron_brrm.parallel import destroy_parallel

    outs = []
    try:
        for case in cases:
            outs.append(megatron_logits(case["hf_dir"], case["ckpt"], case["ids"], tp, pp, save_to=case["save_to"]))
    finally:
        destroy_parallel()
    return outs


def train_and_save(rank: int, world_size: int, model_dir: str, save_dir: str):
    """One GRPO-loss step of the policy worker at TP=``world_size``, then a training checkpoint.

    Returns the trained model as ``{hf_name: numpy array}`` on rank 0 (gathered with the
    worker's own export, an independent path from the converter), None elsewhere.
    """
    import torch

    from megatron_brrm.config import RunConfig
    from megatron_brrm.parallel import destroy_parallel
    from megatron_brrm.rl.loss import ClippedPGConfig, PGLoss
    from megatron_brrm.workers.policy import PolicyWorker

    cfg = RunConfig()
    cfg.model.hf_path = model_dir
    cfg.parallel.tensor_model_parallel_size, cfg.parallel.backend = world_size, "gloo"
    cfg.grpo.optimizer.lr, cfg.grpo.optimizer.lr_warmup_steps, cfg.grpo.micro_batch_size = 1e-2, 0, 2
    try:
        worker = PolicyWorker(cfg)
        gen = torch.Generator().manual_seed(7)
        ids = torch.randint(0, worker.vocab_size, (2, 10), generator=gen)
        mask = torch.zeros(2, 10)
        mask[:, 4:] = 1
        batch = {"input_ids": ids, "input_lengths": torch.tensor([10, 10]), "loss_mask": mask,
                 "advantages": torch.tensor([1.0, -1.0])}
        batch["old_logprobs"] = worker.get_logprobs(batch)
        batch["ref_logprobs"] = worker.get_reference_logprobs(batch)
        worker.train(batch, PGLoss(ClippedPGConfig(kl_coef=0.0)))
        worker.save_checkpoint(save_dir, extra_state={}, keep_last_k=1)
        state = {k: v.numpy() for k, v in worker.hf_state_dict().items()}  # collective: every rank
        return state if rank == 0 else None
    finally:
        destroy_parallel()
