"""SPMD worker groups: one Ray actor per rank, forming one torch.distributed world.

Modelled on NeMo-RL's ``RayWorkerGroup`` and verl's ``RayWorkerGroup``: the single
controller (the driver) calls a method on every rank at once, and the ranks talk to each
other through torch.distributed (NCCL on GPU, gloo on CPU). Each actor starts with the
``env://`` rendezvous variables in its environment, so its ``__init__`` can call
``torch.distributed.init_process_group(backend)`` directly:

``MASTER_ADDR`` (the rank-0 actor's node IP), ``MASTER_PORT`` (a port found free on that
node), ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` / ``LOCAL_WORLD_SIZE`` (position and count on
the node), ``NODE_RANK``, ``OMP_NUM_THREADS`` (default 1) and ``BRRM_WORKER_GROUP`` (the name).

Every call takes a timeout (``timeout_s``, default the group's ``call_timeout_s``) and fails
fast: the first rank that raises, dies or overruns turns into :class:`WorkerError` naming the
group, rank, node, method and cause. When one rank of an SPMD world fails, the others may
stay blocked in a collective; call :meth:`WorkerGroup.shutdown`.

On GPU each actor sees only its own device (Ray sets ``CUDA_VISIBLE_DEVICES``), so it uses
``cuda:0``; ``LOCAL_RANK`` keeps its torchrun meaning (position on the node) for bookkeeping.
"""
from __future__ import annotations

import logging
import socket
import time
from typing import Any, Dict, List, Optional, Sequence

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from megatron_brrm.workers.cluster import ActorPlacement
from megatron_brrm.workers.errors import WorkerError, describe_ray_error
from megatron_brrm.workers.remote import as_actor_class, impl_class, merge_runtime_env

# This module imports neither torch nor the rollout package: Ray helper tasks defined here
# (``_free_port``) run in worker processes that then import only ray.

logger = logging.getLogger(__name__)


def _local_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@ray.remote(num_cpus=0)
def _free_port() -> int:
    """A TCP port that was free on the node running this task. Zero CPUs: the bundles' CPUs
    are held by the actors (docs/design.md §7: a 1-CPU helper task would wait for ever)."""
    return _local_free_port()


def free_port_on_node(node_id: str, timeout_s: float) -> int:
    """A free TCP port on Ray node ``node_id``: found here when the driver runs on that node,
    else by a zero-CPU task pinned to it (saves starting a worker process in the common case)."""
    if ray.get_runtime_context().get_node_id() == node_id:
        return _local_free_port()
    pinned = NodeAffinitySchedulingStrategy(node_id, soft=False)
    return ray.get(_free_port.options(scheduling_strategy=pinned).remote(), timeout=timeout_s)


def _wait_dead(actors: Sequence[Any], timeout_s: float) -> None:
    """Wait until Ray reports every actor dead (a call on a dead actor fails at once)."""
    refs = []
    for actor in actors:
        try:
            refs.append(actor.__ray_ready__.remote())
        except Exception:
            pass
    if refs:
        ray.wait(refs, num_returns=len(refs), timeout=timeout_s)


class GroupFuture:
    """Pending results of one call on a worker group (returned by the ``*_async`` methods).

    ``result(timeout_s)`` waits and returns the per-rank results in rank order (or the single
    result of a ``run_rank_async`` call), raising :class:`WorkerError` like the blocking calls.
    """

    def __init__(self, group: "WorkerGroup", method: str, ranks: List[int], refs: List[Any], single: bool = False):
        self.group, self.method, self.ranks, self.refs, self.single = group, method, ranks, refs, single

    def done(self) -> bool:
        """True when every rank has finished (successfully or not)."""
        ready, _ = ray.wait(self.refs, num_returns=len(self.refs), timeout=0)
        return len(ready) == len(self.refs)

    def result(self, timeout_s: Optional[float] = None):
        """Wait up to ``timeout_s`` seconds (None: the group's default); results in rank order."""
        timeout_s = self.group.call_timeout_s if timeout_s is None else timeout_s
        out = self.group._gather(self.refs, self.ranks, self.method, timeout_s)
        return out[0] if self.single else out


class WorkerGroup:
    """One Ray actor per rank of an SPMD world, placed on a :class:`Cluster`'s bundles.

    Args:
        cluster: the :class:`megatron_brrm.workers.cluster.Cluster`.
        actor_cls: a plain class (made a Ray actor here) or a class from
            :func:`megatron_brrm.workers.remote.make_remote`.
        world_size: number of ranks; rank r goes to ``placements[r]``.
        args, kwargs: constructor arguments, the same for every rank.
        name: group name used in errors and logs.
        env: extra environment variables for every rank (override the defaults above).
        placements: where the ranks go (default: ``cluster.policy_placements``).
        init_timeout_s: seconds to wait for every actor's ``__init__``.
        call_timeout_s: default per-call timeout in seconds (None: wait indefinitely).

    Raises:
        ValueError: ``world_size`` larger than the available placements.
        WorkerError: an actor failed or timed out in ``__init__`` (all actors are killed).
    """

    def __init__(self, cluster, actor_cls, world_size: int, args: Sequence[Any] = (), kwargs: Optional[dict] = None,
                 name: str = "policy", env: Optional[Dict[str, str]] = None, *,
                 placements: Optional[Sequence[ActorPlacement]] = None, init_timeout_s: float = 300.0,
                 call_timeout_s: Optional[float] = None):
        placements = list(cluster.policy_placements if placements is None else placements)
        if not 1 <= world_size <= len(placements):
            raise ValueError(f"worker group '{name}': world_size = {world_size} but the cluster has "
                             f"{len(placements)} bundle(s) for it ({cluster.describe()})")
        self.cluster, self.name, self.world_size = cluster, name, int(world_size)
        self.call_timeout_s = call_timeout_s
        self.placements = placements[:world_size]
        self._impl = impl_class(actor_cls)
        remote_cls = as_actor_class(actor_cls)

        self.master_addr = self.placements[0].node_ip
        try:
            self.master_port = free_port_on_node(self.placements[0].node_id, timeout_s=min(init_timeout_s, 120.0))
        except ray.exceptions.GetTimeoutError:
            raise WorkerError(name, 0, "__init__", f"could not find a free port on node {self.placements[0].node_ip} "
                              "within the timeout", self.placements[0].node_ip) from None

        node_ranks: Dict[str, List[int]] = {}
        for r, p in enumerate(self.placements):
            node_ranks.setdefault(p.node_id, []).append(r)
        node_index = {nid: i for i, nid in enumerate(node_ranks)}
        cluster.register_group(self)
        self._actors: Optional[List[Any]] = []
        try:
            for r, p in enumerate(self.placements):
                rank_env = {
                    "MASTER_ADDR": str(self.master_addr), "MASTER_PORT": str(self.master_port), "RANK": str(r),
                    "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(node_ranks[p.node_id].index(r)),
                    "LOCAL_WORLD_SIZE": str(len(node_ranks[p.node_id])), "NODE_RANK": str(node_index[p.node_id]),
                    "OMP_NUM_THREADS": "1", "BRRM_WORKER_GROUP": name,
                }
                rank_env.update({k: str(v) for k, v in (env or {}).items()})
                actor = remote_cls.options(**p.actor_options(), runtime_env=merge_runtime_env(remote_cls, rank_env),
                                           max_restarts=0, max_task_retries=0).remote(*args, **(kwargs or {}))
                self._actors.append(actor)
            self._gather([a.__ray_ready__.remote() for a in self._actors], list(range(world_size)), "__init__",
                         init_timeout_s)
        except BaseException:
            self._kill_all()
            raise
        logger.info("worker group '%s': %d rank(s) of %s, MASTER_ADDR=%s MASTER_PORT=%s", name, world_size,
                    self._impl.__name__, self.master_addr, self.master_port)

    # ----------------------------------------------------------------------------- internals
    @property
    def actors(self) -> List[Any]:
        """The Ray actor handles, in rank order."""
        self._check_open()
        return list(self._actors)

    def _check_open(self) -> None:
        if self._actors is None:
            raise RuntimeError(f"worker group '{self.name}' has been shut down")

    def _node(self, rank: int) -> str:
        return self.placements[rank].node_ip

    def _submit(self, method: str, ranks: List[int], per_rank_args: List[tuple], per_rank_kwargs: List[dict]):
        self._check_open()
        if not callable(getattr(self._impl, method, None)):
            raise AttributeError(f"worker group '{self.name}': {self._impl.__name__} has no method '{method}'")
        return [getattr(self._actors[r], method).remote(*a, **k)
                for r, a, k in zip(ranks, per_rank_args, per_rank_kwargs)]

    def _gather(self, refs: List[Any], ranks: List[int], method: str, timeout_s: Optional[float]) -> List[Any]:
        """Results in rank order; the first failure or the timeout raises WorkerError."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pending = dict(zip(refs, ranks))
        results: Dict[int, Any] = {}
        while pending:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=remaining)
            if not ready:
                waiting = sorted(pending.values())
                raise WorkerError(self.name, waiting[0], method,
                                  f"timed out after {timeout_s:g} s (ranks still running: {waiting}; the call keeps "
                                  "running on the workers, shut the group down if it is stuck)", self._node(waiting[0]))
            for ref in ready:
                rank = pending.pop(ref)
                try:
                    results[rank] = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    cause, detail = describe_ray_error(exc)
                    raise WorkerError(self.name, rank, method, cause, self._node(rank), detail) from exc
        return [results[r] for r in ranks]

    # ----------------------------------------------------------------------------- calls
    def run_all_async(self, method: str, *args, **kwargs) -> GroupFuture:
        """Call ``method(*args, **kwargs)`` on every rank; returns a :class:`GroupFuture`."""
        ranks = list(range(self.world_size))
        return GroupFuture(self, method, ranks, self._submit(method, ranks, [args] * len(ranks), [kwargs] * len(ranks)))

    def run_all(self, method: str, *args, timeout_s: Optional[float] = None, **kwargs) -> List[Any]:
        """Call ``method(*args, **kwargs)`` on every rank and return the results in rank order.

        ``timeout_s`` (keyword, reserved) overrides the group's ``call_timeout_s``.

        Raises:
            WorkerError: a rank raised, died, or the call exceeded the timeout.
            AttributeError: the actor class has no such method.
        """
        return self.run_all_async(method, *args, **kwargs).result(timeout_s)

    def run_all_sharded_async(self, method: str, per_rank_args: Sequence[tuple],
                              per_rank_kwargs: Optional[Sequence[dict]] = None, **common_kwargs) -> GroupFuture:
        """Rank i calls ``method(*per_rank_args[i], **per_rank_kwargs[i], **common_kwargs)``; a future."""
        if len(per_rank_args) != self.world_size:
            raise ValueError(f"worker group '{self.name}': {method}: per_rank_args has {len(per_rank_args)} entries, "
                             f"world size is {self.world_size}")
        bad = [i for i, a in enumerate(per_rank_args) if not isinstance(a, tuple)]
        if bad:
            raise TypeError(f"worker group '{self.name}': {method}: per_rank_args[{bad[0]}] is "
                            f"{type(per_rank_args[bad[0]]).__name__}; each entry must be a tuple of positional "
                            "arguments, e.g. [(shard0,), (shard1,)]")
        per_rank_kwargs = list(per_rank_kwargs) if per_rank_kwargs is not None else [{}] * self.world_size
        if len(per_rank_kwargs) != self.world_size:
            raise ValueError(f"worker group '{self.name}': {method}: per_rank_kwargs has {len(per_rank_kwargs)} "
                             f"entries, world size is {self.world_size}")
        kw = [{**common_kwargs, **k} for k in per_rank_kwargs]
        ranks = list(range(self.world_size))
        return GroupFuture(self, method, ranks, self._submit(method, ranks, list(per_rank_args), kw))

    def run_all_sharded(self, method: str, per_rank_args: Sequence[tuple],
                        per_rank_kwargs: Optional[Sequence[dict]] = None, *, timeout_s: Optional[float] = None,
                        **common_kwargs) -> List[Any]:
        """Rank i gets its own arguments ``per_rank_args[i]`` (a tuple); results in rank order.

        Raises:
            WorkerError, AttributeError: as :meth:`run_all`; ValueError/TypeError for a wrong
            number or type of per-rank entries.
        """
        return self.run_all_sharded_async(method, per_rank_args, per_rank_kwargs, **common_kwargs).result(timeout_s)

    def run_rank_async(self, rank: int, method: str, *args, **kwargs) -> GroupFuture:
        """Call ``method`` on one rank only; a future whose ``result()`` is that single value."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"worker group '{self.name}': rank {rank} outside 0..{self.world_size - 1}")
        return GroupFuture(self, method, [rank], self._submit(method, [rank], [args], [kwargs]), single=True)

    def run_rank(self, rank: int, method: str, *args, timeout_s: Optional[float] = None, **kwargs) -> Any:
        """Call ``method`` on one rank only and return its result.

        Only for methods that use no collective (the other ranks are not called).
        """
        return self.run_rank_async(rank, method, *args, **kwargs).result(timeout_s)

    # ----------------------------------------------------------------------------- teardown
    def _kill_all(self, wait_s: float = 10.0) -> None:
        """``ray.kill`` every actor and wait (up to ``wait_s``) until Ray reports them dead."""
        actors = self._actors or []
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already dead
                pass
        _wait_dead(actors, wait_s)
        self._actors = None
        self.cluster.unregister_group(self)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop every rank: the actor's own ``shutdown()`` method if it has one (e.g. to destroy its
        process group), then a graceful exit, then ``ray.kill`` for ranks that do not exit within
        ``timeout_s`` seconds. Waits until Ray reports the actors dead. Idempotent.
        """
        if self._actors is None:
            return
        if not ray.is_initialized():  # Ray already stopped: its actors are gone with it
            self._actors = None
            self.cluster.unregister_group(self)
            return
        actors = self._actors
        if callable(getattr(self._impl, "shutdown", None)):
            try:
                self.run_all("shutdown", timeout_s=timeout_s)
            except (WorkerError, ray.exceptions.RayError) as exc:
                logger.warning("worker group '%s': shutdown() failed on a rank: %s", self.name, exc.args[0][:500])
        terminate = [a.__ray_terminate__.remote() for a in actors]
        ray.wait(terminate, num_returns=len(terminate), timeout=timeout_s)  # graceful exit first
        self._kill_all()

    def __enter__(self) -> "WorkerGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
