"""Driver side of refit: move the policy ranks' weights into the generation engines.

Two transports, picked by ``rollout.refit_transport`` (``auto`` | ``shm`` | ``ray``):

* **shm** (same node; ``auto`` picks it when the driver, every policy rank and every engine
  are on one Ray node). The CPU / same-node analog of NeMo-RL's CUDA-IPC refit
  (:mod:`megatron_brrm.workers.refit_shm`), with no gather, no collective and no Ray
  object-store copy: a plan (computed once per policy group and bucket size, then cached)
  lists the HF tensors; every policy rank writes its own TP shards into their HF-layout
  place in shared memory (:meth:`PolicyActor.write_refit_bucket`). Engines that can share
  their weights (the HF engine on CPU) have them moved into shared memory once, and the
  ranks write straight into them (*direct*: one copy per refit, no extra memory). Other
  engines load double-buffered *buckets*: the ranks write bucket ``k + 1`` into one of two
  shared-memory files while the engines copy bucket ``k`` out of the other; a buffer is
  written again only after every engine has finished reading it (extra memory: two
  buckets, at most ``min(bucket_bytes, shm_max_bucket_bytes)`` each unless one tensor is
  larger).
* **ray** (any placement, the multi-node fallback). Every policy rank runs
  :meth:`PolicyActor.export_hf_buckets` at the same time (its TP gathers and PP broadcasts
  are collectives); rank 0's stream of buckets is consumed through a Ray streaming
  generator with back-pressure (at most ``max_in_flight`` buckets produced ahead of the
  engines), and each bucket is loaded into every engine before the next is fetched. Extra
  memory: a few buckets, never a second copy of the model.

Both return the same :class:`~megatron_brrm.rollout.refit.RefitStats` (``phases`` breaks
the ``shm`` time down).
"""
from __future__ import annotations

import logging
import os
import time
import weakref
from typing import Dict, List, Sequence

import ray

from megatron_brrm.rollout.refit import RefitStats, push_buckets
from megatron_brrm.workers.worker_group import WorkerError, describe_ray_error

log = logging.getLogger(__name__)

TRANSPORTS = ("auto", "shm", "ray")


class RefitTransportError(RuntimeError):
    """The requested refit transport cannot be used here (e.g. ``shm`` across nodes)."""


def _error(group, rank: int, exc: BaseException, method: str = "export_hf_buckets") -> WorkerError:
    cause, detail = describe_ray_error(exc)
    return WorkerError(group.name, rank, method, cause, group.placements[rank].node_ip, detail)


def _is_remote(engine) -> bool:
    return callable(getattr(engine, "load_refit_bucket_async", None))


def refit_nodes(policy_group, engines: Sequence) -> Dict[str, List[str]]:
    """``{Ray node id: [who is there]}`` for the driver, every policy rank and every engine.

    Local engines (objects without ``load_refit_bucket_async``) run in the driver process.
    """
    where: Dict[str, List[str]] = {}
    driver = ray.get_runtime_context().get_node_id()
    where.setdefault(driver, []).append("driver")
    for rank, p in enumerate(policy_group.placements):
        where.setdefault(p.node_id, []).append(f"{policy_group.name} rank {rank} ({p.node_ip})")
    for i, engine in enumerate(engines):
        if _is_remote(engine):
            where.setdefault(engine.node_id(), []).append(f"engine {i} ({getattr(engine, 'node', '?')})")
        else:
            where[driver].append(f"engine {i} (in the driver)")
    return where


def choose_transport(policy_group, engines: Sequence, transport: str = "auto") -> str:
    """``"shm"`` or ``"ray"`` for ``transport`` in :data:`TRANSPORTS`.

    Raises:
        ValueError: an unknown ``transport``.
        RefitTransportError: ``transport == "shm"`` but the processes span several nodes
            (each node and who is on it is named).
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"rollout.refit_transport={transport!r}: expected one of {', '.join(TRANSPORTS)}")
    if transport == "ray":
        return "ray"
    where = refit_nodes(policy_group, engines)
    if len(where) == 1:
        return "shm"
    if transport == "auto":
        return "ray"
    nodes = "; ".join(f"node {nid[:12]}: {', '.join(who)}" for nid, who in where.items())
    raise RefitTransportError(f"rollout.refit_transport=shm needs the driver, every policy rank and every engine on "
                              f"one node, but they are on {len(where)} nodes ({nodes}); set rollout.refit_transport=auto "
                              "or ray to stream through the Ray object store instead")


SHM_MAX_BUCKET_BYTES = 64 << 20


def refit_from_policy(policy_group, engines: Sequence, bucket_bytes: int, max_in_flight: int = 2,
                      timeout_s: float = 3600.0, transport: str = "auto",
                      shm_max_bucket_bytes: int = SHM_MAX_BUCKET_BYTES, shm_direct: bool = True) -> RefitStats:
    """Load the current policy weights into ``engines`` (each with ``update_weights``).

    Args:
        policy_group: the :class:`~megatron_brrm.workers.worker_group.WorkerGroup` of
            :class:`~megatron_brrm.workers.policy_actor.PolicyActor` ranks.
        engines: generation engines (local objects, or :class:`~megatron_brrm.workers.actors.RemoteEngine`
            handles of engine actors).
        bucket_bytes: refit bucket size in bytes (``rollout.refit_bucket_size_mb``).
        max_in_flight: ``ray`` transport: buckets rank 0 may produce ahead of the engines.
        timeout_s: seconds to wait for any one call.
        transport: ``auto`` | ``shm`` | ``ray`` (``rollout.refit_transport``; see the module docstring).
        shm_max_bucket_bytes: ``shm`` transport: buckets are at most ``min(bucket_bytes,
            shm_max_bucket_bytes)`` (default 64 MiB; a larger tensor still travels alone).
            Smaller buckets overlap the ranks' writes with the engines' reads better, and each
            process faults in fewer shared pages per refit (``tools/bench/refit.py`` measures it).
        shm_direct: ``shm`` transport: engines whose weights are contiguous CPU tensors of a
            torch ``model`` (the HF engine on CPU) get them moved into shared memory once, and
            the ranks then write their shards straight into them (one copy per refit); other
            engines, or all with ``shm_direct=False``, load double-buffered buckets.

    Raises:
        WorkerError: a policy rank or engine actor failed or died (rank and cause named).
        RefitTransportError / ValueError: see :func:`choose_transport`.
        OSError: the shared-memory buffers cannot be created (``shm``).
    """
    if choose_transport(policy_group, engines, transport) == "shm":
        return _refit_shm(policy_group, engines, min(bucket_bytes, shm_max_bucket_bytes), timeout_s, shm_direct)
    return _refit_ray(policy_group, engines, bucket_bytes, max_in_flight, timeout_s)


# -------------------------------------------------------------------------------- ray
def _refit_ray(policy_group, engines: Sequence, bucket_bytes: int, max_in_flight: int, timeout_s: float) -> RefitStats:
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


# -------------------------------------------------------------------------------- shm
_PLANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def refit_plan(policy_group, bucket_bytes: int, timeout_s: float = 600.0):
    """The :class:`~megatron_brrm.workers.refit_shm.RefitPlan` of ``policy_group``'s model (cached
    per group and bucket size: the model's tensors never change shape or dtype)."""
    from megatron_brrm.workers.refit_shm import build_refit_plan

    cache = _PLANS.setdefault(policy_group, {})
    if bucket_bytes not in cache:
        infos = policy_group.run_all("refit_shm_info", timeout_s=timeout_s)
        dtypes = {n: d for info in infos for n, d in info["dtypes"].items()}
        cache[bucket_bytes] = build_refit_plan(infos[0]["mapping"], dtypes, bucket_bytes)
    return cache[bucket_bytes]


def _load(engines: Sequence, path: str, nbytes: int, entries, phases: Dict[str, float], threads: int) -> None:
    """Load one bucket into every engine: remote ones concurrently, local ones in this process
    with ``threads`` torch threads."""
    from megatron_brrm.workers.refit_shm import load_bucket

    refs = [(e, e.load_refit_bucket_async(path, nbytes, entries, threads)) for e in engines if _is_remote(e)]
    local = [e for e in engines if not _is_remote(e)]
    if local:
        t0 = time.perf_counter()
        load_bucket(local, path, nbytes, entries, threads)
        _add(phases, "local_load", time.perf_counter() - t0)  # includes mapping the buffer
    t0 = time.perf_counter()
    for engine, ref in refs:
        engine.get(ref, "load_refit_bucket")
    _add(phases, "remote_load_wait", time.perf_counter() - t0)


def _add(phases: Dict[str, float], key: str, seconds: float) -> None:
    phases[key] = phases.get(key, 0.0) + seconds


def _add_rank_times(phases: Dict[str, float], results: Sequence[Dict[str, float]]) -> None:
    """Add the slowest rank's mapping and writing seconds of one ``write_refit_bucket`` call."""
    _add(phases, "rank_map", max(r["map_s"] for r in results))
    _add(phases, "rank_write", max(r["write_s"] for r in results))


def _release(policy_group, engines: Sequence, keep: Sequence[str], timeout_s: float) -> None:
    """Unmap the buffers everywhere (the ranks keep the engines' weight files in ``keep``); failures
    are logged (the refit's own error, if any, wins)."""
    from megatron_brrm.rollout.shm import unmap_buffers

    unmap_buffers()
    try:
        policy_group.run_all("release_refit_buffers", list(keep), timeout_s=timeout_s)
        for engine in engines:
            if _is_remote(engine):
                engine.release_refit_buffers()
    except Exception as exc:  # noqa: BLE001 - cleanup must not hide the refit's result
        log.warning("refit: could not unmap the shared-memory buffers everywhere: %s", str(exc)[:500])


# policy group -> paths of engine weight files its ranks keep mapped (see SharedModuleWeights)
_RANK_MAPPED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _share(engine, names: List[str], mapped: set):
    """The engine's shared-weights info (None: it cannot share, it loads buckets)."""
    from megatron_brrm.workers.refit_shm import share_engine_weights

    def get(fresh: bool):
        if _is_remote(engine):
            return engine.share_refit_weights(names, fresh)
        return share_engine_weights(engine, names, fresh=fresh)

    info = get(False)
    if info is not None and not info["linked"] and info["path"] not in mapped:
        info = get(True)  # the file's name is gone and these ranks never mapped it: share anew
    return info


def _seal(engine, plan) -> None:
    from megatron_brrm.workers.refit_shm import seal_engine_weights

    if _is_remote(engine):
        engine.seal_refit_weights(plan.num_tensors, plan.num_bytes)
    else:
        seal_engine_weights(engine, plan.num_tensors, plan.num_bytes)


def _write_direct(policy_group, targets, timeout_s: float, phases: Dict[str, float]) -> None:
    """Every rank writes its shards straight into each engine's shared weights (one copy)."""
    from megatron_brrm.rollout.shm import BucketEntry

    futures = []
    for _, info in targets:
        entries = [BucketEntry(n, off, tuple(shape), dtype) for n, (off, shape, dtype) in info["layout"].items()]
        futures.append(policy_group.run_all_async("write_refit_bucket", info["path"], info["nbytes"], entries,
                                                  persistent=True))
    t0 = time.perf_counter()
    for future in futures:
        _add_rank_times(phases, future.result(timeout_s))
    _add(phases, "write_wait", time.perf_counter() - t0)


def _write_buckets(policy_group, engines: Sequence, plan, timeout_s: float, phases: Dict[str, float]) -> None:
    """Double-buffered bucket pipeline: ranks write bucket k+1 while the engines load bucket k."""
    from megatron_brrm.rollout.shm import SharedBuffers

    t0 = time.perf_counter()
    buffers = SharedBuffers(plan.buffer_bytes)
    _add(phases, "alloc", time.perf_counter() - t0)
    # The ranks write while the engines read: give the readers the cores the writers leave free
    # (an OpenMP copy with more threads than free cores slows down several-fold on a busy node).
    threads = max(1, (os.cpu_count() or 1) - policy_group.world_size)
    try:
        def write(k: int):
            return policy_group.run_all_async("write_refit_bucket", buffers.paths[k % 2], plan.buffer_bytes,
                                              list(plan.buckets[k]))

        pending = write(0)
        for k, entries in enumerate(plan.buckets):
            t0 = time.perf_counter()
            done = pending.result(timeout_s)  # bucket k is complete in buffer k % 2
            _add(phases, "write_wait", time.perf_counter() - t0)
            _add_rank_times(phases, done)
            if k + 1 < len(plan.buckets):  # buffer (k+1) % 2 was last read for bucket k-1, already loaded
                pending = write(k + 1)
            _load(engines, buffers.paths[k % 2], plan.buffer_bytes, entries, phases, threads)
    finally:
        buffers.close()


def _refit_shm(policy_group, engines: Sequence, bucket_bytes: int, timeout_s: float, direct: bool) -> RefitStats:
    start = time.perf_counter()
    phases: Dict[str, float] = {}
    plan = refit_plan(policy_group, bucket_bytes, timeout_s)
    phases["plan"] = time.perf_counter() - start
    mapped = _RANK_MAPPED.setdefault(policy_group, set())
    names = [e.hf_name for bucket in plan.buckets for e in bucket]
    targets, rest = [], []
    t0 = time.perf_counter()
    for engine in engines:
        info = _share(engine, names, mapped) if direct else None
        if info is None:
            rest.append(engine)
        else:
            targets.append((engine, info))
    phases["share"] = time.perf_counter() - t0
    keep = [info["path"] for _, info in targets]
    try:
        if targets:
            _write_direct(policy_group, targets, timeout_s, phases)
            mapped.clear()
            mapped.update(keep)
            for engine, _ in targets:
                _seal(engine, plan)
        if rest:
            _write_buckets(policy_group, rest, plan, timeout_s, phases)
    finally:
        t0 = time.perf_counter()
        _release(policy_group, rest, keep, timeout_s)
        phases["release"] = time.perf_counter() - t0
    return RefitStats(num_tensors=plan.num_tensors, num_bytes=plan.num_bytes,
                      num_buckets=len(plan.buckets) if rest else 1, seconds=time.perf_counter() - start,
                      phases=phases)
