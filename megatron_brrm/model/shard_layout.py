"""Where one TP rank's Megatron shard goes in the HF tensors, and writing it there (no gather).

The same-node refit (``megatron_brrm.workers.refit_shm``) lets every policy rank write its
own tensor-parallel shard into HF-layout buffers in shared memory, instead of gathering the
full tensor over the TP group first; the cross-node refit receives shards straight into
their HF place. This module knows where each shard's elements go in the HF tensors, per
kind of :mod:`megatron_brrm.model.mapping` (the layout is the one of
:meth:`ArchMapping.to_megatron` / :meth:`ArchMapping.shard`, i.e. Megatron-Core's):

========== ====================================================================
kind       TP rank ``r`` of ``T`` holds, and writes
========== ====================================================================
vocab      rows ``[r*P/T, (r+1)*P/T)`` of the padded vocab (``P`` rows); rows
           ``>= vocab_size`` are padding and are dropped
row        columns ``[r*C/T, (r+1)*C/T)`` (a strided column slice of the HF tensor)
qkv        query groups ``[r*G/T, (r+1)*G/T)``; each group is ``[q heads..., k, v]``
           in Megatron; its q rows, k rows and v rows go to ``q_proj`` / ``k_proj`` /
           ``v_proj``
gated      ``[gate_r; up_r]``: rows ``[r*F/T, (r+1)*F/T)`` of ``gate_proj`` and of
           ``up_proj``
replicated the whole tensor; only TP rank 0 writes (the ranks hold equal copies)
========== ====================================================================

Every kind but ``row`` at TP > 1 moves whole rows: the shard is a list of
:class:`ShardPiece` (:func:`shard_pieces`), each a block of consecutive rows of the shard
that is a block of consecutive rows of one HF tensor. Both blocks are contiguous, so a piece
can be sent from the shard and received into the HF tensor with no copy on either side.

Writing every rank's shard of a tensor reproduces ``mapping.to_hf(name, gather(shards))``
bit for bit (pure element copies, any dtype); ``tests/model/test_shard_layout.py`` proves
it against the registry's own ``to_megatron`` / ``shard`` round trip.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from megatron_brrm.model.mapping import ArchMapping, MappingError

Tensor = torch.Tensor


@dataclass(frozen=True)
class ShardPiece:
    """Rows ``src = (lo, hi)`` (dim 0) of a TP shard are, element for element, rows ``dst = (lo, hi)``
    of the HF tensor ``hf_name`` (for a 1-D tensor: elements)."""

    hf_name: str
    src: Tuple[int, int]
    dst: Tuple[int, int]

    @property
    def rows(self) -> int:
        return self.src[1] - self.src[0]

    def of_shard(self, shard: Tensor) -> Tensor:
        """The piece's rows of ``shard`` (a contiguous view when ``shard`` is contiguous)."""
        return shard[self.src[0]:self.src[1]]

    def of_hf(self, hf_tensor: Tensor) -> Tensor:
        """The piece's rows of the HF tensor (a contiguous view when it is contiguous)."""
        return hf_tensor[self.dst[0]:self.dst[1]]

    def write(self, rows: Tensor, hf_views: Mapping[str, Tensor]) -> Dict[str, int]:
        """Copy ``rows`` (this piece's rows of a shard, e.g. :meth:`of_shard` or a received
        buffer) into their place in ``hf_views[hf_name]`` (``copy_`` converts the dtype);
        returns ``{hf_name: elements written}``, empty when ``hf_views`` lacks the name."""
        if self.hf_name not in hf_views:
            return {}
        self.of_hf(hf_views[self.hf_name]).copy_(rows)
        return {self.hf_name: rows.numel()}


def _check_shape(what: str, tensor: Tensor, expected) -> None:
    if tuple(tensor.shape) != tuple(expected):
        raise MappingError(f"{what}: shape {tuple(tensor.shape)} does not match the expected {tuple(expected)}")


def shard_pieces(mapping: ArchMapping, megatron_name: str, tp_rank: int, tp_size: int) -> Optional[List[ShardPiece]]:
    """TP rank ``tp_rank``'s shard of ``megatron_name`` as blocks of whole rows of the HF tensors.

    Depends only on the mapping and the TP layout, so a sender and its receivers agree on it.

    Returns:
        The pieces, in shard-row order; ``[]`` when the shard writes nothing (a tied output
        layer, a replicated tensor on TP rank > 0, a vocab shard of padding rows only); None for
        a ``row`` tensor at TP > 1 (its shard is a column slice of the HF tensor).

    Raises:
        MappingError: unknown name, ``tp_rank`` outside ``0..tp_size-1``, or query groups not
            divisible by ``tp_size``.
    """
    if not 0 <= tp_rank < tp_size:
        raise MappingError(f"tp_rank={tp_rank} outside 0..{tp_size - 1}")
    kind = mapping.kind(megatron_name)
    if megatron_name.endswith("output_layer.weight") and mapping.tied:
        return []
    names = mapping.hf_names_for(megatron_name)
    rows = mapping.shard_shape(megatron_name, tp_size)[0]
    if kind == "replicated":
        return [ShardPiece(names[0], (0, rows), (0, rows))] if tp_rank == 0 else []
    if kind == "row":
        return [ShardPiece(names[0], (0, rows), (0, rows))] if tp_size == 1 else None
    if kind == "vocab":
        lo, hi = tp_rank * rows, min((tp_rank + 1) * rows, mapping.vocab_size)
        return [ShardPiece(names[0], (0, hi - lo), (lo, hi))] if lo < hi else []
    if kind == "gated":
        per = rows // 2
        return [ShardPiece(name, (half * per, (half + 1) * per), (tp_rank * per, (tp_rank + 1) * per))
                for half, name in enumerate(names)]  # [gate_r; up_r]
    if kind == "qkv":
        g, d = mapping.num_query_groups, mapping.head_dim
        if g % tp_size:
            raise MappingError(f"{megatron_name}: {g} query groups cannot be split over TP={tp_size}")
        per, local = mapping.num_heads // g, g // tp_size
        q_name, k_name, v_name = names
        pieces = []
        for j in range(local):  # local group j is global group tp_rank * local + j: [q (per heads); k; v]
            base, group = j * (per + 2) * d, tp_rank * local + j
            pieces += [ShardPiece(q_name, (base, base + per * d), (group * per * d, (group + 1) * per * d)),
                       ShardPiece(k_name, (base + per * d, base + (per + 1) * d), (group * d, (group + 1) * d)),
                       ShardPiece(v_name, (base + (per + 1) * d, base + (per + 2) * d), (group * d, (group + 1) * d))]
        return pieces
    raise MappingError(f"{megatron_name}: unsupported kind {kind!r}")  # pragma: no cover - KINDS is closed


@torch.no_grad()
def write_shard_into_hf(mapping: ArchMapping, megatron_name: str, shard: Tensor, tp_rank: int, tp_size: int,
                        hf_views: Mapping[str, Tensor]) -> Dict[str, int]:
    """Copy TP rank ``tp_rank``'s shard of ``megatron_name`` into the HF tensors in ``hf_views``.

    Only the HF names present in ``hf_views`` are written (a bucket may hold ``q_proj`` but
    not ``k_proj``); other names of ``megatron_name`` are skipped. A tied ``output_layer``
    writes nothing (HF ties ``lm_head`` to the embedding, which the embedding's owner writes).
    A replicated tensor is written by TP rank 0 only.

    Args:
        mapping: the model's :class:`ArchMapping` (with the trainer's padded vocab).
        megatron_name: global Megatron name (either norm name set).
        shard: this rank's shard, shape ``mapping.shard_shape(megatron_name, tp_size)``.
        tp_rank, tp_size: TP layout of the rank that holds ``shard``.
        hf_views: ``{hf_name: tensor of mapping.hf_shape(hf_name)}``, written in place
            (e.g. views into a shared-memory buffer); ``copy_`` converts the dtype.

    Returns:
        ``{hf_name: elements written}`` for the names this call wrote.

    Raises:
        MappingError: unknown name, wrong shard / view shape, ``tp_rank`` outside
            ``0..tp_size-1``, or a dimension not divisible by ``tp_size``.
    """
    pieces = shard_pieces(mapping, megatron_name, tp_rank, tp_size)
    _check_shape(f"{megatron_name} (TP rank {tp_rank} of {tp_size})", shard,
                 mapping.shard_shape(megatron_name, tp_size))
    targets = {n: hf_views[n] for n in mapping.hf_names_for(megatron_name) if n in hf_views}
    for n, t in targets.items():
        _check_shape(n, t, mapping.hf_shape(n))
    written: Dict[str, int] = {}
    if pieces is None:  # a row-parallel shard: columns [r*C/T, (r+1)*C/T) of the HF tensor
        for name, target in targets.items():
            cols = shard.shape[1]
            target[:, tp_rank * cols:(tp_rank + 1) * cols].copy_(shard)
            written[name] = shard.numel()
        return written
    for piece in pieces:
        for name, count in piece.write(piece.of_shard(shard), targets).items():
            written[name] = written.get(name, 0) + count
    return written
