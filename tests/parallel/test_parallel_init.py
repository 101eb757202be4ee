"""Parallel-init argument checks (in-process: nothing is initialised or patched here).

The initialisation itself runs in every spawned test of this folder (``initialize_parallel``
with TP/PP/VPP/SP layouts over gloo, then ``destroy_parallel``).
"""
from __future__ import annotations

import pytest
import torch

from megatron_brrm.config import ParallelConfig
from megatron_brrm.parallel.init import ParallelInitError, _validate_layout, destroy_parallel, resolve_backend


def test_backend_resolution_on_this_cpu_machine():
    assert not torch.cuda.is_available()
    assert resolve_backend("auto") == "gloo" and resolve_backend("gloo") == "gloo"
    with pytest.raises(ParallelInitError, match="'nccl' needs CUDA"):
        resolve_backend("nccl")
    with pytest.raises(ParallelInitError, match="parallel.backend='mpi'"):
        resolve_backend("mpi")


def test_layout_must_divide_world_size():
    _validate_layout(ParallelConfig(tensor_model_parallel_size=2, pipeline_model_parallel_size=2), 8)
    with pytest.raises(ParallelInitError, match=r"world size 6 is not divisible by TP\*PP\*CP = 2\*2\*1"):
        _validate_layout(ParallelConfig(tensor_model_parallel_size=2, pipeline_model_parallel_size=2), 6)
    with pytest.raises(ParallelInitError, match="virtual_pipeline_model_parallel_size=2 needs pipeline"):
        _validate_layout(ParallelConfig(virtual_pipeline_model_parallel_size=2), 1)
    with pytest.raises(ParallelInitError, match="tensor_model_parallel_size=0"):
        _validate_layout(ParallelConfig(tensor_model_parallel_size=0), 1)


def test_destroy_without_init_is_a_noop():
    destroy_parallel()
    assert not torch.distributed.is_initialized()


@pytest.mark.multiprocess
def test_world_of_one_without_launcher_env():
    from megatron_brrm.parallel.launch import run_on_ranks

    from init_ranks import world_of_one

    out = run_on_ranks(world_of_one, 1, timeout_s=120)[0]
    assert len(out["runs"]) == 2  # a second init after destroy works (fresh port, no leftovers)
    for run in out["runs"]:
        assert run["state"] == (0, 1, 1, 1, 1, "gloo", "cpu")
        assert run["compat"] is True and run["compat_after"] is False
        assert run["env_rank"] is False  # the process environment is not modified
