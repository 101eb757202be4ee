"""Training checkpoints: Megatron ``dist_checkpointing`` of model, optimizer, LR schedule,
RNG, data position and step; atomic commit, a ``latest`` pointer, keep-last-k, resharding.

Layout of ``save_dir``::

    step_00000012/            a complete checkpoint (a dist_checkpointing folder)
        train_state.json      step, layout, caller's extra state (data-loader position, ...)
    step_00000013.tmp/        a save in progress (or one interrupted by a crash)
    latest                    text file: the name of the newest complete checkpoint

Commit protocol (every rank calls :func:`save_train_checkpoint`, collectively): all ranks
write their shards into ``step_N.tmp``; after a barrier rank 0 writes
``train_state.json``, fsyncs, renames ``step_N.tmp`` -> ``step_N`` and then replaces
``latest`` through ``latest.tmp`` + ``os.replace`` (atomic on POSIX). A crash at any point
before the rename leaves ``latest`` naming the previous complete checkpoint, and stale
``*.tmp`` folders are removed by the next save. Older ``step_*`` folders beyond
``keep_last_k`` are deleted after the commit (as NeMo-RL's ``CheckpointManager``).

Resharding: the model is stored as Megatron ``ShardedTensor`` s and the distributed
optimizer in the ``fully_reshardable`` format, so a checkpoint saved at one TP/PP/DP layout
loads at another (docs/design.md §7). The RNG state is stored per (PP, TP, DP) rank and restored
only when the layout is unchanged (as Megatron-LM does); otherwise the RNG keeps the seeding
of the new layout (no effect with dropout 0).

Facts this relies on (docs/design.md §7): ``psutil`` must be installed (the torch_dist writer
hangs without it); scripts need a ``__main__`` guard; the torch Adam state must exist before
``sharded_state_dict(is_loading=True)`` (:func:`prefill_optimizer_state`).
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from megatron_brrm.parallel.cpu_compat import use_in_process_save_queue

log = logging.getLogger(__name__)

OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable", "chained_optim_avoid_prefix": True}
_STEP_RE = re.compile(r"^step_(\d+)$")
LATEST = "latest"
STATE_FILE = "train_state.json"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be saved or loaded (the message names the folder and the fix)."""


def step_dir_name(step: int) -> str:
    """``step_00000042`` for step 42 (zero-padded so names sort by step)."""
    return f"step_{step:08d}"


def checkpoint_step(path) -> int:
    """The step of a checkpoint folder named ``step_<N>`` (``step_00000042`` -> 42).

    Raises:
        ValueError: the folder name is not ``step_<digits>``.
    """
    m = _STEP_RE.match(Path(path).name)
    if m is None:
        raise ValueError(f"{path}: not a training checkpoint folder (expected a name like {step_dir_name(42)})")
    return int(m.group(1))


def list_checkpoints(save_dir) -> List[Path]:
    """Complete checkpoint folders in ``save_dir``, oldest first (``*.tmp`` excluded)."""
    root = Path(save_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(save_dir) -> Optional[Path]:
    """The folder named by ``save_dir/latest``, or None when there is no checkpoint yet.

    Raises:
        CheckpointError: ``latest`` names a folder that does not exist.
    """
    pointer = Path(save_dir) / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    path = Path(save_dir) / name
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{pointer} names '{name}', which is not a complete checkpoint in {save_dir}; "
                              "point it at an existing step_* folder or delete it to start fresh")
    return path


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _finalize(tmp_dir: Path, final_dir: Path, save_dir: Path) -> None:
    """Rank 0: rename the finished ``.tmp`` folder and move ``latest`` to it (the commit)."""
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.rename(tmp_dir, final_dir)
    _fsync_dir(save_dir)
    _write_atomic(save_dir / LATEST, final_dir.name + "\n")


def _chunks(model) -> list:
    return list(model) if isinstance(model, (list, tuple)) else [model]


def _unwrap(chunk):
    return getattr(chunk, "module", chunk)


def _optimizers(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def prefill_optimizer_state(optimizer) -> None:
    """Create zero ``exp_avg`` / ``exp_avg_sq`` / ``step`` entries for every parameter of the
    inner torch Adam(W) that has no state yet (before any step, or in a fresh process).

    Megatron's distributed optimizer reads the inner state's ``step`` to build its state
    dict; a fresh torch Adam has none (docs/design.md §7). Zeros and step 0 are Adam's own
    initial state, so an update after this is unchanged.
    """
    for sub in _optimizers(optimizer):
        inner = getattr(sub, "optimizer", None)
        if inner is None:
            continue
        for group in inner.param_groups:
            for p in group["params"]:
                st = inner.state[p]
                if len(st) == 0:
                    st["exp_avg"] = torch.zeros_like(p.data)
                    st["exp_avg_sq"] = torch.zeros_like(p.data)
                    st["step"] = torch.tensor(0.0)


def _rng_state() -> Dict[str, Any]:
    from megatron.core import tensor_parallel  # lazy: keeps train_bt --help fast

    state = {"random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    from megatron.core import tensor_parallel  # lazy: keeps train_bt --help fast

    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _layout() -> Dict[str, int]:
    from megatron.core import parallel_state as mpu  # lazy: keeps train_bt --help fast

    return {"tp": mpu.get_tensor_model_parallel_world_size(), "pp": mpu.get_pipeline_model_parallel_world_size(),
            "dp": mpu.get_data_parallel_world_size()}


def _sharded_state_dict(model, optimizer, scheduler, is_loading: bool) -> Dict[str, Any]:
    from megatron.core import parallel_state as mpu  # lazy: keeps train_bt --help fast
    from megatron.core.dist_checkpointing.mapping import ShardedObject  # lazy: keeps train_bt --help fast

    chunks = _chunks(model)
    sd: Dict[str, Any] = {}
    model_sd: Dict[str, Any] = {}
    for i, chunk in enumerate(chunks):
        key = "model" if len(chunks) == 1 else f"model{i}"
        sd[key] = _unwrap(chunk).sharded_state_dict()
        model_sd.update(sd[key])
    prefill_optimizer_state(optimizer)
    sd["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=OPTIM_METADATA)
    sd["opt_param_scheduler"] = scheduler.state_dict()
    pp, tp, dp = (mpu.get_pipeline_model_parallel_world_size(), mpu.get_tensor_model_parallel_world_size(),
                  mpu.get_data_parallel_world_size())
    pos = (mpu.get_pipeline_model_parallel_rank(), mpu.get_tensor_model_parallel_rank(), mpu.get_data_parallel_rank())
    sd["rng_state"] = ShardedObject(f"rng_state_pp{pp}_tp{tp}_dp{dp}", _rng_state(), (pp, tp, dp), pos, replica_id=0)
    return sd


def _load_optimizer(optimizer, state) -> None:
    """``optimizer.load_state_dict`` with a fix for the distributed optimizer + torch Adam.

    megatron-core 0.16.1 ``DistributedOptimizer._set_main_param_and_optimizer_states``
    copies every key of the inner torch Adam state, including ``step``, from the loaded
    ``fully_reshardable`` parameter state, which deliberately omits ``step`` (it is restored
    from the param groups): ``KeyError: 'step'``. We load the regular part first, then the
    parameter state with ``step`` held aside, then put ``step`` back. Megatron also gives
    every parameter the *same* ``step`` tensor object, which torch Adam increments in place
    once per parameter (wrong bias correction after a resume): each gets its own copy.
    """
    subs = _optimizers(optimizer)
    states = [state] if len(subs) == 1 else [v for _, v in sorted(state.items())]
    for sub, st in zip(subs, states):
        st = dict(st)
        param_state = st.pop("param_state", None)
        kind = st.pop("param_state_sharding_type", None)
        sub.load_state_dict(st)
        if param_state is None:
            continue
        if kind != "fully_reshardable":
            raise CheckpointError(f"optimizer state was saved as '{kind}'; only 'fully_reshardable' is supported")
        inner = sub.optimizer
        held = {p: s.pop("step") for p, s in inner.state.items() if "step" in s}
        try:
            sub.load_parameter_state_from_fully_reshardable(param_state)
        finally:
            for p, v in held.items():
                inner.state[p]["step"] = v.detach().clone()


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _all_params_finite(model) -> bool:
    device = next((p.device for c in _chunks(model) for p in c.parameters()), torch.device("cpu"))
    bad = torch.zeros(1, device=device)
    for chunk in _chunks(model):
        for p in chunk.parameters():
            if not torch.isfinite(p.detach()).all():
                bad += 1
                break
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(bad)
    return float(bad) == 0.0


def save_train_checkpoint(save_dir, step: int, model, optimizer, scheduler, extra_state: Optional[dict] = None,
                          keep_last_k: Optional[int] = 3, strategy: str = "torch_dist") -> Path:
    """Save a complete training checkpoint for ``step`` (collective: every rank calls it).

    Args:
        save_dir: root folder (created if missing).
        step: number of optimizer steps taken.
        model: this rank's (DDP-wrapped) model chunk or list of chunks.
        optimizer: the Megatron optimizer; scheduler: ``OptimizerParamScheduler``.
        extra_state: JSON-serialisable caller state (data-loader position, metrics, ...).
        keep_last_k: number of complete checkpoints to keep (None or <= 0 keeps all).
        strategy: dist_checkpointing save backend (``torch_dist``).

    Returns:
        The committed folder ``save_dir/step_N``.

    Raises:
        CheckpointError: a parameter is NaN/inf (a broken model never reaches a checkpoint),
            or ``extra_state`` is not JSON-serialisable.
    """
    from megatron.core import dist_checkpointing  # lazy: keeps train_bt --help fast

    save_dir = Path(save_dir)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    try:
        state_text = json.dumps({"step": int(step), "layout": _layout(), "extra_state": extra_state or {}}, indent=1)
    except TypeError as exc:
        raise CheckpointError(f"extra_state for step {step} is not JSON-serialisable: {exc}") from None
    if not _all_params_finite(model):
        raise CheckpointError(f"refusing to save step {step} to {save_dir}: the model has NaN/inf parameters")
    final_dir = save_dir / step_dir_name(step)
    tmp_dir = save_dir / (final_dir.name + ".tmp")
    if rank == 0:
        save_dir.mkdir(parents=True, exist_ok=True)
        for stale in save_dir.glob("step_*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp_dir.mkdir()
    _barrier()
    sd = _sharded_state_dict(model, optimizer, scheduler, is_loading=False)
    use_in_process_save_queue()
    dist_checkpointing.save(sd, str(tmp_dir), sharded_strategy=(strategy, 1), content_metadata=OPTIM_METADATA)
    _barrier()
    if rank == 0:
        _write_atomic(tmp_dir / STATE_FILE, state_text)
        _finalize(tmp_dir, final_dir, save_dir)
        if keep_last_k is not None and keep_last_k > 0:
            for old in list_checkpoints(save_dir)[:-keep_last_k]:
                if old != final_dir:
                    shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final_dir


def load_train_checkpoint(path, model, optimizer, scheduler) -> Dict[str, Any]:
    """Load a checkpoint folder (any TP/PP/DP layout) into this rank's model, optimizer and
    scheduler (collective). Use :func:`latest_checkpoint` to find the folder.

    Args:
        path: a ``step_N`` folder written by :func:`save_train_checkpoint`.
        model, optimizer, scheduler: as for saving, built for the current layout.

    Returns:
        ``{"step": int, "extra_state": dict, "layout": dict (saved), "rng_restored": bool}``.

    Raises:
        CheckpointError: the folder is missing or incomplete (no ``train_state.json``).
    """
    from megatron.core import dist_checkpointing  # lazy: keeps train_bt --help fast

    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"{path} is not a complete training checkpoint (no {STATE_FILE}); "
                              "pass a step_* folder, or the save_dir to use its 'latest'")
    meta = json.loads(state_file.read_text())
    same_layout = meta.get("layout") == _layout()
    sd = _sharded_state_dict(model, optimizer, scheduler, is_loading=True)
    if not same_layout:
        sd.pop("rng_state")
    loaded = dist_checkpointing.load(sd, str(path))
    chunks = _chunks(model)
    for i, chunk in enumerate(chunks):
        key = "model" if len(chunks) == 1 else f"model{i}"
        _unwrap(chunk).load_state_dict(loaded[key], strict=True)
    _load_optimizer(optimizer, loaded["optimizer"])
    scheduler.load_state_dict(loaded["opt_param_scheduler"])
    if same_layout:
        _set_rng_state(loaded["rng_state"])
    else:
        log.info("checkpoint %s was saved at layout %s, now %s: RNG state not restored", path, meta.get("layout"),
                 _layout())
    _barrier()
    return {"step": int(meta["step"]), "extra_state": meta.get("extra_state", {}), "layout": meta.get("layout"),
            "rng_restored": same_layout}
