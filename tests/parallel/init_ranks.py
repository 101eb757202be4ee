"""Rank function for the parallel-init test (spawned, so the pytest process stays untouched)."""
from __future__ import annotations

import os
from typing import Dict


def world_of_one(rank: int, world_size: int) -> Dict:
    """Without RANK/WORLD_SIZE in the environment, initialise twice (as a converter run from
    a notebook would), recording the state, the environment and the compat layer each time."""
    from megatron_brrm.config import ParallelConfig
    from megatron_brrm.parallel import cpu_compat, destroy_parallel, initialize_parallel

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(key, None)
    out = {"runs": []}
    for _ in range(2):
        state = initialize_parallel(ParallelConfig(backend="auto"))
        run = {"state": (state.rank, state.world_size, state.tp_size, state.pp_size, state.dp_size, state.backend,
                         state.device), "compat": cpu_compat.is_installed(), "env_rank": "RANK" in os.environ}
        destroy_parallel()
        run["compat_after"] = cpu_compat.is_installed()
        out["runs"].append(run)
    return out
