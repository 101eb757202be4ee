"""What a driver runs on: the Ray cluster, the :class:`Policy`, the :class:`GenerationFleet` and ``refit``.

:func:`start_runtime` builds them from a run config in the one right order (cluster, engines,
policy ranks), tearing down what it started when a later part fails, and returns a
:class:`Runtime`. The GRPO driver holds only this object, so a test can hand it a runtime of
fakes (a scripted fleet, a policy that records calls) and exercise the driver's loop without
Ray or Megatron.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from megatron_brrm.workers.cluster import Cluster
from megatron_brrm.workers.fleet import GenerationFleet, engine_factory_for
from megatron_brrm.workers.policy_group import Policy
from megatron_brrm.workers.refit import refit


@dataclass
class Runtime:
    """The driver's handles.

    Attributes:
        policy: the policy facade (``get_logprobs``, ``train``, ``save_checkpoint`` /
            ``load_checkpoint``, ``offload`` / ``onload``).
        fleet: the generation engines as one ``GenerationEngine`` (plus ``pop_metrics``).
        refit: loads the policy's current weights into every engine; returns ``RefitStats``.
        shutdown: stops everything the runtime started.
        nodes, gpus_per_node: the allocation (for the planner's layout check).
    """

    policy: Any
    fleet: Any
    refit: Callable[[], Any]
    shutdown: Callable[[], None] = field(default=lambda: None)
    nodes: int = 1
    gpus_per_node: int = 0


def start_runtime(cfg, engine_factory: Optional[Callable[[], Any]] = None,
                  check_layout: Optional[Callable[[int, int], None]] = None) -> Runtime:
    """Start the cluster (or join ``RAY_ADDRESS``), the engine fleet and the policy ranks for ``cfg``.

    Args:
        cfg: the run's :class:`~megatron_brrm.config.RunConfig` (``model.hf_path`` resolved).
        engine_factory: builds each engine inside its actor (default: ``rollout.engine`` for the model).
        check_layout: called with ``(nodes, gpus_per_node)`` once the cluster exists and before any
            actor starts (the driver's layout check); raising stops the start-up cleanly.

    Raises:
        ClusterError / WorkerError: the placement does not fit, or an actor failed to start.
    """
    cluster = Cluster.from_config(cfg)
    try:
        if check_layout is not None:
            check_layout(cluster.num_nodes, cluster.gpus_per_node)
        fleet = GenerationFleet(cluster, engine_factory or engine_factory_for(cfg.rollout, cfg.model.hf_path),
                                num_engines=cfg.rollout.num_engines)
        policy = Policy(cluster, cfg)
    except BaseException:
        cluster.shutdown()
        raise

    def shutdown() -> None:
        try:
            fleet.shutdown()
        finally:
            cluster.shutdown()

    return Runtime(policy=policy, fleet=fleet,
                   refit=functools.partial(refit, policy, fleet, cfg.rollout.refit_bucket_size_mb * 2**20,
                                           transport=cfg.rollout.refit_transport),
                   shutdown=shutdown, nodes=cluster.num_nodes, gpus_per_node=cluster.gpus_per_node)
