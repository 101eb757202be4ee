"""The policy worker as a Ray actor: one per training rank, SPMD, driven by the GRPO driver.

:class:`PolicyActor` wraps :class:`~megatron_brrm.workers.policy.PolicyWorker` and adds
what only the distributed setting needs:

* **DP shards.** Each rank receives its data-parallel replica's shard of a batch, cut and
  sent once per replica by the driver's :class:`~megatron_brrm.workers.policy_group.Policy`
  facade; results come back only from the rank that owns them (TP rank 0 of the last stage).
* **Refit streaming.** :meth:`export_hf_buckets` is a generator every rank runs together
  (the TP gathers / PP broadcasts of :func:`~megatron_brrm.model.weights.iter_megatron_to_hf`
  are collectives); global rank 0 yields size-bounded buckets of ``(hf_name, tensor)``, the
  other ranks yield nothing. The driver consumes rank 0's stream with Ray's streaming
  generators and back-pressure, so at most a few buckets are in flight. This is the
  ``ray`` refit transport, used when the ranks and engines span several nodes.
* **Same-node refit.** When the driver, every rank and every engine share one node, the
  ``shm`` transport (:mod:`megatron_brrm.workers.refit_shm`, the CPU analog of NeMo-RL's
  CUDA-IPC refit) is used instead: :meth:`write_refit_bucket` writes this rank's own TP
  shards straight into their HF-layout place in shared memory, with no gather and no
  collective: either into a bucket while the engines read the previous one (double
  buffering), or directly into an engine's weights that it moved into shared memory.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch

from megatron_brrm.model.weights import iter_megatron_to_hf, local_global_params
from megatron_brrm.parallel import destroy_parallel
from megatron_brrm.rollout.refit import fused_module_key, iter_buckets
from megatron_brrm.rollout.shm import SharedBuffers, bucket_views, map_buffer, unmap_buffers
from megatron_brrm.workers.batching import Batch
from megatron_brrm.workers.refit_shm import shared_layout, write_routed_shards

log = logging.getLogger(__name__)


class PolicyActor:
    """Ray-hosted policy rank (see the module docstring).

    Args:
        cfg: the run's :class:`megatron_brrm.config.RunConfig`.
        hf_path: HF folder with the initial weights (default ``cfg.model.hf_path``).
        optimizer, total_steps: the trainer's optimizer config and run length (see
            :class:`~megatron_brrm.workers.policy.PolicyWorker`; default: GRPO's).
    """

    def __init__(self, cfg, hf_path: Optional[str] = None, optimizer=None, total_steps: Optional[int] = None):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        from megatron_brrm.workers.policy import PolicyWorker  # lazy: runs in a spawned/Ray worker process

        self.cfg = cfg
        self.worker = PolicyWorker(cfg, hf_path=hf_path, optimizer=optimizer, total_steps=total_steps)
        # (path, nbytes, address) -> (entries, {hf_name: view}) of engines' weight files (refit)
        self._persistent_views: Dict[tuple, tuple] = {}

    # ------------------------------------------------------------------ info
    def info(self) -> Dict[str, int]:
        """This rank's place: global rank and TP/PP/DP ranks and sizes."""
        from megatron.core import parallel_state as mpu  # lazy: runs in a spawned/Ray worker process

        return {
            "rank": torch.distributed.get_rank(), "world_size": torch.distributed.get_world_size(),
            "tp_rank": mpu.get_tensor_model_parallel_rank(), "pp_rank": mpu.get_pipeline_model_parallel_rank(),
            "dp_rank": mpu.get_data_parallel_rank(), "dp_size": mpu.get_data_parallel_world_size(),
            "tp_size": mpu.get_tensor_model_parallel_world_size(), "pp_size": mpu.get_pipeline_model_parallel_world_size(),
            "cp_rank": mpu.get_context_parallel_rank(), "pid": os.getpid(),
        }

    # --------------------------------------------------------------- compute
    def _owns_results(self) -> bool:
        """True on the rank whose results the driver reads: TP rank 0 of the last pipeline stage
        (every DP replica has one)."""
        from megatron.core import parallel_state as mpu  # lazy: runs in a spawned/Ray worker process

        return (mpu.get_tensor_model_parallel_rank() == 0
                and mpu.get_pipeline_model_parallel_rank() == mpu.get_pipeline_model_parallel_world_size() - 1)

    def get_logprobs(self, batch: Batch, reference: bool = False,
                     temperature: Optional[float] = None) -> Optional[torch.Tensor]:
        """Logprobs ``[b, T]`` float32 of this DP replica's rows ``batch`` (its shard of the global batch),
        at ``temperature`` (default ``rollout.temperature``).

        Returns the tensor on the replica's result rank (TP rank 0, last PP stage) and None on the
        others, so only one copy per replica travels back."""
        if reference:
            with self.worker.reference_weights():
                lp = self.worker.get_logprobs(batch, temperature=temperature)
        else:
            lp = self.worker.get_logprobs(batch, temperature=temperature)
        return lp if self._owns_results() else None

    def train(self, batch: Batch, loss_fn) -> Dict[str, Any]:
        """One optimizer step; ``batch`` is this DP replica's shard of the global mini-batch. Returns
        metrics (global, identical on every rank), ``skipped`` and the optimizer step."""
        result = self.worker.train(batch, loss_fn)
        return {"metrics": result.metrics, "skipped": result.skipped, "step": self.worker.step}

    def offload(self, mode: str = "all") -> Dict[str, int]:
        """``PolicyWorker.offload``: free optimizer state, gradients and (``all``) parameters."""
        return self.worker.offload(mode)

    def onload(self) -> int:
        """``PolicyWorker.onload``: restore what :meth:`offload` freed."""
        return self.worker.onload()

    def memory_bytes(self) -> Dict[str, int]:
        """``PolicyWorker.memory_bytes``: bytes held by parameters, gradients and optimizer state."""
        return self.worker.memory_bytes()

    # ----------------------------------------------------------------- refit
    def export_hf_buckets(self, bucket_bytes: int) -> Iterator[Optional[List]]:
        """Generator over the current weights as buckets of ``(hf_name, full tensor)`` (collective).

        Global rank 0 yields the buckets (CPU tensors); the other ranks take part in the TP
        gathers, send their stage's tensors to rank 0 (point to point, in rank 0's PP group
        only), copy nothing to host and yield nothing."""
        stream = iter_megatron_to_hf(self.worker.model, self.worker.mapping, vp_size=self.worker.vp_size, dst=0)
        if torch.distributed.get_rank() != 0:
            for _ in stream:
                pass
            return
        yield from iter_buckets(((n, t.detach().cpu()) for n, t in stream), bucket_bytes, group_key=fused_module_key)

    def refit_shm_info(self) -> Dict[str, Any]:
        """What the driver needs to plan a shared-memory refit (no collective).

        Returns:
            ``{"dtypes": {global Megatron name: dtype name} of this rank's parameters,
            "mapping": the ArchMapping}``.
        """
        local = self._refit_local_params()
        return {"dtypes": {n: str(p.dtype) for n, p in local.items()}, "mapping": self.worker.mapping}

    def _refit_local_params(self) -> Dict[str, torch.Tensor]:
        """``{global Megatron name: parameter}`` of this rank, named once: the model's parameter
        objects never change (optimizer steps and checkpoint loads write into them), and a
        refit asks for them once per bucket."""
        cached = getattr(self, "_refit_params", None)
        if cached is None:
            from megatron.core import parallel_state as mpu  # lazy: runs in a spawned/Ray worker process

            cached = self._refit_params = local_global_params(
                self.worker.model, self.worker.mapping, mpu.get_pipeline_model_parallel_rank(),
                mpu.get_pipeline_model_parallel_world_size(), self.worker.vp_size)
        return cached

    def setup_refit_route(self, route, dtypes: Dict[str, str]) -> int:
        """Install a node-aware refit route (collective: every rank builds the route's broadcast
        groups, in the same order). ``dtypes`` is ``{global Megatron name: dtype name}`` of every
        tensor. Returns the number of groups."""
        self._route, self._route_dtypes = route, dict(dtypes)
        self._route_groups = {g.key: torch.distributed.new_group(list(g.ranks)) for g in route.groups}
        # a relay at TP > 1 syncs each stage's writers before the stage leaves their node
        stages = sorted({g.key[0] for g in route.groups}) if route.tp_size > 1 else []
        self._writer_groups = {s: torch.distributed.new_group(list(route.stage_sources(s))) for s in stages}
        return len(self._route_groups)

    @torch.no_grad()
    def write_refit_targets(self, targets_by_node: Dict[str, List], hf_names: Sequence[str],
                            persistent: bool = False) -> Dict[str, float]:
        """This rank's part of a node-aware refit of the tensors ``hf_names`` (collective when the route
        has broadcast groups; :func:`~megatron_brrm.workers.refit_shm.write_routed_shards`).

        Args:
            targets_by_node: ``{Ray node id: [(path, nbytes, entries), ...]}``: the shared-memory
                files of each node (bucket buffers, or engines' own weights) with their layouts;
                this rank writes only into its own node's.
            hf_names: the tensors of this call (every rank gets the same list).
            persistent: the files are engines' weights, kept mapped between refits.

        Returns:
            ``{"bytes", "map_s", "comm_s", "write_s", "relay"}`` of this rank.

        Raises:
            RuntimeError: no route installed (:meth:`setup_refit_route`).
        """
        if getattr(self, "_route", None) is None:
            raise RuntimeError("write_refit_targets before setup_refit_route")
        rank = torch.distributed.get_rank()
        t0 = time.perf_counter()
        mapped = [self._target_views(path, nbytes, entries, persistent)
                  for path, nbytes, entries in targets_by_node.get(self._route.node_of[rank], [])]
        map_s = time.perf_counter() - t0
        from megatron.core import parallel_state as mpu  # lazy: runs in a spawned/Ray worker process

        out = write_routed_shards(self._refit_local_params(), self.worker.mapping, self._route, rank,
                                  mpu.get_tensor_model_parallel_rank(), self._route_groups, self._route_dtypes,
                                  [views for _, views in mapped], hf_names, vp_size=self.worker.vp_size,
                                  buffers=[buffer for buffer, _ in mapped],
                                  layout=shared_layout(targets_by_node, self._route.nodes),
                                  writer_groups=self._writer_groups)
        out["map_s"] = map_s
        return out

    def _target_views(self, path: str, nbytes: int, entries, persistent: bool):
        """``(buffer, {hf_name: view})`` of the mapped file ``path``; an engine's weights (``persistent``)
        keep their views between refits (same file, same layout), so a refit does not rebuild hundreds."""
        buffer = map_buffer(path, nbytes, persistent=persistent)
        if not persistent:
            return buffer, dict(bucket_views(buffer, entries))
        key = (path, nbytes, buffer.data_ptr())
        hit = self._persistent_views.get(key)
        if hit is None or hit[0] != entries:
            self._persistent_views[key] = hit = (list(entries), dict(bucket_views(buffer, entries)))
        return buffer, hit[1]

    def create_refit_buffers(self, nbytes: int, count: int = 2) -> List[str]:
        """Create ``count`` shared-memory files of ``nbytes`` bytes on this rank's node (it is the
        node's buffer owner for this refit); returns their paths. :meth:`close_refit_buffers` removes them."""
        self.close_refit_buffers()
        self._node_buffers = SharedBuffers(nbytes, count=count)
        return list(self._node_buffers.paths)

    def close_refit_buffers(self) -> None:
        """Remove the files of :meth:`create_refit_buffers` (idempotent)."""
        buffers = getattr(self, "_node_buffers", None)
        if buffers is not None:
            buffers.close()
            self._node_buffers = None

    def release_refit_buffers(self, keep: Sequence[str] = ()) -> int:
        """Unmap the refit buffers this rank holds, except the paths in ``keep`` (call when a refit
        ends); returns how many were unmapped."""
        for key in [k for k in self._persistent_views if k[0] not in keep]:
            del self._persistent_views[key]  # the views hold the mapping open
        return unmap_buffers(keep)

    def hf_state_dict(self) -> Optional[Dict[str, torch.Tensor]]:
        """All weights as full HF tensors on rank 0 (collective; small models only)."""
        sd = self.worker.hf_state_dict()
        return sd if torch.distributed.get_rank() == 0 else None

    # ----------------------------------------------------------- checkpoints
    def save_checkpoint(self, save_dir: str, step: int, extra: Optional[dict] = None, keep_last_k: int = 3) -> str:
        """Save model + optimizer + scheduler + RNG + ``extra`` (data position, driver state).

        The folder is named after the worker's optimizer-step count (``step_<N>``); the
        driver's own step travels in ``extra``, which :meth:`load_checkpoint` returns."""
        return str(self.worker.save_checkpoint(save_dir, extra_state=extra, keep_last_k=keep_last_k))

    def load_checkpoint(self, save_dir: str) -> Optional[dict]:
        """Resume from ``save_dir``'s ``latest`` checkpoint; returns its ``extra`` (None: none found)."""
        return self.worker.load_checkpoint(save_dir)

    def shutdown(self) -> None:
        """Tear down torch.distributed and Megatron's parallel state (call before killing the actor)."""
        destroy_parallel()
