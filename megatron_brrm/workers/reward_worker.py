"""The Bradley-Terry reward-model worker: a :class:`~megatron_brrm.workers.policy.PolicyWorker`
whose model carries a scalar reward head.

Everything distributed is the policy worker's (Megatron DDP, the distributed optimizer, the
pipeline schedules, micro-batching, global loss normalisation, non-finite step skipping,
gradient clipping, ``dist_checkpointing`` checkpoints at any TP/PP/DP); this class changes what
the model is and what the loss sees:

* the model is built with ``head="scalar"`` (:mod:`megatron_brrm.model.reward_head`): the last
  pipeline stage returns values ``[b, s, 1]`` instead of vocabulary logits. From an HF
  ``*ForSequenceClassification`` folder the head is loaded (``score.weight``); from a causal LM
  the backbone is loaded and the head starts at
  :func:`~megatron_brrm.model.reward_head.initial_head_weight`;
* the per-position quantity handed to the loss function is the head's value (where the policy
  worker hands vocab-parallel token logprobs), so :class:`BTLoss` reads each sequence's reward
  at its scoring token (``loss_mask``: a single 1 at the last real token, see
  :func:`bt_batch`);
* no reference copy of the weights is kept (a reward model has no KL term);
* the optimizer and learning-rate schedule come from ``bt.optimizer`` (an
  :class:`~megatron_brrm.config.OptimizerConfig`, as ``grpo.optimizer`` and ``sft.optimizer``).

Batches interleave pairs: rows ``2i`` / ``2i + 1`` are the chosen / rejected sequence of pair
``i``; micro-batches hold whole pairs (``micro_batch_size`` is in pairs) and DP ranks get
contiguous whole pairs.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

import torch

from megatron_brrm.model.reward_head import initial_head_weight
from megatron_brrm.model.weights import megatron_state_to_hf
from megatron_brrm.rl.loss import bradley_terry_pair_loss
from megatron_brrm.workers.batching import sequences_to_batch
from megatron_brrm.workers.policy import PolicyError, PolicyWorker
from megatron_brrm.workers.policy_data import Batch


def worker_config(cfg):
    """The config the policy-worker machinery reads for a Bradley-Terry run: the micro-batch size
    in rows (``2 * bt.micro_batch_size``) in the field it reads (``grpo.micro_batch_size``), no
    sequence packing (a pack could split a pair), no KL. The optimizer and its schedule come from
    ``bt.optimizer`` (passed to the policy worker directly)."""
    b = cfg.bt
    grpo = dataclasses.replace(cfg.grpo, micro_batch_size=2 * b.micro_batch_size, max_tokens_per_microbatch=None,
                               sequence_packing=False, kl_coef=0.0)
    return dataclasses.replace(cfg, grpo=grpo)


class BTLoss:
    """Worker ``loss_fn``: :func:`megatron_brrm.rl.loss.bradley_terry_pair_loss` with a margin and
    a reward-centering coefficient (picklable, sent to every rank)."""

    def __init__(self, margin: float = 0.0, center_coef: float = 0.0):
        self.margin, self.center_coef = float(margin), float(center_coef)

    def __call__(self, values, data, norm, entropy=None):
        return bradley_terry_pair_loss(values, data, norm, self.margin, self.center_coef)


def bt_batch(chosen: Sequence[Sequence[int]], rejected: Sequence[Sequence[int]], pad_id: int) -> Batch:
    """A reward-model batch of interleaved pairs (row ``2i`` = chosen ``i``, ``2i + 1`` = rejected ``i``).

    Args:
        chosen, rejected: token ids of each pair's two sequences (same count).
        pad_id: right-padding id.
    Returns:
        ``input_ids`` int64 ``[2P, T]``, ``input_lengths`` int64 ``[2P]``, ``loss_mask`` float32
        ``[2P, T]`` with a single 1 at each row's last real token (where the reward is read).
    Raises:
        ValueError: different counts, or an empty sequence.
    """
    if len(chosen) != len(rejected) or not chosen:
        raise ValueError(f"bt_batch: need the same non-zero number of chosen and rejected sequences, got "
                         f"{len(chosen)} and {len(rejected)}")
    rows = [list(x) for pair in zip(chosen, rejected) for x in pair]
    if any(not r for r in rows):
        raise ValueError("bt_batch: an empty sequence")
    masks = [[0] * (len(r) - 1) + [1] for r in rows]
    return sequences_to_batch(rows, masks, pad_id)


class RewardWorker(PolicyWorker):
    """A Megatron Bradley-Terry reward model with its optimizer (module docstring).

    Args:
        cfg: :class:`~megatron_brrm.config.RunConfig` (``model``, ``parallel``, ``bt``,
            ``checkpoint``); the policy-worker fields are filled by :func:`worker_config`.
        hf_path: HF folder (causal LM or ``*ForSequenceClassification``); default ``cfg.model.hf_path``.
        init_parallel: see :class:`~megatron_brrm.workers.policy.PolicyWorker`.

    Raises:
        PolicyError / ModelBuildError / MappingError: as the policy worker; ValueError for bad
        ``bt.optimizer`` settings.
    """

    head = "scalar"
    keeps_reference = False

    def __init__(self, cfg, hf_path: Optional[str] = None, init_parallel: bool = True):
        super().__init__(worker_config(cfg), hf_path=hf_path, init_parallel=init_parallel,
                         optimizer=cfg.bt.optimizer, total_steps=cfg.bt.max_num_steps)

    def _initial_hf_weights(self):
        weights = super()._initial_hf_weights()
        if "score.weight" in weights:  # an HF *ForSequenceClassification folder
            return weights
        # a causal LM: a new head (the seeded draw of initial_head_weight)
        head = initial_head_weight(int(self.hf_config.hidden_size),
                                   float(getattr(self.hf_config, "initializer_range", 0.02) or 0.02))
        return lambda name: head if name == "score.weight" else weights[name]

    def _logprobs_of(self, logits: torch.Tensor, ids: torch.Tensor, with_entropy: bool,
                     temperature: Optional[float] = None):
        """The per-position quantity the loss sees: the reward head's values ``[b, s]`` (float32)."""
        return logits[..., 0].float(), None

    # ------------------------------------------------------------------ rewards
    @torch.no_grad()
    def get_rewards(self, batch: Batch) -> torch.Tensor:
        """Reward of every row: the head's value at its last real token (forward only).

        Args:
            batch: ``input_ids`` ``[B, T]``, ``input_lengths`` ``[B]`` (any rows, not only pairs).
        Returns:
            float32 ``[B]`` on every rank (the last pipeline stage's result is broadcast).
        """
        for m in self.model:
            m.eval()
        mbs, stats = self._microbatches(batch)

        def loss_func(mb, output_tensor):
            return output_tensor.new_zeros(()), {"values": output_tensor[..., 0].float()}

        store = self._run(mbs, stats, loss_func, forward_only=True)
        rewards = torch.zeros(int(batch["input_ids"].shape[0]))
        if store:
            for mb, out in zip(mbs, store):
                for row, j, st, n in mb.segments:
                    rewards[row] = out["values"][j, st + n - 1]
        self._from_last_stage(tensors=(rewards,))
        return rewards

    # ---------------------------------------------------------------- gradients
    def gradients(self, batch: Batch, loss_fn) -> Dict[str, torch.Tensor]:
        """The gradient of the global-batch loss w.r.t. every weight, as full HF-named tensors
        (collective; a parity check against a single-process reference, no optimizer step).

        The same forward/backward as :meth:`train` (loss scaled by ``num_microbatches * dp``,
        gradients reduced by Megatron DDP), then the fp32 main gradients are gathered like the
        weights (:func:`~megatron_brrm.model.weights.megatron_state_to_hf`).

        Raises:
            PolicyError: the distributed optimizer with DP > 1 (each rank then holds only its
                shard of the reduced gradients).
        """
        if self.cfg.parallel.use_distributed_optimizer and self.dp_size > 1:
            raise PolicyError("gradients() needs parallel.use_distributed_optimizer=false when DP > 1")
        for m in self.model:
            m.train()
            m.zero_grad_buffer()
        norm = self._global_normalizer(batch)
        mbs, stats = self._microbatches(batch)
        scale = float(len(mbs) * self.dp_size)

        def loss_func(mb, output_tensor):
            values, _ = self._logprobs_of(output_tensor, mb.data["input_ids"], False)
            loss, met = loss_fn(values, mb.data, norm)
            return loss * scale, met

        self._run(mbs, stats, loss_func, forward_only=False)
        saved: List[torch.Tensor] = [p.detach().clone() for p in self._params]
        with torch.no_grad():
            for p in self._params:
                p.copy_(p.main_grad)
        try:
            grads = megatron_state_to_hf(self.model, self.mapping, vp_size=self.vp_size)
        finally:
            with torch.no_grad():
                for p, w in zip(self._params, saved):
                    p.copy_(w)
            for m in self.model:
                m.zero_grad_buffer()
        return grads
