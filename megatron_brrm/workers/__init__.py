"""Ray orchestration: the cluster (placement of policy workers and generation engines),
SPMD worker groups, and generic actor wrappers.

Names are imported lazily (PEP 562): ``import megatron_brrm.workers.cluster`` or
``.worker_group`` loads only Ray, not torch, so driver start-up and Ray helper tasks stay
light. ``policy*.py`` (the Megatron policy worker) builds on these and is not exported here.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "ActorPlacement": "cluster", "Cluster": "cluster", "ClusterError": "cluster", "EnginePlacement": "cluster",
    "init_ray": "cluster",
    "GroupFuture": "worker_group", "WorkerError": "errors", "WorkerGroup": "worker_group",
    "EngineActor": "actors", "RemoteEngine": "actors", "create_engine_actors": "actors", "make_remote": "remote",
    "Policy": "policy_group", "GenerationFleet": "fleet", "refit": "refit",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"megatron_brrm.workers.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'megatron_brrm.workers' has no attribute '{name}'")


def __dir__():
    return sorted(list(globals()) + __all__)
