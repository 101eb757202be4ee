"""Process groups (NCCL or gloo), Megatron parallel state, and the CPU compatibility layer."""
from megatron_brrm.parallel.init import (
    ParallelInitError,
    ParallelState,
    destroy_parallel,
    initialize_parallel,
)
from megatron_brrm.parallel.launch import RankError, run_on_ranks

__all__ = ["ParallelInitError", "ParallelState", "destroy_parallel", "initialize_parallel", "RankError", "run_on_ranks"]
