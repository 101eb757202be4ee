"""Micro-batching of a policy batch for Megatron's pipeline schedules.

A *policy batch* is a dict of tensors for this DP rank's share of the global batch:

* ``input_ids``: int64 ``[B, T]``, right-padded token ids (prompt + generated tokens);
* ``input_lengths``: int64 ``[B]``, the number of real tokens of each row;
* any other ``[B, T]`` tensor (``loss_mask``, ``old_logprobs``, ``ref_logprobs``,
  ``rollout_logprobs``, ...) aligned to input positions, and ``[B]`` tensors (``advantages``).

Micro-batches are built by **padding** (:func:`make_microbatches`) or by **sequence
packing** (:func:`make_packed_microbatches`). Padding: rows are taken in order, ``micro_batch_size`` at a time, or, with
``max_tokens_per_microbatch``, as many as fit ``rows * padded_length <= max_tokens``.
Each micro-batch is right-padded to its own longest row, rounded up to ``pad_multiple``
(TP size under sequence parallelism: Megatron splits the sequence across TP ranks). Under
pipeline parallelism every micro-batch must have the same shape (the stages exchange fixed
``[seq, mbs, hidden]`` tensors), so all are padded to the batch's longest row and filled
with empty rows (zero loss mask) to ``micro_batch_size`` rows.

Padding waste: :func:`make_microbatches` reports ``padding_fraction = 1 - real tokens /
computed tokens``. For BR-RM rollouts (prompt 1-4k tokens, two turns of 0.5-4k generated
tokens) it is typically 20-50% with ``micro_batch_size > 1`` and 0% with
``micro_batch_size = 1`` (without PP); sort rows by length before calling to reduce it.
Causal attention makes right padding exact: real positions never attend to padding.

Packing concatenates whole rows (in order, a new pack when the next row would exceed
``max_tokens_per_microbatch``) into one row per micro-batch and passes a block-diagonal
causal attention mask (``[1, 1, L, L]``, True = masked, Megatron's local-spec convention),
so a token attends only to earlier tokens of its own sequence. Positions are not reset per
sequence: RoPE attention scores depend only on the distance between positions, so a
sequence gives the same result at any offset (to float rounding). Per-sequence ``[B]``
tensors (``advantages``) are expanded to tokens and ``segment_ids`` (``-1`` on padding)
let sequence-level losses average per sequence. The only waste is the tail of each pack
(reported as ``padding_fraction``). The explicit mask is a local-spec (CPU) mechanism;
Transformer Engine needs THD ``PackedSeqParams`` instead (not implemented).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

Batch = Dict[str, torch.Tensor]


@dataclass
class MicroBatch:
    """One micro-batch.

    Attributes:
        rows: batch rows it holds (-1 = empty filler row).
        data: the tensors (``[b, s]`` token tensors cut/padded to ``s``).
        segments: ``(batch_row, mb_row, start, length)`` for every sequence: where its
            ``length`` real tokens sit in ``data`` (row ``mb_row``, from column ``start``).
    """

    rows: List[int]
    data: Batch
    segments: List[Tuple[int, int, int, int]] = field(default_factory=list)


def validate_batch(batch: Batch) -> int:
    """Check the policy batch layout; returns ``B``.

    Raises:
        KeyError: ``input_ids`` or ``input_lengths`` missing.
        ValueError: inconsistent shapes (the key is named).
    """
    for key in ("input_ids", "input_lengths"):
        if key not in batch:
            raise KeyError(f"policy batch is missing '{key}'")
    ids = batch["input_ids"]
    if ids.dim() != 2:
        raise ValueError(f"policy batch 'input_ids' must be [B, T], got {tuple(ids.shape)}")
    b, t = ids.shape
    for k, v in batch.items():
        if not isinstance(v, torch.Tensor):
            continue
        if v.shape[0] != b:
            raise ValueError(f"policy batch '{k}' has {v.shape[0]} rows, 'input_ids' has {b}")
        if v.dim() == 2 and v.shape[1] != t:
            raise ValueError(f"policy batch '{k}' has length {v.shape[1]}, 'input_ids' has {t}")
    lens = batch["input_lengths"]
    if int(lens.max()) > t or int(lens.min()) < 1:
        raise ValueError(f"policy batch 'input_lengths' must be in [1, {t}], got {lens.tolist()}")
    return b


def _round_up(x: int, m: int) -> int:
    return ((x + m - 1) // m) * m


def _take(batch: Batch, rows: List[int], length: int) -> Batch:
    out: Batch = {}
    real = [r for r in rows if r >= 0]
    n_fill = len(rows) - len(real)
    idx = torch.tensor(real, dtype=torch.long)
    for k, v in batch.items():
        if not isinstance(v, torch.Tensor):
            continue
        part = v.index_select(0, idx)
        if v.dim() == 2:
            t = part.shape[1]
            part = part[:, :length] if t >= length else torch.cat(
                [part, part.new_zeros(part.shape[0], length - t)], 1)
        if n_fill:
            part = torch.cat([part, part.new_zeros((n_fill,) + tuple(part.shape[1:]))], 0)
        out[k] = part
    if n_fill:
        out["input_lengths"][len(real):] = 1
    return out


def make_microbatches(batch: Batch, micro_batch_size: int, max_tokens_per_microbatch: Optional[int] = None,
                      pad_multiple: int = 1, fixed_shape: bool = False):
    """Split a policy batch into padded micro-batches (module docstring).

    Args:
        batch: policy batch (``validate_batch`` layout).
        micro_batch_size: rows per micro-batch (an upper bound with ``max_tokens_per_microbatch``).
        max_tokens_per_microbatch: cap on ``rows * padded_length`` (a single longer row still
            forms its own micro-batch); None = off. Ignored with ``fixed_shape``.
        pad_multiple: pad lengths to a multiple of this (TP size with SP).
        fixed_shape: every micro-batch ``[micro_batch_size, longest]`` (pipeline parallelism).

    Returns:
        ``(micro_batches, stats)``: list of :class:`MicroBatch` and a dict with
        ``num_microbatches``, ``seq_length`` (the longest padded length), ``real_tokens``,
        ``computed_tokens``, ``padding_fraction``.
    """
    b = validate_batch(batch)
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    lens = batch["input_lengths"].tolist()
    longest = _round_up(max(lens), pad_multiple)
    groups: List[List[int]] = []
    if fixed_shape:
        for s in range(0, b, micro_batch_size):
            rows = list(range(s, min(s + micro_batch_size, b)))
            groups.append(rows + [-1] * (micro_batch_size - len(rows)))
    else:
        cur: List[int] = []
        for i in range(b):
            cand = cur + [i]
            padded = _round_up(max(lens[j] for j in cand), pad_multiple)
            too_many = len(cand) > micro_batch_size
            too_long = max_tokens_per_microbatch is not None and len(cand) * padded > max_tokens_per_microbatch
            if cur and (too_many or too_long):
                groups.append(cur)
                cur = [i]
            else:
                cur = cand
        if cur:
            groups.append(cur)
    mbs: List[MicroBatch] = []
    computed = 0
    for rows in groups:
        length = longest if fixed_shape else _round_up(max(lens[r] for r in rows if r >= 0), pad_multiple)
        segs = [(r, j, 0, lens[r]) for j, r in enumerate(rows) if r >= 0]
        mbs.append(MicroBatch(rows, _take(batch, rows, length), segs))
        computed += len(rows) * length
    real = sum(lens)
    stats = {"num_microbatches": len(mbs), "seq_length": longest, "real_tokens": real,
             "computed_tokens": computed, "padding_fraction": 1.0 - real / max(computed, 1)}
    return mbs, stats


def make_packed_microbatches(batch: Batch, max_tokens_per_microbatch: int, pad_multiple: int = 1,
                             fixed_shape: bool = False):
    """Pack whole sequences into one row per micro-batch (module docstring).

    Args:
        batch: policy batch (``validate_batch`` layout).
        max_tokens_per_microbatch: pack capacity in tokens (>= the longest sequence).
        pad_multiple: pad each pack to a multiple of this (TP size with SP).
        fixed_shape: pad every pack to ``max_tokens_per_microbatch`` (pipeline parallelism).

    Returns:
        ``(micro_batches, stats)`` as :func:`make_microbatches`; each micro-batch's ``data``
        holds ``[1, L]`` token tensors (per-sequence ``[B]`` tensors expanded to tokens),
        ``segment_ids`` ``[1, L]`` and ``attention_mask`` ``[1, 1, L, L]`` (bool, True = masked).

    Raises:
        ValueError: a sequence is longer than ``max_tokens_per_microbatch`` (names the row).
    """
    b = validate_batch(batch)
    lens = batch["input_lengths"].tolist()
    cap = int(max_tokens_per_microbatch)
    for i, n in enumerate(lens):
        if n > cap:
            raise ValueError(f"sequence {i} has {n} tokens, more than grpo.max_tokens_per_microbatch={cap}; "
                             "raise it or turn grpo.sequence_packing off")
    packs: List[List[int]] = []
    cur: List[int] = []
    for i in range(b):
        if cur and sum(lens[j] for j in cur) + lens[i] > cap:
            packs.append(cur)
            cur = []
        cur.append(i)
    if cur:
        packs.append(cur)
    full_len = _round_up(cap, pad_multiple)
    mbs: List[MicroBatch] = []
    computed = 0
    for rows in packs:
        used = sum(lens[r] for r in rows)
        length = full_len if fixed_shape else _round_up(used, pad_multiple)
        seg = torch.full((1, length), -1, dtype=torch.long)
        data: Batch = {}
        segments = []
        start = 0
        for k, r in enumerate(rows):
            seg[0, start:start + lens[r]] = k
            segments.append((r, 0, start, lens[r]))
            start += lens[r]
        for key, v in batch.items():
            if not isinstance(v, torch.Tensor) or key == "input_lengths":
                continue
            out = torch.zeros((1, length), dtype=v.dtype if v.dim() == 2 else torch.float32)
            for r, _, st, n in segments:
                out[0, st:st + n] = v[r, :n] if v.dim() == 2 else v[r].to(torch.float32)
            data[key] = out
        data["input_lengths"] = torch.tensor([length])
        data["segment_ids"] = seg
        same = seg.unsqueeze(2) == seg.unsqueeze(1)  # [1, L, L]
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        data["attention_mask"] = (~(same & causal)).unsqueeze(1)  # [1, 1, L, L], True = masked
        mbs.append(MicroBatch(rows, data, segments))
        computed += length
    real = sum(lens)
    stats = {"num_microbatches": len(mbs), "seq_length": full_len if fixed_shape else max(
        m.data["input_ids"].shape[1] for m in mbs), "real_tokens": real, "computed_tokens": computed,
        "padding_fraction": 1.0 - real / max(computed, 1)}
    return mbs, stats


def pad_microbatch_count(mbs: List[MicroBatch], multiple: int) -> List[MicroBatch]:
    """Append empty micro-batches (zero tokens, zero loss mask, no segments) until the count is
    a multiple of ``multiple``: Megatron's interleaved (virtual) pipeline schedule requires
    the number of micro-batches to be a multiple of the PP size (or leave a remainder >= PP)."""
    out = list(mbs)
    while multiple > 1 and len(out) % multiple:
        proto = out[0]
        data = {k: torch.zeros_like(v) for k, v in proto.data.items()}
        if "input_lengths" in data:
            data["input_lengths"].fill_(1)
        if "attention_mask" in data:
            data["attention_mask"] = proto.data["attention_mask"].clone()
        out.append(MicroBatch([-1] * len(proto.rows), data, []))
    return out
