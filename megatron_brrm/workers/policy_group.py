"""``Policy``: the driver's typed facade over the Megatron policy ranks.

The ranks are :class:`~megatron_brrm.workers.policy_actor.PolicyActor` actors of one SPMD
:class:`~megatron_brrm.workers.worker_group.WorkerGroup`. The facade (NeMo-RL's ``Policy`` over
``run_all_workers_sharded_data``) gives the driver typed methods instead of string RPCs indexed
``[0]``, and does the data-parallel bookkeeping:

* **Sharding.** A batch of ``B`` rows is cut into ``DP`` contiguous shards (rows
  ``[d * B/DP, (d + 1) * B/DP)`` go to replica ``d``), each shard is put in Ray's object store
  once (``ray.put``) and every rank of its replica (its TP x PP ranks) receives the same
  reference: the batch is serialised once per replica, not once per rank.
* **Results.** Per-row results (logprobs) come from each replica's result rank (TP rank 0 of
  the last pipeline stage) and are reassembled in row order; per-step results (training
  metrics, checkpoints) are identical on every rank and read from rank 0.

Every call raises :class:`~megatron_brrm.workers.worker_group.WorkerError` (rank, node, method,
cause) when a rank fails.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import ray
import torch

from megatron_brrm.workers.batching import Batch, select_rows
from megatron_brrm.workers.hf_export import export_policy_to_hf
from megatron_brrm.workers.policy_actor import PolicyActor
from megatron_brrm.workers.worker_group import WorkerGroup


@dataclass(frozen=True)
class RankLayout:
    """Where one policy rank sits: global rank, its TP / PP / DP coordinates and its Ray node."""

    rank: int
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    dp_rank: int
    dp_size: int
    cp_rank: int
    node_id: str
    node_ip: str


@dataclass
class TrainStep:
    """Outcome of :meth:`Policy.train`: global loss metrics (``grad_norm``, ``lr``...), whether a
    non-finite loss or gradient skipped the update, and the optimizer step count after it."""

    metrics: Dict[str, float]
    skipped: bool
    step: int


class Policy:
    """The policy ranks of a run (see the module docstring).

    Args:
        cluster: the :class:`~megatron_brrm.workers.cluster.Cluster` (its policy placements).
        cfg: the run's :class:`~megatron_brrm.config.RunConfig`.
        hf_path: HF folder of the initial weights (default ``cfg.model.hf_path``).
        name: worker-group name (errors and logs).
        call_timeout_s: default per-call timeout in seconds (None: none).
        optimizer: the trainer's :class:`~megatron_brrm.config.OptimizerConfig` (default ``cfg.grpo.optimizer``).
        total_steps: optimizer steps of the run, the LR schedule's length (default: GRPO's).

    Raises:
        WorkerError: a rank failed to start.
    """

    def __init__(self, cluster, cfg, hf_path: Optional[str] = None, name: str = "policy",
                 call_timeout_s: Optional[float] = None, optimizer=None, total_steps: Optional[int] = None):
        self.cfg = cfg
        self.group = WorkerGroup(cluster, PolicyActor, cluster.policy_world_size, args=(cfg,),
                                 kwargs={"hf_path": hf_path, "optimizer": optimizer, "total_steps": total_steps},
                                 name=name, call_timeout_s=call_timeout_s)
        infos = self.group.run_all("info")
        self.layout: List[RankLayout] = [
            RankLayout(rank=i["rank"], tp_rank=i["tp_rank"], tp_size=i["tp_size"], pp_rank=i["pp_rank"],
                       pp_size=i["pp_size"], dp_rank=i["dp_rank"], dp_size=i["dp_size"], cp_rank=i["cp_rank"],
                       node_id=p.node_id, node_ip=p.node_ip)
            for i, p in zip(infos, self.group.placements)]
        self.dp_size = self.layout[0].dp_size
        last = self.layout[0].pp_size - 1
        self._result_ranks = {r.dp_rank: r.rank for r in self.layout
                              if r.tp_rank == 0 and r.pp_rank == last and r.cp_rank == 0}

    @property
    def world_size(self) -> int:
        return self.group.world_size

    # ------------------------------------------------------------------ data
    def _shards(self, batch: Batch) -> List[Any]:
        """One object-store reference per DP replica (its contiguous rows of ``batch``).

        Raises:
            ValueError: the row count does not split evenly over DP.
        """
        b = int(batch["input_ids"].shape[0])
        if b % self.dp_size:
            raise ValueError(f"a batch of {b} rows does not split over DP={self.dp_size} replicas; make the "
                             "batch size a multiple of DP (grpo.global_batch_size, grpo.num_prompts_per_step)")
        per = b // self.dp_size
        if self.dp_size == 1:
            return [ray.put(batch)]
        return [ray.put(select_rows(batch, range(d * per, (d + 1) * per))) for d in range(self.dp_size)]

    def _per_rank(self, shards: List[Any]) -> List[tuple]:
        return [(shards[r.dp_rank],) for r in self.layout]

    # --------------------------------------------------------------- compute
    def get_logprobs(self, batch: Batch, reference: bool = False, temperature: Optional[float] = None) -> torch.Tensor:
        """Per-token logprobs ``[B, T]`` float32 of ``batch['input_ids']`` under the current policy
        (``reference=True``: the frozen initial weights), at ``temperature`` (default
        ``rollout.temperature``); entry ``t`` is ``log p(x_t | x_<t)``, 0 at ``t = 0`` and past each
        row's length."""
        shards = self._shards(batch)
        results = self.group.run_all_sharded("get_logprobs", self._per_rank(shards), reference=reference,
                                             temperature=temperature)
        b, t = batch["input_ids"].shape
        out = torch.zeros(b, t, dtype=torch.float32)
        per = b // self.dp_size
        for d in range(self.dp_size):
            lp = results[self._result_ranks[d]]
            out[d * per:(d + 1) * per, :lp.shape[1]] = lp
        return out

    def train(self, batch: Batch, loss_fn) -> TrainStep:
        """One optimizer step on the global mini-batch ``batch`` (sharded over DP)."""
        res = self.group.run_all_sharded("train", self._per_rank(self._shards(batch)), loss_fn=loss_fn)[0]
        return TrainStep(metrics=dict(res["metrics"]), skipped=bool(res["skipped"]), step=int(res["step"]))

    # ------------------------------------------------------------------ memory
    def offload(self, mode: str) -> Dict[str, int]:
        """Free training memory on every rank (``all`` | ``optimizer`` | ``none``, see
        :meth:`~megatron_brrm.workers.policy.PolicyWorker.offload`); returns the byte counts summed
        over ranks."""
        return _sum(self.group.run_all("offload", mode))

    def onload(self) -> int:
        """Restore what :meth:`offload` freed on every rank; returns the bytes restored (summed)."""
        return int(sum(self.group.run_all("onload")))

    def memory_bytes(self) -> List[Dict[str, int]]:
        """Per rank: bytes held by parameters, gradients and optimizer state."""
        return self.group.run_all("memory_bytes")

    # --------------------------------------------------------------- checkpoints
    def save_checkpoint(self, save_dir: str, step: int, extra: Optional[dict] = None, keep_last_k: int = 3) -> str:
        """Save model, optimizer, schedule, RNG and ``extra`` (collective); returns the committed folder."""
        return self.group.run_all("save_checkpoint", save_dir, step, extra, keep_last_k)[0]

    def load_checkpoint(self, save_dir: str) -> Optional[dict]:
        """Resume from ``save_dir``'s ``latest`` checkpoint; returns its ``extra`` (None: none found)."""
        return self.group.run_all("load_checkpoint", save_dir)[0]

    # ------------------------------------------------------------------ weights
    def hf_state_dict(self) -> Dict[str, torch.Tensor]:
        """Every weight as a full HF tensor (collective; small models and tests)."""
        return self.group.run_all("hf_state_dict")[0]

    def export_hf(self, out_dir, hf_reference, params_dtype: str = "fp32") -> Path:
        """Write the current weights as an HF folder (streamed; see :mod:`megatron_brrm.workers.hf_export`)."""
        return export_policy_to_hf(self, out_dir, hf_reference, params_dtype=params_dtype)

    def shutdown(self) -> None:
        """Stop every rank (each tears down its process groups)."""
        self.group.shutdown()


def _sum(dicts: List[Dict[str, int]]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + int(v)
    return out
