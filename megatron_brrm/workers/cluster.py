"""The Ray cluster of a run: start or join Ray, and place policy workers and generation engines.

Modelled on NeMo-RL's ``RayVirtualCluster`` (single controller, one placement group whose
bundles are the devices of the run). A :class:`Cluster`

1. starts or joins Ray (:func:`init_ray`): an explicit ``address`` or the ``RAY_ADDRESS``
   environment variable (set by ``slurm/ray_bootstrap.sh``) joins that cluster; otherwise a
   private local instance is started with ``num_cpus`` (default ``os.cpu_count()``) and no
   dashboard (docs/design.md §7: ``ray.init(num_cpus=2, include_dashboard=False)`` on CPU);
2. sizes the run from the config: the policy world size is ``TP * PP * CP * DP``
   (``parallel.*``), on GPU by default every GPU of ``num_nodes * gpus_per_node``, on CPU by
   default ``TP * PP * CP`` ranks (DP = 1); generation engines have
   ``rollout.tensor_parallel_size`` devices each;
3. reserves one bundle per policy rank, ``{"GPU": 1, "CPU": cpus_per_bundle}`` on GPU or
   ``{"CPU": cpus_per_bundle}`` on CPU, in a ``PACK`` placement group; generation engines
   either share those bundles (``rollout.colocated = true``: each actor then takes half of a
   bundle's CPU and GPU, as NeMo-RL does with ``max_colocated_worker_groups = 2``) or get a
   second placement group of their own (``rollout.colocated = false``);
4. checks the request against the free resources first and raises :class:`ClusterError`
   saying what is needed and what is available when they do not fit.

Ranks are assigned to bundles grouped by node (ranks on one node are consecutive), so the
TP group of a colocated engine, ``world_ranks[i*tp:(i+1)*tp]``, lives on one node.
Each actor on GPU sees only its own device (Ray sets ``CUDA_VISIBLE_DEVICES``), so actor
code uses ``cuda:0`` / ``torch.cuda.current_device()``, not ``LOCAL_RANK``, to pick it.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import ray
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

logger = logging.getLogger(__name__)


class ClusterError(RuntimeError):
    """The Ray cluster cannot be reached, or cannot hold the requested placement.

    The message states what was asked (from which config keys) and what Ray has, and how
    to fix it.
    """


@dataclass(frozen=True)
class ActorPlacement:
    """Where one actor goes: a bundle of a placement group and the share of it the actor takes.

    Attributes:
        placement_group: the Ray ``PlacementGroup``.
        bundle_index: index of the bundle inside ``placement_group``.
        node_id: hex id of the Ray node holding the bundle.
        node_ip: that node's IP address (used as ``MASTER_ADDR`` when this is rank 0).
        num_cpus: CPUs the actor reserves from the bundle (may be fractional).
        num_gpus: GPUs the actor reserves from the bundle (0, a fraction, or 1).
    """

    placement_group: Any
    bundle_index: int
    node_id: str
    node_ip: str
    num_cpus: float
    num_gpus: float

    def actor_options(self) -> Dict[str, Any]:
        """Keyword arguments for ``ActorClass.options(...)`` that put an actor here."""
        return {
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self.placement_group,
                placement_group_bundle_index=self.bundle_index,
                placement_group_capture_child_tasks=False,
            ),
        }


@dataclass(frozen=True)
class EnginePlacement:
    """Where one generation engine goes.

    Attributes:
        index: engine number, 0-based.
        bundles: one :class:`ActorPlacement` per engine TP rank (``rollout.tensor_parallel_size``
            of them, all on one node).
        actor: where the engine's host actor runs. With TP = 1 it holds the engine's device
            share; with TP > 1 it holds no GPU and the engine's own TP workers (e.g. vLLM's
            Ray executor) must claim the GPUs of ``bundles`` in ``placement_group``.
    """

    index: int
    bundles: Tuple[ActorPlacement, ...]
    actor: ActorPlacement

    @property
    def placement_group(self):
        """The placement group holding this engine's bundles."""
        return self.bundles[0].placement_group

    @property
    def bundle_indices(self) -> List[int]:
        """Bundle indices of the engine's TP ranks, in TP-rank order."""
        return [b.bundle_index for b in self.bundles]


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None, num_gpus: Optional[int] = None,
             object_store_memory: Optional[int] = None, **init_kwargs) -> bool:
    """Join or start Ray.

    Resolution order: an already initialised Ray in this process is reused; an explicit
    ``address`` (``"auto"``, ``host:port`` or ``ray://...``) or else ``RAY_ADDRESS`` joins that
    cluster; otherwise (or with ``address="local"``, which ignores ``RAY_ADDRESS``) a new
    private local instance is started with ``num_cpus`` CPUs
    (default ``os.cpu_count()``), ``num_gpus`` GPUs (default: Ray's autodetection) and no
    dashboard. A new instance is always private (``address="local"``), so a run never joins
    another user's cluster on the same machine by accident.

    Args:
        address: cluster to join, or None.
        num_cpus, num_gpus, object_store_memory (bytes): only for a new local instance.
        **init_kwargs: passed to ``ray.init``.

    Returns:
        True when this call started Ray (the caller then owns its shutdown), else False.

    Raises:
        ClusterError: the cluster at ``address``/``RAY_ADDRESS`` cannot be reached.
    """
    if ray.is_initialized():
        return False
    target = address or os.environ.get("RAY_ADDRESS") or None
    if target and target != "local":
        source = "address argument" if address else "RAY_ADDRESS"
        try:
            ray.init(address=target, **init_kwargs)
        except Exception as exc:  # ConnectionError, ValueError, ...
            raise ClusterError(
                f"cannot connect to the Ray cluster at '{target}' (from {source}): {type(exc).__name__}: {exc}. "
                "Fix: start the cluster first (slurm/ray_bootstrap.sh, or `ray start --head`), or unset "
                "RAY_ADDRESS to run on a private local Ray instance.") from None
        return False
    kwargs = dict(include_dashboard=False)
    kwargs.update(init_kwargs)
    ray.init(address="local", num_cpus=num_cpus if num_cpus is not None else os.cpu_count(), num_gpus=num_gpus,
             object_store_memory=object_store_memory, **kwargs)
    return True


def _alive_nodes() -> List[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def _fmt(res: Dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(res.items())) or "nothing"


class Cluster:
    """Ray resources of one run: policy-worker bundles and generation-engine placements.

    Args:
        parallel_cfg: :class:`megatron_brrm.config.ParallelConfig` (TP, PP, CP sizes).
        rollout_cfg: :class:`megatron_brrm.config.RolloutConfig` (``colocated``,
            ``tensor_parallel_size`` of each engine).
        num_nodes: GPU nodes to use (GPU only; default: every alive node with a GPU).
        gpus_per_node: GPUs per node to use (GPU only; default: the most any node has).
        policy_world_size: policy ranks (a multiple of TP*PP*CP). Default: all GPUs
            (colocated) or the GPUs left after the engines (split); on CPU, TP*PP*CP.
        num_generation_engines: engines to place. Default: colocated, world / rollout TP;
            split on CPU, 1; split on GPU, (GPUs - policy ranks) / rollout TP.
        address: Ray cluster to join (else ``RAY_ADDRESS``, else a new local instance).
        num_cpus: CPUs of a new local instance (default ``os.cpu_count()``).
        use_gpu: place on GPUs (default: when the Ray cluster has any).
        cpus_per_bundle: CPUs per bundle (default 1).
        object_store_memory: bytes of object store of a new local instance (default: Ray's).
        ready_timeout_s: seconds to wait for the placement groups to be scheduled.
        ray_init_kwargs: extra ``ray.init`` keyword arguments.

    Raises:
        ClusterError: sizes that do not divide (naming the config keys), or not enough
            resources (needed vs available), or placement not ready in time.
    """

    def __init__(self, parallel_cfg, rollout_cfg, num_nodes: Optional[int] = None, gpus_per_node: Optional[int] = None,
                 *, policy_world_size: Optional[int] = None, num_generation_engines: Optional[int] = None,
                 address: Optional[str] = None, num_cpus: Optional[int] = None, use_gpu: Optional[bool] = None,
                 cpus_per_bundle: float = 1, object_store_memory: Optional[int] = None,
                 ready_timeout_s: float = 60.0, ray_init_kwargs: Optional[dict] = None):
        self.tp = int(parallel_cfg.tensor_model_parallel_size)
        self.pp = int(parallel_cfg.pipeline_model_parallel_size)
        self.cp = int(getattr(parallel_cfg, "context_parallel_size", 1) or 1)
        self.rollout_tp = int(rollout_cfg.tensor_parallel_size)
        self.colocated = bool(rollout_cfg.colocated)
        self.refit_bucket_bytes = int(getattr(rollout_cfg, "refit_bucket_size_mb", 512)) << 20
        for key, val in (("parallel.tensor_model_parallel_size", self.tp),
                         ("parallel.pipeline_model_parallel_size", self.pp),
                         ("parallel.context_parallel_size", self.cp),
                         ("rollout.tensor_parallel_size", self.rollout_tp)):
            if val < 1:
                raise ClusterError(f"config key {key} = {val}: must be >= 1")
        if cpus_per_bundle <= 0:
            raise ClusterError(f"cpus_per_bundle = {cpus_per_bundle}: must be > 0")
        self.cpus_per_bundle = float(cpus_per_bundle)
        self._placement_groups: List[Any] = []
        self._groups: List[Any] = []  # worker groups registered by WorkerGroup, shut down with us
        self._closed = False
        self._owns_ray = init_ray(address=address, num_cpus=num_cpus, object_store_memory=object_store_memory,
                                  **(ray_init_kwargs or {}))
        try:
            self._setup(num_nodes, gpus_per_node, policy_world_size, num_generation_engines, use_gpu, ready_timeout_s)
        except BaseException:
            self.shutdown()
            raise

    @classmethod
    def from_config(cls, cfg, **kwargs) -> "Cluster":
        """A cluster for a :class:`megatron_brrm.config.RunConfig` (its ``parallel`` and ``rollout``;
        ``rollout.num_engines`` engines unless ``num_generation_engines`` is given)."""
        kwargs.setdefault("num_generation_engines", cfg.rollout.num_engines)
        return cls(cfg.parallel, cfg.rollout, **kwargs)

    # ----------------------------------------------------------------------------- sizing
    @property
    def model_parallel_size(self) -> int:
        """TP * PP * CP: ranks holding one model replica."""
        return self.tp * self.pp * self.cp

    @property
    def dp_size(self) -> int:
        """Data-parallel size: policy world size / (TP * PP * CP)."""
        return self.policy_world_size // self.model_parallel_size

    def _sizes(self, num_nodes, gpus_per_node, world, engines) -> Tuple[int, int]:
        mp = self.model_parallel_size
        if self.use_gpu:
            gpu_nodes = [n for n in self._nodes if n["Resources"].get("GPU", 0) >= 1]
            if gpus_per_node is None:
                gpus_per_node = int(max((n["Resources"]["GPU"] for n in gpu_nodes), default=0))
            if num_nodes is None:
                num_nodes = len(gpu_nodes)
            total = int(num_nodes) * int(gpus_per_node)
            if self.rollout_tp > gpus_per_node:
                raise ClusterError(f"rollout.tensor_parallel_size = {self.rollout_tp} exceeds gpus_per_node = "
                                   f"{gpus_per_node}: an engine's TP group must fit on one node")
            if self.colocated:
                world = world if world is not None else total
            elif world is None:
                if engines is None:
                    raise ClusterError("rollout.colocated = false on GPU needs policy_world_size or "
                                       "num_generation_engines to split the GPUs between training and generation")
                world = total - engines * self.rollout_tp
            elif engines is None:
                engines = (total - world) // self.rollout_tp
                if engines < 1:
                    raise ClusterError(f"rollout.colocated = false: no GPUs left for generation ({num_nodes} node(s) "
                                       f"x {gpus_per_node} GPU(s), policy_world_size = {world}, "
                                       f"rollout.tensor_parallel_size = {self.rollout_tp})")
            self.num_nodes, self.gpus_per_node = int(num_nodes), int(gpus_per_node)
        else:
            if gpus_per_node:
                raise ClusterError(f"gpus_per_node = {gpus_per_node} was given but the Ray cluster has no GPUs "
                                   f"({_fmt(ray.cluster_resources())}); leave it unset for a CPU run")
            world = world if world is not None else mp
            self.num_nodes, self.gpus_per_node = len(self._nodes), 0
            if not self.colocated and engines is None:
                engines = 1
        if world < 1:
            raise ClusterError(f"policy world size is {world}: no device is left for training "
                               f"({self.num_nodes} node(s) x {self.gpus_per_node} GPU(s), "
                               f"generation takes {engines} engine(s) x TP {self.rollout_tp})")
        if world % mp:
            raise ClusterError(
                f"policy world size {world} is not a multiple of TP*PP*CP = {mp} (parallel.tensor_model_parallel_size"
                f"={self.tp}, parallel.pipeline_model_parallel_size={self.pp}, parallel.context_parallel_size="
                f"{self.cp}); change the parallel sizes or the number of devices")
        if self.colocated:
            if world % self.rollout_tp:
                raise ClusterError(f"rollout.colocated = true: policy world size {world} is not a multiple of "
                                   f"rollout.tensor_parallel_size = {self.rollout_tp}")
            max_engines = world // self.rollout_tp
            engines = max_engines if engines is None else engines
            if not 0 <= engines <= max_engines:
                raise ClusterError(f"num_generation_engines = {engines}: colocated engines share the {world} policy "
                                   f"bundles, so at most {max_engines} fit (rollout.tensor_parallel_size = "
                                   f"{self.rollout_tp})")
        if engines < 0:
            raise ClusterError(f"num_generation_engines = {engines}: must be >= 0")
        return int(world), int(engines)

    def _bundle(self) -> Dict[str, float]:
        return {"GPU": 1.0, "CPU": self.cpus_per_bundle} if self.use_gpu else {"CPU": self.cpus_per_bundle}

    def _check_resources(self, n_policy: int, n_gen: int) -> None:
        n = n_policy + n_gen
        need = {k: v * n for k, v in self._bundle().items()}
        avail = ray.available_resources()
        total = ray.cluster_resources()
        short = {k: v for k, v in need.items() if avail.get(k, 0.0) + 1e-9 < v}
        if short:
            unit = "GPU" if self.use_gpu else "CPU rank"
            gen = (f"{self.num_generation_engines} generation engine(s) x TP {self.rollout_tp} share the policy bundles"
                   if self.colocated else
                   f"{self.num_generation_engines} generation engine(s) x TP {self.rollout_tp} = {n_gen} bundle(s) "
                   "of their own (rollout.colocated = false)")
            raise ClusterError(
                f"the Ray cluster lacks the resources for this run: needed {_fmt(need)} "
                f"(policy: {n_policy} {unit}(s) = TP {self.tp} x PP {self.pp} x CP {self.cp} x DP "
                f"{n_policy // self.model_parallel_size}, one bundle {self._bundle()} each; {gen}), "
                f"available {_fmt({k: avail.get(k, 0.0) for k in need})} (cluster total "
                f"{_fmt({k: total.get(k, 0.0) for k in need})}). Fix: "
                + (f"num_nodes = {self.num_nodes} x gpus_per_node = {self.gpus_per_node} must exist in the Ray "
                   "cluster (add nodes), or " if self.use_gpu else "start Ray with more CPUs (num_cpus), or ")
                + "lower the parallel sizes / policy_world_size / num_generation_engines"
                + ("" if self.colocated else ", or set rollout.colocated = true"))

    def _make_group(self, n: int, what: str, timeout_s: float):
        pg = placement_group([self._bundle() for _ in range(n)], strategy="PACK", name="")
        self._placement_groups.append(pg)
        try:
            ray.get(pg.ready(), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise ClusterError(
                f"the {what} placement group ({n} bundle(s) of {self._bundle()}) was not scheduled within "
                f"{timeout_s:g} s; available: {_fmt(ray.available_resources())}. The resources may be held by other "
                "jobs or be fragmented across nodes.") from None
        table = placement_group_table(pg)
        return pg, {int(k): v for k, v in table["bundles_to_node_id"].items()}

    def _placements(self, pg, bundle_nodes: Dict[int, str], share: float) -> List[ActorPlacement]:
        node_order: Dict[str, int] = {}
        for idx in sorted(bundle_nodes):
            node_order.setdefault(bundle_nodes[idx], len(node_order))
        order = sorted(bundle_nodes, key=lambda i: (node_order[bundle_nodes[i]], i))
        return [ActorPlacement(pg, i, bundle_nodes[i], self._node_ip[bundle_nodes[i]],
                               num_cpus=self.cpus_per_bundle * share, num_gpus=share if self.use_gpu else 0.0)
                for i in order]

    def _engine_placements(self, bundles: List[ActorPlacement], share: float) -> List[EnginePlacement]:
        out = []
        for e in range(self.num_generation_engines):
            group = tuple(bundles[e * self.rollout_tp:(e + 1) * self.rollout_tp])
            nodes = {b.node_id for b in group}
            if len(nodes) > 1:
                raise ClusterError(f"generation engine {e} would span {len(nodes)} nodes (its TP group of "
                                   f"{self.rollout_tp} must be on one node); use gpus_per_node that is a multiple of "
                                   "rollout.tensor_parallel_size")
            first = group[0]
            gpus = first.num_gpus if self.rollout_tp == 1 else 0.0
            actor = ActorPlacement(first.placement_group, first.bundle_index, first.node_id, first.node_ip,
                                   num_cpus=self.cpus_per_bundle * share, num_gpus=gpus)
            out.append(EnginePlacement(e, group, actor))
        return out

    def _setup(self, num_nodes, gpus_per_node, world, engines, use_gpu, timeout_s) -> None:
        self._nodes = _alive_nodes()
        self._node_ip = {n["NodeID"]: n["NodeManagerAddress"] for n in self._nodes}
        has_gpu = ray.cluster_resources().get("GPU", 0) > 0
        if use_gpu and not has_gpu:
            raise ClusterError(f"use_gpu = True but the Ray cluster has no GPUs ({_fmt(ray.cluster_resources())})")
        self.use_gpu = has_gpu if use_gpu is None else bool(use_gpu)
        self.policy_world_size, self.num_generation_engines = self._sizes(num_nodes, gpus_per_node, world, engines)
        n_gen = 0 if self.colocated else self.num_generation_engines * self.rollout_tp
        self._check_resources(self.policy_world_size, n_gen)
        share = 0.5 if (self.colocated and self.num_generation_engines > 0) else 1.0
        pg, nodes = self._make_group(self.policy_world_size, "policy", timeout_s)
        self.policy_placements: List[ActorPlacement] = self._placements(pg, nodes, share)
        if self.colocated:
            gen_bundles = self.policy_placements
        elif n_gen:
            gpg, gnodes = self._make_group(n_gen, "generation", timeout_s)
            gen_bundles = self._placements(gpg, gnodes, 1.0)
        else:
            gen_bundles = []
        self.engine_placements: List[EnginePlacement] = self._engine_placements(gen_bundles, share)
        logger.info("cluster: %d policy rank(s) (TP %d PP %d CP %d DP %d) on %s, %d engine(s) x TP %d (%s)",
                    self.policy_world_size, self.tp, self.pp, self.cp, self.dp_size,
                    "GPU" if self.use_gpu else "CPU", self.num_generation_engines, self.rollout_tp,
                    "colocated" if self.colocated else "split")

    # ----------------------------------------------------------------------------- lifecycle
    def node_ip(self, node_id: str) -> str:
        """IP address of a Ray node id (``'?'`` if unknown)."""
        return self._node_ip.get(node_id, "?")

    def register_group(self, group) -> None:
        """Record a worker group so that :meth:`shutdown` shuts it down first (called by WorkerGroup)."""
        if self._closed:
            raise ClusterError("this Cluster has been shut down; create a new one")
        self._groups.append(group)

    def unregister_group(self, group) -> None:
        """Forget a worker group (called by its own ``shutdown``)."""
        self._groups = [g for g in self._groups if g is not group]

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Shut down registered worker groups, remove the placement groups, and stop Ray if we started it.

        Idempotent; never raises for already-dead actors or removed groups.
        """
        for group in list(self._groups):
            try:
                group.shutdown(timeout_s=timeout_s)
            except Exception as exc:  # keep tearing down
                logger.warning("cluster shutdown: worker group %s: %s", getattr(group, "name", "?"), exc)
        self._groups = []
        if ray.is_initialized():
            for pg in self._placement_groups:
                try:
                    remove_placement_group(pg)
                except Exception as exc:
                    logger.warning("cluster shutdown: removing placement group: %s", exc)
            # Removal is asynchronous: wait (bounded) until the bundle resources are gone and
            # the reserved CPUs/GPUs are back, so a new Cluster created right after fits.
            self._wait_released(min(timeout_s, 10.0))
        self._placement_groups = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False
        self._closed = True

    def _wait_released(self, timeout_s: float) -> None:
        ids = [pg.id.hex() for pg in self._placement_groups]
        if not ids:
            return
        reserved: Dict[str, float] = {}
        for pg in self._placement_groups:
            for bundle in pg.bundle_specs:
                for k, v in bundle.items():
                    reserved[k] = reserved.get(k, 0.0) + v
        total = ray.cluster_resources()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            avail = ray.available_resources()
            if (not any(i in k for k in avail for i in ids)
                    and all(avail.get(k, 0.0) + 1e-9 >= min(v, total.get(k, 0.0)) for k, v in reserved.items())):
                return
            time.sleep(0.05)
        logger.warning("cluster shutdown: placement-group resources not released after %.0f s", timeout_s)

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def describe(self) -> str:
        """One line: sizes and placement (for logs)."""
        return (f"Cluster({self.policy_world_size} policy rank(s): TP={self.tp} PP={self.pp} CP={self.cp} "
                f"DP={self.dp_size}; {self.num_generation_engines} engine(s) x TP {self.rollout_tp}, "
                f"{'colocated' if self.colocated else 'split'}; {'GPU' if self.use_gpu else 'CPU'}, "
                f"{len({p.node_id for p in self.policy_placements})} node(s))")
