"""Initialise and tear down torch.distributed plus Megatron-Core's parallel state.

One call, :func:`initialize_parallel`, does what Megatron-LM's ``initialize_megatron``
does for the parallel layout (``megatron/training/initialize.py``): join the process group
from the ``torchrun``-style environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``, ``LOCAL_RANK``), build TP/PP/VPP/CP/DP groups with
``parallel_state.initialize_model_parallel`` and seed the model-parallel RNG streams.
Without CUDA it uses gloo and installs :mod:`megatron_brrm.parallel.cpu_compat` first.
:func:`destroy_parallel` undoes both (a process that exits with the gloo group alive
sporadically aborts with exit code 134; docs/design.md §7).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch

from megatron_brrm.parallel import cpu_compat
from megatron_brrm.parallel.cpu_compat import seed_model_parallel_rng
from megatron_brrm.parallel.launch import find_free_port


# Whether initialize_parallel installed the CPU compatibility layer (destroy_parallel removes it).
_compat_installed_here = False


class ParallelInitError(ValueError):
    """The parallel layout does not fit the world size or the config is inconsistent."""


@dataclass(frozen=True)
class ParallelState:
    """This rank's place in the Megatron layout (all ranks/sizes are ints, 0-based ranks).

    ``dp`` is the data-parallel size derived as ``world / (tp * pp * cp)``. ``vpp_size`` is
    None without interleaving. ``device`` is ``cuda:<local_rank>`` or ``cpu``.
    """

    rank: int
    world_size: int
    local_rank: int
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    cp_rank: int
    cp_size: int
    dp_rank: int
    dp_size: int
    vpp_size: Optional[int]
    backend: str
    device: str

    @property
    def is_first_pp_stage(self) -> bool:
        """Whether this rank holds the embedding (first pipeline stage)."""
        return self.pp_rank == 0

    @property
    def is_last_pp_stage(self) -> bool:
        """Whether this rank holds the output layer and produces logits."""
        return self.pp_rank == self.pp_size - 1


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``nccl`` when CUDA is available, else ``gloo``; explicit values pass through.

    Raises:
        ParallelInitError: unknown backend, or ``nccl`` requested without CUDA.
    """
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ParallelInitError(f"parallel.backend={backend!r} is not one of 'auto', 'nccl', 'gloo'")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ParallelInitError("parallel.backend='nccl' needs CUDA, which is not available; use 'gloo' or 'auto'")
    return backend


def _validate_layout(parallel_cfg, world_size: int) -> None:
    tp, pp, cp = (parallel_cfg.tensor_model_parallel_size, parallel_cfg.pipeline_model_parallel_size,
                  parallel_cfg.context_parallel_size)
    for key, value in (("tensor_model_parallel_size", tp), ("pipeline_model_parallel_size", pp),
                       ("context_parallel_size", cp)):
        if value < 1:
            raise ParallelInitError(f"parallel.{key}={value} must be >= 1")
    if world_size % (tp * pp * cp) != 0:
        raise ParallelInitError(
            f"world size {world_size} is not divisible by TP*PP*CP = {tp}*{pp}*{cp} = {tp * pp * cp}; "
            "change parallel.tensor_model_parallel_size / pipeline_model_parallel_size / context_parallel_size "
            "or the number of ranks")
    vpp = parallel_cfg.virtual_pipeline_model_parallel_size
    if vpp is not None and (vpp < 1 or pp < 2):
        raise ParallelInitError(
            f"parallel.virtual_pipeline_model_parallel_size={vpp} needs pipeline_model_parallel_size >= 2 "
            f"(got {pp}) and a value >= 1")


def initialize_parallel(parallel_cfg, timeout_minutes: int = 30) -> ParallelState:
    """Initialise torch.distributed and Megatron's TP/PP/VPP/CP/DP groups for this process.

    Reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` from the
    environment (as set by ``torchrun``, SLURM launchers or
    :func:`megatron_brrm.parallel.launch.run_on_ranks`); without ``RANK`` it starts a
    single-process group on 127.0.0.1 (tools and notebooks). An existing process group is
    reused. Seeds Python's, torch's and Megatron's named RNG streams with
    ``seed + 100 * pp_rank`` (Megatron-LM ``_set_random_seed``), so pipeline stages draw
    different initial weights while TP ranks share the data-parallel stream.

    Args:
        parallel_cfg: a :class:`megatron_brrm.config.ParallelConfig`.
        timeout_minutes: collective timeout of the process groups.

    Returns:
        This rank's :class:`ParallelState`.

    Raises:
        ParallelInitError: the layout does not divide the world size, an unknown backend,
            or NCCL without CUDA.
    """
    from megatron.core import parallel_state as mpu  # lazy: keeps train --help fast

    global _compat_installed_here
    backend = resolve_backend(parallel_cfg.backend)
    if torch.distributed.is_initialized():
        rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        init_method = None
    elif "RANK" in os.environ:
        rank, world_size, init_method = int(os.environ["RANK"]), int(os.environ.get("WORLD_SIZE", "1")), "env://"
    else:  # a world of one, without touching this process's environment
        rank, world_size, init_method = 0, 1, f"tcp://127.0.0.1:{find_free_port()}"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    _validate_layout(parallel_cfg, world_size)

    if not torch.cuda.is_available() and not cpu_compat.is_installed():
        _compat_installed_here = cpu_compat.install()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    if init_method is not None:
        torch.distributed.init_process_group(
            backend=backend, init_method=init_method, rank=rank, world_size=world_size,
            timeout=timedelta(minutes=timeout_minutes))
    if mpu.model_parallel_is_initialized():
        mpu.destroy_model_parallel()
    mpu.initialize_model_parallel(
        tensor_model_parallel_size=parallel_cfg.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel_cfg.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel_cfg.virtual_pipeline_model_parallel_size,
        context_parallel_size=parallel_cfg.context_parallel_size,
        distributed_timeout_minutes=timeout_minutes,
    )
    state = ParallelState(
        rank=rank, world_size=world_size, local_rank=local_rank,
        tp_rank=mpu.get_tensor_model_parallel_rank(), tp_size=mpu.get_tensor_model_parallel_world_size(),
        pp_rank=mpu.get_pipeline_model_parallel_rank(), pp_size=mpu.get_pipeline_model_parallel_world_size(),
        cp_rank=mpu.get_context_parallel_rank(), cp_size=mpu.get_context_parallel_world_size(),
        dp_rank=mpu.get_data_parallel_rank(), dp_size=mpu.get_data_parallel_world_size(),
        vpp_size=parallel_cfg.virtual_pipeline_model_parallel_size, backend=backend,
        device=f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu",
    )
    seed_rngs(parallel_cfg.seed + 100 * state.pp_rank, state.tp_rank)
    return state


def seed_rngs(seed: int, tp_rank: int) -> None:
    """Seed Python, torch and Megatron's model-parallel / data-parallel / expert RNG streams.

    On CUDA this is Megatron's ``model_parallel_cuda_manual_seed``; on CPU the same seed
    layout via :func:`megatron_brrm.parallel.cpu_compat.seed_model_parallel_rng`.
    """
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed  # lazy: keeps train --help fast

        model_parallel_cuda_manual_seed(seed)
    else:
        seed_model_parallel_rng(seed, tp_rank)


def destroy_parallel() -> None:
    """Destroy Megatron's parallel groups and the torch.distributed process group (idempotent).

    Call at the end of every process that called :func:`initialize_parallel`; a gloo
    process exiting with its group alive sporadically aborts (exit code 134, docs/design.md §7).
    Also removes the CPU compatibility layer if :func:`initialize_parallel` installed it, so
    a long-lived process (a test session, a notebook running a converter) is left as it was;
    Megatron models built meanwhile need it again (call :func:`initialize_parallel`).
    """
    global _compat_installed_here
    from megatron.core import parallel_state as mpu  # lazy: keeps train --help fast

    if mpu.model_parallel_is_initialized():
        mpu.destroy_model_parallel()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    if _compat_installed_here:
        cpu_compat.uninstall()
        _compat_installed_here = False
