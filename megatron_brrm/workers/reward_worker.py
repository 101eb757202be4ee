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
* the learning-rate schedule comes from an :class:`~megatron_brrm.config.OptimizerConfig`
  (adds verl's warmup-stable-decay, ``wsd``).

Batches interleave pairs: rows ``2i`` / ``2i + 1`` are the chosen / rejected sequence of pair
``i``; micro-batches hold whole pairs (``micro_batch_size`` is in pairs) and DP ranks get
contiguous whole pairs.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence

import torch

from megatron_brrm.workers.policy import PolicyError, PolicyWorker
from megatron_brrm.workers.policy_data import Batch

LR_STYLES = {"constant": "constant", "linear": "linear", "cosine": "cosine", "wsd": "WSD"}
WSD_STYLES = ("linear", "cosine", "exponential", "minus_sqrt")


def check_optimizer_config(o) -> None:
    """Raise ValueError naming the ``bt.optim.*`` key that is out of range."""
    if o.lr_decay_style not in LR_STYLES:
        raise ValueError(f"bt.optim.lr_decay_style must be one of {sorted(LR_STYLES)}, got {o.lr_decay_style!r}")
    if o.lr_wsd_decay_style not in WSD_STYLES:
        raise ValueError(f"bt.optim.lr_wsd_decay_style must be one of {WSD_STYLES}, got {o.lr_wsd_decay_style!r}")
    if o.lr <= 0 or o.min_lr < 0 or o.min_lr > o.lr:
        raise ValueError(f"bt.optim: need 0 <= min_lr <= lr and lr > 0, got lr={o.lr}, min_lr={o.min_lr}")
    if o.lr_warmup_steps < 0:
        raise ValueError(f"bt.optim.lr_warmup_steps must be >= 0, got {o.lr_warmup_steps}")


def build_lr_scheduler(optimizer, o, max_steps: int):
    """Megatron-Core ``OptimizerParamScheduler`` for :class:`~megatron_brrm.config.OptimizerConfig` ``o``
    over ``max_steps`` optimizer steps (stepped once per step; formulas in the config's docstring).

    Raises:
        ValueError: an unknown style or out-of-range value (:func:`check_optimizer_config`).
    """
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    check_optimizer_config(o)
    warmup = int(o.lr_warmup_steps)
    total = max(int(max_steps), warmup + 1)
    style = LR_STYLES[o.lr_decay_style]
    min_lr = o.lr if style == "constant" else o.min_lr
    wsd = None
    if style == "WSD":
        wsd = int(o.lr_wsd_decay_steps) if o.lr_wsd_decay_steps is not None else max(1, total // 10)
        wsd = min(wsd, total - warmup)
    return OptimizerParamScheduler(
        optimizer, init_lr=o.lr * o.lr_warmup_init_factor if warmup > 0 else o.lr, max_lr=o.lr, min_lr=min_lr,
        lr_warmup_steps=warmup, lr_decay_steps=total, lr_decay_style=style, start_wd=o.weight_decay,
        end_wd=o.weight_decay, wd_incr_steps=total, wd_incr_style="constant", wsd_decay_steps=wsd,
        lr_wsd_decay_style=o.lr_wsd_decay_style if wsd else None)


def worker_config(cfg):
    """The config the policy-worker machinery reads for a Bradley-Terry run: the optimizer settings
    of ``cfg.bt.optim`` and the micro-batch size in rows (``2 * bt.micro_batch_size``) in the
    fields it reads (``grpo.*``), no sequence packing (a pack could split a pair), no KL."""
    o, b = cfg.bt.optim, cfg.bt
    grpo = dataclasses.replace(
        cfg.grpo, lr=o.lr, min_lr=o.min_lr, lr_decay_style="constant", lr_warmup_steps=0, weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2, adam_eps=o.adam_eps, clip_grad=o.clip_grad,
        max_num_steps=b.max_num_steps, micro_batch_size=2 * b.micro_batch_size, max_tokens_per_microbatch=None,
        sequence_packing=False, kl_coef=0.0)
    return dataclasses.replace(cfg, grpo=grpo)


class BTLoss:
    """Worker ``loss_fn``: :func:`megatron_brrm.rl.loss.bradley_terry_pair_loss` with a margin and
    a reward-centering coefficient (picklable, sent to every rank)."""

    def __init__(self, margin: float = 0.0, center_coef: float = 0.0):
        self.margin, self.center_coef = float(margin), float(center_coef)

    def __call__(self, values, data, norm, entropy=None):
        from megatron_brrm.rl.loss import bradley_terry_pair_loss

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
    from megatron_brrm.workers.batching import sequences_to_batch

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
        ``bt.optim`` settings.
    """

    head = "scalar"
    keeps_reference = False

    def __init__(self, cfg, hf_path: Optional[str] = None, init_parallel: bool = True):
        check_optimizer_config(cfg.bt.optim)
        super().__init__(worker_config(cfg), hf_path=hf_path, init_parallel=init_parallel)
        self.scheduler = build_lr_scheduler(self.optimizer, cfg.bt.optim, cfg.bt.max_num_steps)

    def _initial_hf_weights(self) -> Callable[[str], torch.Tensor]:
        from megatron_brrm.model.reward_head import initial_head_weight

        base = super()._initial_hf_weights()
        std = float(getattr(self.hf_config, "initializer_range", 0.02) or 0.02)

        def get(name: str) -> torch.Tensor:
            try:
                return base(name)
            except KeyError:
                if name != "score.weight":
                    raise
                return initial_head_weight(int(self.hf_config.hidden_size), std)  # a causal LM: a new head

        return get

    def _logprobs_of(self, logits: torch.Tensor, ids: torch.Tensor, with_entropy: bool):
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
        if self.pp_size > 1:
            from megatron.core import parallel_state as mpu

            group = mpu.get_pipeline_model_parallel_group()
            buf = rewards.to(self.device)
            torch.distributed.broadcast(buf, src=torch.distributed.get_global_rank(group, self.pp_size - 1),
                                        group=group)
            rewards = buf.cpu()
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
        from megatron_brrm.model.weights import megatron_state_to_hf

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
