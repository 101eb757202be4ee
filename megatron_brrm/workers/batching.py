"""Turn rollout trajectories (or SFT sequences) into policy batches, and split them.

A policy batch (layout: :mod:`megatron_brrm.workers.policy_data`) is a dict of tensors with
right-padded ``input_ids`` ``[B, T]`` (int64), ``input_lengths`` ``[B]`` (int64) and
per-position tensors aligned to ``input_ids`` (``loss_mask`` float32 0/1, logprobs
float32 with ``logprobs[:, t] = log p(x_t | x_<t)``) plus per-sequence ``advantages``
``[B]`` float32 and ``group_ids`` ``[B]`` int64.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

Batch = Dict[str, torch.Tensor]


def pad_rows(rows: Sequence[Sequence[float]], length: int, value: float, dtype: torch.dtype) -> torch.Tensor:
    """Right-pad ``rows`` to ``length`` with ``value``: a ``[len(rows), length]`` tensor of ``dtype``."""
    out = torch.full((len(rows), length), value, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(list(row), dtype=dtype)
    return out


def sequences_to_batch(token_ids: Sequence[Sequence[int]], loss_masks: Sequence[Sequence[int]], pad_id: int,
                       rollout_logprobs: Optional[Sequence[Sequence[float]]] = None,
                       advantages: Optional[torch.Tensor] = None, group_ids: Optional[Sequence[int]] = None,
                       pad_multiple: int = 1) -> Batch:
    """Build a policy batch from token sequences and their loss masks.

    Args:
        token_ids: per sequence, its token ids (lengths may differ).
        loss_masks: per sequence, 0/1 per token (1 = trained on), same lengths as ``token_ids``.
        pad_id: token id used for right padding (never trained on: its mask is 0).
        rollout_logprobs: optional per-token engine logprobs, aligned like ``token_ids``.
        advantages: optional float ``[B]`` per-sequence advantages.
        group_ids: optional GRPO group id per sequence.
        pad_multiple: round the padded length ``T`` up to a multiple of this.

    Raises:
        ValueError: a mask/logprob row whose length differs from its sequence (index named).
    """
    if len(token_ids) == 0:
        raise ValueError("sequences_to_batch: no sequences")
    for i, (ids, m) in enumerate(zip(token_ids, loss_masks, strict=True)):
        if len(ids) != len(m):
            raise ValueError(f"sequence {i}: {len(ids)} tokens but {len(m)} loss-mask entries")
        if rollout_logprobs is not None and len(rollout_logprobs[i]) != len(ids):
            raise ValueError(f"sequence {i}: {len(ids)} tokens but {len(rollout_logprobs[i])} rollout logprobs")
    t = max(len(ids) for ids in token_ids)
    t = -(-t // pad_multiple) * pad_multiple
    batch: Batch = {
        "input_ids": pad_rows(token_ids, t, pad_id, torch.int64),
        "input_lengths": torch.tensor([len(ids) for ids in token_ids], dtype=torch.int64),
        "loss_mask": pad_rows(loss_masks, t, 0, torch.float32),
    }
    if rollout_logprobs is not None:
        batch["rollout_logprobs"] = pad_rows(rollout_logprobs, t, 0.0, torch.float32)
    if advantages is not None:
        batch["advantages"] = torch.as_tensor(advantages, dtype=torch.float32).reshape(len(token_ids))
    if group_ids is not None:
        batch["group_ids"] = torch.as_tensor(list(group_ids), dtype=torch.int64)
    return batch


def trajectories_to_batch(trajectories: Sequence, advantages: torch.Tensor, pad_id: int, pad_multiple: int = 1) -> Batch:
    """Policy batch of rollout trajectories (:class:`megatron_brrm.rollout.trajectory.Trajectory`)."""
    return sequences_to_batch(
        [t.token_ids for t in trajectories], [t.loss_mask for t in trajectories], pad_id,
        rollout_logprobs=[t.rollout_logprobs for t in trajectories], advantages=advantages,
        group_ids=[t.group_id for t in trajectories], pad_multiple=pad_multiple,
    )


def select_rows(batch: Batch, rows: Sequence[int]) -> Batch:
    """The sub-batch of ``rows`` (every tensor indexed on dim 0), trimmed to its longest row."""
    idx = torch.as_tensor(list(rows), dtype=torch.int64)
    t = int(batch["input_lengths"][idx].max())
    out: Batch = {}
    for k, v in batch.items():
        v = v[idx]
        out[k] = v[:, :t] if v.dim() == 2 else v
    return out


def split_minibatches(batch: Batch, minibatch_size: int) -> List[Batch]:
    """Split a batch into consecutive mini-batches of ``minibatch_size`` rows (one optimizer step each).

    Raises:
        ValueError: the batch size is not a multiple of ``minibatch_size``.
    """
    b = int(batch["input_ids"].shape[0])
    if minibatch_size < 1 or b % minibatch_size:
        raise ValueError(f"batch of {b} rows does not split into mini-batches of {minibatch_size} "
                         f"(grpo.global_batch_size must divide num_prompts_per_step * num_generations)")
    return [select_rows(batch, range(s, s + minibatch_size)) for s in range(0, b, minibatch_size)]
