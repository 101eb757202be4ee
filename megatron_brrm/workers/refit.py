"""``refit(policy, fleet)``: after every update, every engine on every node holds the trainer's weights.

Transports (``rollout.refit_transport``):

* ``shm`` (everything on one node): every policy rank writes its own TP shards straight into
  their HF-layout place in shared memory (no gather, no collective, no object-store copy). The
  CPU / same-node analog of NeMo-RL's CUDA-IPC refit.
* ``collective`` (engines on several nodes, each also hosting policy ranks: the colocated
  layouts): the same per-node shared-memory path, where each node's missing shards (another
  pipeline stage's, another TP rank's) arrive through one broadcast per shard from the rank that
  owns it to one receiver per node (gloo on CPU, NCCL on GPU; the route is planned by
  :mod:`megatron_brrm.workers.refit_route`). A tensor leaves its owning stage once; only the
  ranks that send or receive it touch it. On one node this *is* the ``shm`` path.
* ``ray`` (engines on nodes without policy ranks, e.g. split GPU placements): global rank 0
  streams buckets of full HF tensors (TP-gathered; other stages' tensors sent to it point to
  point) through a Ray streaming generator with back-pressure; only rank 0 copies to host.

``auto`` picks ``shm`` on one node, else ``collective`` when every engine node has a policy
rank, else ``ray``; nodes are told apart by Ray node id, never by host name.

Into each node, the shared-memory paths go one of two ways. **Direct**: engines that declare
``shares_weights`` (the HF engine on CPU) have their weights moved into a shared-memory file
once; the ranks then write straight into them (one copy per refit). **Buckets**: for the
others (vLLM), two files per node, created by a policy rank on that node, carry the model in
buckets of at most ``min(bucket_bytes, shm_max_bucket_bytes)`` (fused modules never split):
the ranks write bucket ``k + 1`` into one while the node's engines load bucket ``k`` from the
other (``GenerationEngine.load_shm_bucket``: the HF engine copies from views, a vLLM engine
hands the file to its workers). No path holds a second copy of the model.
"""
from __future__ import annotations

import logging
import os
import time
import weakref
from typing import Dict, List, Optional, Sequence, Tuple

import ray

from megatron_brrm.config import REFIT_TRANSPORTS as TRANSPORTS
from megatron_brrm.rollout.refit import RefitStats, push_buckets
from megatron_brrm.rollout.shm import BucketEntry, unmap_buffers
from megatron_brrm.workers.actors import RemoteEngine
from megatron_brrm.workers.fleet import GenerationFleet
from megatron_brrm.workers.refit_route import RefitRoute, RouteError, plan_route
from megatron_brrm.workers.refit_shm import (RefitPlan, build_refit_plan, load_bucket, seal_engine_weights,
                                             share_engine_weights)
from megatron_brrm.workers.errors import WorkerError, describe_ray_error

log = logging.getLogger(__name__)

SHM_MAX_BUCKET_BYTES = 64 << 20


class RefitTransportError(RuntimeError):
    """The requested refit transport cannot serve this placement (e.g. ``shm`` across nodes)."""


def _engines(targets) -> List:
    return list(targets.engines) if isinstance(targets, GenerationFleet) else list(targets)


def _node_of(engine, driver_node: str) -> str:
    return engine.node_id() if isinstance(engine, RemoteEngine) else driver_node


def refit_nodes(policy, engines: Sequence) -> Dict[str, List[str]]:
    """``{Ray node id: [who is there]}`` for the driver, every policy rank and every engine
    (engines that are not :class:`RemoteEngine` handles run in the driver process)."""
    driver = ray.get_runtime_context().get_node_id()
    where: Dict[str, List[str]] = {driver: ["driver"]}
    for r in policy.layout:
        where.setdefault(r.node_id, []).append(f"{policy.group.name} rank {r.rank} ({r.node_ip})")
    for i, engine in enumerate(engines):
        if isinstance(engine, RemoteEngine):
            where.setdefault(engine.node_id(), []).append(f"engine {i} ({engine.node})")
        else:
            where[driver].append(f"engine {i} (in the driver)")
    return where


def choose_transport(policy, targets, transport: str = "auto") -> str:
    """``"shm"``, ``"collective"`` or ``"ray"`` for ``transport`` in :data:`TRANSPORTS` (module docstring).

    Raises:
        ValueError: an unknown ``transport``.
        RefitTransportError: ``shm`` with processes on several nodes, or ``collective`` with an
            engine node that hosts no policy rank (the nodes are named).
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"rollout.refit_transport={transport!r}: expected one of {', '.join(TRANSPORTS)}")
    if transport == "ray":
        return "ray"
    engines = _engines(targets)
    where = refit_nodes(policy, engines)
    if len(where) == 1:
        return "shm"
    nodes = "; ".join(f"node {nid[:12]}: {', '.join(who)}" for nid, who in where.items())
    if transport == "shm":
        raise RefitTransportError(f"rollout.refit_transport=shm needs the driver, every policy rank and every engine "
                                  f"on one node, but they are on {len(where)} nodes ({nodes}); set "
                                  "rollout.refit_transport=auto or collective")
    driver = ray.get_runtime_context().get_node_id()
    try:
        plan_route(policy.layout, [_node_of(e, driver) for e in engines])
    except RouteError as exc:
        if transport == "collective":
            raise RefitTransportError(f"rollout.refit_transport=collective: {exc} ({nodes})") from None
        return "ray"
    return "collective"


def refit(policy, targets, bucket_bytes: int, transport: str = "auto", timeout_s: float = 3600.0,
          shm_max_bucket_bytes: int = SHM_MAX_BUCKET_BYTES, direct: bool = True, max_in_flight: int = 2) -> RefitStats:
    """Load the policy's current weights into every engine of ``targets``.

    Args:
        policy: the :class:`~megatron_brrm.workers.policy_group.Policy`.
        targets: a :class:`~megatron_brrm.workers.fleet.GenerationFleet`, or a list of engines
            (:class:`RemoteEngine` handles, or weight receivers living in the driver process).
        bucket_bytes: refit bucket size in bytes (``rollout.refit_bucket_size_mb``).
        transport: ``auto`` | ``shm`` | ``collective`` | ``ray`` (module docstring).
        timeout_s: seconds to wait for any one call.
        shm_max_bucket_bytes: shared-memory buckets are at most ``min(bucket_bytes, this)``
            (smaller buckets overlap the ranks' writes with the engines' loads better).
        direct: let engines that share their weights be written directly (else buckets).
        max_in_flight: ``ray``: buckets rank 0 may produce ahead of the engines.

    Returns:
        :class:`~megatron_brrm.rollout.refit.RefitStats`; ``phases`` breaks the time down and
        ``phases["transport_<name>"]`` records the path taken.

    Raises:
        WorkerError: a policy rank or engine failed or died (rank / engine, node and cause named).
        RefitTransportError / ValueError: see :func:`choose_transport`.
        OSError: shared-memory files cannot be created.
    """
    engines = _engines(targets)
    chosen = choose_transport(policy, engines, transport)
    if chosen == "ray":
        stats = _refit_ray(policy, engines, bucket_bytes, max_in_flight, timeout_s)
    else:
        stats = _refit_routed(policy, engines, min(bucket_bytes, shm_max_bucket_bytes), timeout_s, direct)
    stats.phases[f"transport_{chosen}"] = 1.0
    return stats


# -------------------------------------------------------------------------------- ray
def _refit_ray(policy, engines: Sequence, bucket_bytes: int, max_in_flight: int, timeout_s: float) -> RefitStats:
    group = policy.group
    streams = [actor.export_hf_buckets.options(num_returns="streaming",
                                               _generator_backpressure_num_objects=max_in_flight).remote(bucket_bytes)
               for actor in group.actors]

    def buckets():
        for ref in streams[0]:
            try:
                yield ray.get(ref, timeout=timeout_s)
            except Exception as exc:  # noqa: BLE001 - re-raised with the rank named
                raise _rank_error(group, 0, exc) from exc

    stats = push_buckets(buckets(), engines)
    for rank, stream in enumerate(streams[1:], start=1):
        for ref in stream:
            try:
                ray.get(ref, timeout=timeout_s)
            except Exception as exc:  # noqa: BLE001
                raise _rank_error(group, rank, exc) from exc
    return stats


def _rank_error(group, rank: int, exc: BaseException, method: str = "export_hf_buckets") -> WorkerError:
    cause, detail = describe_ray_error(exc)
    return WorkerError(group.name, rank, method, cause, group.placements[rank].node_ip, detail)


# -------------------------------------------------------------------------------- shared memory, per node
_PLANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_ROUTES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_RANK_MAPPED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # engine weight files the ranks map


def refit_plan(policy, bucket_bytes: int, timeout_s: float = 600.0) -> Tuple[RefitPlan, Dict[str, str]]:
    """The :class:`~megatron_brrm.workers.refit_shm.RefitPlan` of the policy's model for ``bucket_bytes``
    and ``{Megatron name: dtype}``, cached per policy and bucket size (tensors never change shape or dtype)."""
    cache = _PLANS.setdefault(policy, {})
    if bucket_bytes not in cache:
        infos = policy.group.run_all("refit_shm_info", timeout_s=timeout_s)
        dtypes = {n: d for info in infos for n, d in info["dtypes"].items()}
        cache[bucket_bytes] = (build_refit_plan(infos[0]["mapping"], dtypes, bucket_bytes), dtypes)
    return cache[bucket_bytes]


def _route(policy, nodes: Sequence[str], dtypes: Dict[str, str], timeout_s: float) -> RefitRoute:
    """The route for engines on ``nodes``, installed on the ranks once per distinct node set."""
    key = tuple(dict.fromkeys(nodes))
    cached = _ROUTES.get(policy)
    if cached is None or cached[0] != key:
        route = plan_route(policy.layout, key)
        policy.group.run_all("setup_refit_route", route, dtypes, timeout_s=timeout_s)
        _ROUTES[policy] = cached = (key, route)
    return cached[1]


def _add(phases: Dict[str, float], key: str, seconds: float) -> None:
    phases[key] = phases.get(key, 0.0) + seconds


def _add_rank_times(phases: Dict[str, float], results: Sequence[Dict[str, float]]) -> None:
    """Add the slowest rank's mapping, broadcast and writing seconds of one write call, and the
    ranges relayed whole (``rank_relay``: the most any rank sent or received; 0 = per piece)."""
    for key in ("map_s", "comm_s", "write_s"):
        _add(phases, f"rank_{key[:-2]}", max(r.get(key, 0.0) for r in results))
    _add(phases, "rank_relay", max(r.get("relay", 0) for r in results))


def _share(engine, names: List[str], mapped: set) -> Optional[dict]:
    """The engine's shared-weights info (None: it loads buckets)."""
    def get(fresh: bool):
        if isinstance(engine, RemoteEngine):
            return engine.share_refit_weights(names, fresh)
        return share_engine_weights(engine, names, fresh=fresh)

    info = get(False)
    if info is not None and not info["linked"] and info["path"] not in mapped:
        info = get(True)  # the file's name is gone and these ranks never mapped it: share anew
    return info


def _seal(engine, plan: RefitPlan) -> None:
    if isinstance(engine, RemoteEngine):
        engine.seal_refit_weights(plan.num_tensors, plan.num_bytes)
    else:
        seal_engine_weights(engine, plan.num_tensors, plan.num_bytes)


def _load(node_engines: Dict[str, List], paths: Dict[str, str], nbytes: int, entries, driver_node: str,
          phases: Dict[str, float], threads: int) -> None:
    """Every engine loads one bucket from its node's file: remote ones concurrently, the driver's here."""
    refs = [(e, e.load_refit_bucket_async(paths[n], nbytes, entries, threads))
            for n, engines in node_engines.items() for e in engines if isinstance(e, RemoteEngine)]
    local = [e for e in node_engines.get(driver_node, []) if not isinstance(e, RemoteEngine)]
    if local:
        t0 = time.perf_counter()
        load_bucket(local, paths[driver_node], nbytes, entries, threads)
        _add(phases, "local_load", time.perf_counter() - t0)
    t0 = time.perf_counter()
    for engine, ref in refs:
        engine.get(ref, "load_refit_bucket")
    _add(phases, "remote_load_wait", time.perf_counter() - t0)


def _write_buckets(policy, node_engines: Dict[str, List], plan: RefitPlan, driver_node: str, timeout_s: float,
                   phases: Dict[str, float]) -> None:
    """Double-buffered pipeline per node: ranks write bucket k+1 while the engines load bucket k."""
    group = policy.group
    owners = {n: min(r.rank for r in policy.layout if r.node_id == n) for n in node_engines}
    t0 = time.perf_counter()
    files = {n: group.run_rank(rank, "create_refit_buffers", plan.buffer_bytes, 2, timeout_s=timeout_s)
             for n, rank in owners.items()}
    _add(phases, "alloc", time.perf_counter() - t0)
    # The ranks write while the engines read: give the readers the cores the writers leave free.
    threads = max(1, (os.cpu_count() or 1) - policy.world_size)
    try:
        def write(k: int):
            targets = {n: [(files[n][k % 2], plan.buffer_bytes, list(plan.buckets[k]))] for n in node_engines}
            return group.run_all_async("write_refit_targets", targets, [e.hf_name for e in plan.buckets[k]])

        pending = write(0)
        for k, entries in enumerate(plan.buckets):
            t0 = time.perf_counter()
            done = pending.result(timeout_s)  # bucket k is complete in buffer k % 2 of every node
            _add(phases, "write_wait", time.perf_counter() - t0)
            _add_rank_times(phases, done)
            if k + 1 < len(plan.buckets):  # buffer (k+1) % 2 was last read for bucket k-1, already loaded
                pending = write(k + 1)
            _load(node_engines, {n: files[n][k % 2] for n in node_engines}, plan.buffer_bytes, entries, driver_node,
                  phases, threads)
    finally:
        for rank in owners.values():
            try:
                group.run_rank(rank, "close_refit_buffers", timeout_s=timeout_s)
            except Exception as exc:  # noqa: BLE001 - cleanup must not hide the refit's own error
                log.warning("refit: could not remove the shared-memory buffers of rank %d: %s", rank, str(exc)[:300])


def _release(policy, engines: Sequence, keep: Sequence[str], timeout_s: float) -> None:
    """Unmap the buffers everywhere (the ranks keep the engines' weight files in ``keep``); failures
    are logged (the refit's own error, if any, wins)."""
    unmap_buffers()
    try:
        policy.group.run_all("release_refit_buffers", list(keep), timeout_s=timeout_s)
        for engine in engines:
            if isinstance(engine, RemoteEngine):
                engine.release_refit_buffers()
    except Exception as exc:  # noqa: BLE001
        log.warning("refit: could not unmap the shared-memory buffers everywhere: %s", str(exc)[:500])


def _refit_routed(policy, engines: Sequence, bucket_bytes: int, timeout_s: float, direct: bool) -> RefitStats:
    start = time.perf_counter()
    phases: Dict[str, float] = {}
    plan, dtypes = refit_plan(policy, bucket_bytes, timeout_s)
    phases["plan"] = time.perf_counter() - start
    driver_node = ray.get_runtime_context().get_node_id()
    t0 = time.perf_counter()
    node_of = [_node_of(e, driver_node) for e in engines]
    _route(policy, node_of, dtypes, timeout_s)
    phases["route"] = time.perf_counter() - t0
    mapped = _RANK_MAPPED.setdefault(policy, set())
    names = [e.hf_name for bucket in plan.buckets for e in bucket]
    direct_targets: Dict[str, List] = {}
    sealed, bucket_engines = [], {}
    t0 = time.perf_counter()
    for engine, node in zip(engines, node_of):
        info = _share(engine, names, mapped) if direct else None
        if info is None:
            bucket_engines.setdefault(node, []).append(engine)
        else:
            entries = [BucketEntry(n, off, tuple(shape), dtype) for n, (off, shape, dtype) in info["layout"].items()]
            direct_targets.setdefault(node, []).append((info["path"], info["nbytes"], entries))
            sealed.append(engine)
    phases["share"] = time.perf_counter() - t0
    keep = [path for targets in direct_targets.values() for path, _, _ in targets]
    try:
        if direct_targets:
            t0 = time.perf_counter()
            done = policy.group.run_all("write_refit_targets", direct_targets, names, persistent=True,
                                        timeout_s=timeout_s)
            _add(phases, "write_wait", time.perf_counter() - t0)
            _add_rank_times(phases, done)
            mapped.clear()
            mapped.update(keep)
            for engine in sealed:
                _seal(engine, plan)
        if bucket_engines:
            _write_buckets(policy, bucket_engines, plan, driver_node, timeout_s, phases)
    finally:
        t0 = time.perf_counter()
        _release(policy, [e for es in bucket_engines.values() for e in es], keep, timeout_s)
        phases["release"] = time.perf_counter() - t0
    return RefitStats(num_tensors=plan.num_tensors, num_bytes=plan.num_bytes,
                      num_buckets=len(plan.buckets) if bucket_engines else 1, seconds=time.perf_counter() - start,
                      phases=phases)
