"""The policy worker as a Ray actor: one per training rank, SPMD, driven by the GRPO driver.

:class:`PolicyActor` wraps :class:`~megatron_brrm.workers.policy.PolicyWorker` and adds
what only the distributed setting needs:

* **DP sharding.** The driver sends the *global* batch to every rank; each rank keeps its
  data-parallel share (contiguous rows ``[dp_rank * B/DP, (dp_rank + 1) * B/DP)``), so the
  driver reads like single-process code (NeMo-RL's ``Policy`` facade shards on the driver
  instead; sending the whole batch is cheap at the sizes the CPU path runs and keeps one
  code path).
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

from megatron_brrm.rollout.refit import fused_module_key, iter_buckets
from megatron_brrm.workers.batching import Batch, select_rows

log = logging.getLogger(__name__)


class PolicyActor:
    """Ray-hosted policy rank (see the module docstring).

    Args:
        cfg: the run's :class:`megatron_brrm.config.RunConfig`.
        hf_path: HF folder with the initial weights (default ``cfg.model.hf_path``).
    """

    def __init__(self, cfg, hf_path: Optional[str] = None):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        from megatron_brrm.workers.policy import PolicyWorker

        self.cfg = cfg
        self.worker = PolicyWorker(cfg, hf_path=hf_path)

    # ------------------------------------------------------------------ info
    def info(self) -> Dict[str, int]:
        """This rank's place: global rank and TP/PP/DP ranks and sizes."""
        from megatron.core import parallel_state as mpu

        return {
            "rank": torch.distributed.get_rank(), "world_size": torch.distributed.get_world_size(),
            "tp_rank": mpu.get_tensor_model_parallel_rank(), "pp_rank": mpu.get_pipeline_model_parallel_rank(),
            "dp_rank": mpu.get_data_parallel_rank(), "dp_size": mpu.get_data_parallel_world_size(),
        }

    def _dp_share(self, batch: Batch) -> Batch:
        from megatron.core import parallel_state as mpu

        dp, rank = mpu.get_data_parallel_world_size(), mpu.get_data_parallel_rank()
        b = int(batch["input_ids"].shape[0])
        if dp == 1:
            return batch
        if b % dp:
            raise ValueError(f"batch of {b} rows does not split over DP={dp} ranks")
        per = b // dp
        return select_rows(batch, range(rank * per, (rank + 1) * per))

    def _gather_dp(self, local: torch.Tensor, total_rows: int, width: int) -> torch.Tensor:
        from megatron.core import parallel_state as mpu

        dp = mpu.get_data_parallel_world_size()
        if dp == 1:
            return local
        padded = torch.zeros(local.shape[0], width, dtype=local.dtype)
        padded[:, : local.shape[1]] = local
        parts = [torch.empty_like(padded) for _ in range(dp)]
        torch.distributed.all_gather(parts, padded, group=mpu.get_data_parallel_group())
        return torch.cat(parts)[:total_rows]

    # --------------------------------------------------------------- compute
    def get_logprobs(self, batch: Batch, reference: bool = False) -> Optional[torch.Tensor]:
        """Logprobs ``[B, T]`` float32 of the whole batch (computed per DP share, gathered).

        Returns the tensor on global rank 0 and None elsewhere (saves Ray transfers)."""
        local = self._dp_share(batch)
        fn = self.worker.get_reference_logprobs if reference else self.worker.get_logprobs
        lp = fn(local)
        full = self._gather_dp(lp, int(batch["input_ids"].shape[0]), int(batch["input_ids"].shape[1]))
        return full if torch.distributed.get_rank() == 0 else None

    def train(self, batch: Batch, loss_fn) -> Dict[str, Any]:
        """One optimizer step on the global mini-batch ``batch``; returns metrics and ``skipped``."""
        result = self.worker.train(self._dp_share(batch), loss_fn)
        return {"metrics": result.metrics, "skipped": result.skipped, "step": self.worker.step}

    # ----------------------------------------------------------------- refit
    def export_hf_buckets(self, bucket_bytes: int) -> Iterator[Optional[List]]:
        """Generator over the current weights as buckets of ``(hf_name, full tensor)`` (collective).

        Global rank 0 yields the buckets (CPU tensors); the other ranks take part in the
        gathers and yield nothing."""
        from megatron_brrm.model.weights import iter_megatron_to_hf

        stream = iter_megatron_to_hf(self.worker.model, self.worker.mapping, vp_size=self.worker.vp_size)
        rank0 = torch.distributed.get_rank() == 0
        for bucket in iter_buckets(((n, t.detach().cpu()) for n, t in stream), bucket_bytes,
                                   group_key=fused_module_key):
            if rank0:
                yield bucket

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
            from megatron.core import parallel_state as mpu

            from megatron_brrm.model.weights import local_global_params

            cached = self._refit_params = local_global_params(
                self.worker.model, self.worker.mapping, mpu.get_pipeline_model_parallel_rank(),
                mpu.get_pipeline_model_parallel_world_size(), self.worker.vp_size)
        return cached

    @staticmethod
    def _refit_writer() -> bool:
        from megatron.core import parallel_state as mpu

        return mpu.get_data_parallel_rank() == 0 and mpu.get_context_parallel_rank() == 0

    @torch.no_grad()
    def write_refit_bucket(self, path: str, buffer_bytes: int, entries: List,
                           persistent: bool = False) -> Dict[str, float]:
        """Write this rank's TP shards of one bucket into the shared-memory file ``path`` (no collective).

        The same-node transport (:mod:`megatron_brrm.workers.refit_shm`): each tensor of
        ``entries`` (:class:`~megatron_brrm.rollout.shm.BucketEntry`) held by this
        rank's pipeline stage(s) is written at its HF-layout place; only DP rank 0 (CP rank
        0) writes, the other replicas hold equal weights. The file stays mapped (at most two
        bucket files; ``persistent`` files, an engine's own weights in shared memory, until
        :meth:`release_refit_buffers` drops them).

        Returns:
            ``{"bytes": bytes written, "map_s": seconds mapping the file, "write_s": seconds
            copying the shards}``.

        Raises:
            FileNotFoundError / ValueError: the buffer is missing or too small.
            MappingError: a parameter's shape does not fit the plan.
        """
        if not self._refit_writer():
            return {"bytes": 0, "map_s": 0.0, "write_s": 0.0}
        from megatron.core import parallel_state as mpu

        from megatron_brrm.rollout.shm import map_buffer
        from megatron_brrm.workers.refit_shm import write_bucket_shards

        t0 = time.perf_counter()
        buffer = map_buffer(path, buffer_bytes, persistent=persistent)
        t1 = time.perf_counter()
        nbytes = write_bucket_shards(self._refit_local_params(), self.worker.mapping,
                                     mpu.get_tensor_model_parallel_rank(), mpu.get_tensor_model_parallel_world_size(),
                                     buffer, entries)
        return {"bytes": nbytes, "map_s": t1 - t0, "write_s": time.perf_counter() - t1}

    def release_refit_buffers(self, keep: Sequence[str] = ()) -> int:
        """Unmap the refit buffers this rank holds, except the paths in ``keep`` (call when a refit
        ends); returns how many were unmapped."""
        from megatron_brrm.rollout.shm import unmap_buffers

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
        from megatron_brrm.parallel import destroy_parallel

        destroy_parallel()
