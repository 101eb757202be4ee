"""The Bradley-Terry reward worker as a Ray actor: one per training rank, SPMD, driven by
``python -m megatron_brrm.train_bt``.

The driver sends the *global* batch (interleaved pairs, :func:`~megatron_brrm.workers.reward_worker.bt_batch`)
to every rank; each rank keeps its data-parallel share, contiguous whole pairs
(rows ``[dp_rank * B/DP, (dp_rank + 1) * B/DP)``, ``B/DP`` even). Results that only one rank
needs to return (rewards) come back from global rank 0; the others return None.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

import torch

from megatron_brrm.parallel import destroy_parallel
from megatron_brrm.workers.batching import Batch, select_rows


class RewardActor:
    """Ray-hosted reward-model rank.

    Args:
        cfg: the run's :class:`~megatron_brrm.config.RunConfig`.
        hf_path: HF folder with the initial weights (default ``cfg.model.hf_path``).
    """

    def __init__(self, cfg, hf_path: Optional[str] = None):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        from megatron_brrm.workers.reward_worker import RewardWorker  # lazy: runs in a spawned/Ray worker process

        self.worker = RewardWorker(cfg, hf_path=hf_path)

    def info(self) -> Dict[str, int]:
        """This rank's global rank and TP/PP/DP ranks and sizes."""
        from megatron.core import parallel_state as mpu  # lazy: runs in a spawned/Ray worker process

        return {"rank": torch.distributed.get_rank(), "world_size": torch.distributed.get_world_size(),
                "tp_rank": mpu.get_tensor_model_parallel_rank(), "pp_rank": mpu.get_pipeline_model_parallel_rank(),
                "dp_rank": mpu.get_data_parallel_rank(), "dp_size": mpu.get_data_parallel_world_size()}

    def _share(self, batch: Batch, whole_pairs: bool) -> Batch:
        from megatron.core import parallel_state as mpu  # lazy: runs in a spawned/Ray worker process

        dp, rank = mpu.get_data_parallel_world_size(), mpu.get_data_parallel_rank()
        b = int(batch["input_ids"].shape[0])
        if dp == 1:
            return batch
        per, rest = divmod(b, dp)
        if rest or (whole_pairs and per % 2):
            raise ValueError(f"a batch of {b} rows does not split into whole pairs over DP={dp} ranks; "
                             f"bt.global_batch_size must be a multiple of the data-parallel size")
        return select_rows(batch, range(rank * per, (rank + 1) * per))

    def train(self, batch: Batch, loss_fn) -> Dict[str, Any]:
        """One optimizer step on the global batch of interleaved pairs; metrics on every rank."""
        result = self.worker.train(self._share(batch, whole_pairs=True), loss_fn)
        return {"metrics": result.metrics, "skipped": result.skipped, "step": self.worker.step}

    def get_rewards(self, batch: Batch) -> Optional[torch.Tensor]:
        """Rewards ``[B]`` float32 of every row (each DP rank scores its share; gathered).

        ``B`` must be a multiple of the DP size (the driver pads). Returns the tensor on global
        rank 0 and None elsewhere."""
        from megatron.core import parallel_state as mpu  # lazy: runs in a spawned/Ray worker process

        local = self.worker.get_rewards(self._share(batch, whole_pairs=False))
        dp = mpu.get_data_parallel_world_size()
        if dp > 1:
            parts = [torch.empty_like(local) for _ in range(dp)]
            torch.distributed.all_gather(parts, local.to(self.worker.device), group=mpu.get_data_parallel_group())
            local = torch.cat([p.cpu() for p in parts])
        return local if torch.distributed.get_rank() == 0 else None

    def save_checkpoint(self, save_dir: str, extra: Optional[dict] = None, keep_last_k: int = 3) -> str:
        """Model + optimizer + LR schedule + RNG + ``extra`` as ``save_dir/step_<optimizer step>``."""
        return str(self.worker.save_checkpoint(save_dir, extra_state=extra, keep_last_k=keep_last_k))

    def load_checkpoint(self, save_dir: str) -> Optional[dict]:
        """Resume from ``save_dir``'s latest checkpoint; returns its ``extra`` (None: none found)."""
        return self.worker.load_checkpoint(save_dir)

    def hf_state_dict(self) -> Optional[Dict[str, torch.Tensor]]:
        """All weights as full HF tensors on rank 0 (collective; small models only)."""
        sd = self.worker.hf_state_dict()
        return sd if torch.distributed.get_rank() == 0 else None

    def shutdown(self) -> None:
        """Tear down torch.distributed and Megatron's parallel state."""
        destroy_parallel()
