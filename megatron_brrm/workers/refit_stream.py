"""Driver side of refit: stream the policy ranks' weights into the generation engines.

Every policy rank runs :meth:`PolicyActor.export_hf_buckets` at the same time (its TP
gathers and PP broadcasts are collectives); rank 0's stream of buckets is consumed through a
Ray streaming generator with back-pressure (at most ``max_in_flight`` buckets produced ahead
of the engines), and each bucket is loaded into every engine before the next is fetched. So
the extra memory of a refit is bounded by a few buckets, never a second copy of the model.
"""
from __future__ import annotations

from typing import Sequence

import ray

from megatron_brrm.rollout.refit import RefitStats, push_buckets
from megatron_brrm.workers.worker_group import WorkerError, describe_ray_error


def _error(group, rank: int, exc: BaseException) -> WorkerError:
    cause, detail = describe_ray_error(exc)
    return WorkerError(group.name, rank, "export_hf_buckets", cause, group.placements[rank].node_ip, detail)


def refit_from_policy(policy_group, engines: Sequence, bucket_bytes: int, max_in_flight: int = 2,
                      timeout_s: float = 3600.0) -> RefitStats:
    """Load the current policy weights into ``engines`` (each with ``update_weights``).

    Args:
        policy_group: the :class:`~megatron_brrm.workers.worker_group.WorkerGroup` of
            :class:`~megatron_brrm.workers.policy_actor.PolicyActor` ranks.
        engines: generation engines (local objects or driver-side handles of engine actors).
        bucket_bytes: refit bucket size in bytes (``rollout.refit_bucket_size_mb``).
        max_in_flight: buckets rank 0 may produce ahead of the engines.

    Raises:
        WorkerError: a policy rank failed or died during the export (rank and cause named).
    """
    streams = [actor.export_hf_buckets.options(num_returns="streaming",
                                               _generator_backpressure_num_objects=max_in_flight).remote(bucket_bytes)
               for actor in policy_group.actors]

    def buckets():
        for ref in streams[0]:
            try:
                yield ray.get(ref, timeout=timeout_s)
            except Exception as exc:  # noqa: BLE001 - re-raised with the rank named
                raise _error(policy_group, 0, exc) from exc

    stats = push_buckets(buckets(), engines)
    for rank, stream in enumerate(streams[1:], start=1):
        for ref in stream:
            try:
                ray.get(ref, timeout=timeout_s)
            except Exception as exc:  # noqa: BLE001
                raise _error(policy_group, rank, exc) from exc
    return stats
