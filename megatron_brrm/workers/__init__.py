"""Ray orchestration: the cluster (placement of policy workers and generation engines),
SPMD worker groups, and generic actor wrappers.

``policy*.py`` (the Megatron policy worker) builds on these; it is not imported here so that
``import megatron_brrm.workers`` stays light (ray + torch only).
"""
from megatron_brrm.workers.actors import EngineActor, RemoteEngine, create_engine_actors, make_remote
from megatron_brrm.workers.cluster import ActorPlacement, Cluster, ClusterError, EnginePlacement, init_ray
from megatron_brrm.workers.worker_group import GroupFuture, WorkerError, WorkerGroup

__all__ = [
    "ActorPlacement", "Cluster", "ClusterError", "EngineActor", "EnginePlacement", "GroupFuture", "RemoteEngine",
    "WorkerError", "WorkerGroup", "create_engine_actors", "init_ray", "make_remote",
]
