"""Write one TP rank's Megatron shard straight into its place in the HF tensors (no gather).

The same-node refit (``megatron_brrm.workers.refit_shm``) lets every policy rank write its
own tensor-parallel shard into HF-layout buffers in shared memory, instead of gathering the
full tensor over the TP group first. This module knows where each shard's elements go in
the HF tensors, per kind of :mod:`megatron_brrm.model.mapping` (the layout is the one of
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

Writing every rank's shard of a tensor reproduces ``mapping.to_hf(name, gather(shards))``
bit for bit (pure element copies, any dtype); ``tests/model/test_shard_layout.py`` proves
it against the registry's own ``to_megatron`` / ``shard`` round trip.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch

from megatron_brrm.model.mapping import ArchMapping, MappingError

Tensor = torch.Tensor


def _check_shape(what: str, tensor: Tensor, expected) -> None:
    if tuple(tensor.shape) != tuple(expected):
        raise MappingError(f"{what}: shape {tuple(tensor.shape)} does not match the expected {tuple(expected)}")


def shard_destination(mapping: ArchMapping, megatron_name: str, tp_rank: int, tp_size: int,
                      hf_views: Mapping[str, Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """The part of ``hf_views`` that TP rank ``tp_rank``'s shard of ``megatron_name`` fills
    exactly, element for element, as one contiguous tensor of the shard's shape and ``dtype``;
    else None. A receiver can then land the shard there directly (no copy afterwards), and
    :func:`write_shard_into_hf` of that tensor into the same views is an identity.

    Direct: ``replicated`` (TP rank 0), ``row`` at TP=1, and a ``vocab`` shard without padding
    rows (a block of whole rows). Never: ``qkv`` and ``gated`` (split over several HF tensors or
    interleaved), a tied output layer, a name missing from ``hf_views``, another dtype.
    """
    kind = mapping.kind(megatron_name)
    if megatron_name.endswith("output_layer.weight") and mapping.tied:
        return None
    names = mapping.hf_names_for(megatron_name)
    if len(names) != 1 or names[0] not in hf_views:
        return None
    view = hf_views[names[0]]
    shape = tuple(mapping.shard_shape(megatron_name, tp_size))
    if view.dtype != dtype:
        return None
    if kind == "replicated" and tp_rank == 0:
        out = view
    elif kind == "row" and tp_size == 1:
        out = view
    elif kind == "vocab":
        lo, hi = tp_rank * shape[0], (tp_rank + 1) * shape[0]
        if hi > mapping.vocab_size:
            return None
        out = view[lo:hi]
    else:
        return None
    return out if tuple(out.shape) == shape and out.is_contiguous() else None


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
    if not 0 <= tp_rank < tp_size:
        raise MappingError(f"tp_rank={tp_rank} outside 0..{tp_size - 1}")
    kind = mapping.kind(megatron_name)
    _check_shape(f"{megatron_name} (TP rank {tp_rank} of {tp_size})", shard,
                 mapping.shard_shape(megatron_name, tp_size))
    if megatron_name.endswith("output_layer.weight") and mapping.tied:
        return {}
    names = mapping.hf_names_for(megatron_name)
    targets = {n: hf_views[n] for n in names if n in hf_views}
    for n, t in targets.items():
        _check_shape(n, t, mapping.hf_shape(n))
    written: Dict[str, int] = {}
    if not targets:
        return written
    if kind == "replicated":
        if tp_rank == 0:
            (name,) = names
            targets[name].copy_(shard)
            written[name] = shard.numel()
        return written
    if kind == "vocab":
        rows = shard.shape[0]
        lo, hi = tp_rank * rows, min((tp_rank + 1) * rows, mapping.vocab_size)
        if lo < hi:
            (name,) = names
            targets[name][lo:hi].copy_(shard[: hi - lo])
            written[name] = (hi - lo) * shard.shape[1]
        return written
    if kind == "row":
        (name,) = names
        cols = shard.shape[1]
        targets[name][:, tp_rank * cols:(tp_rank + 1) * cols].copy_(shard)
        written[name] = shard.numel()
        return written
    if kind == "gated":
        per = shard.shape[0] // 2
        for half, name in enumerate(names):  # [gate_r; up_r]
            if name in targets:
                targets[name][tp_rank * per:(tp_rank + 1) * per].copy_(shard[half * per:(half + 1) * per])
                written[name] = per * shard.shape[1]
        return written
    if kind == "qkv":
        g, d, hidden = mapping.num_query_groups, mapping.head_dim, mapping.hidden_size
        if g % tp_size:
            raise MappingError(f"{megatron_name}: {g} query groups cannot be split over TP={tp_size}")
        per, local = mapping.num_heads // g, g // tp_size
        g0, g1 = tp_rank * local, (tp_rank + 1) * local
        grouped = shard.reshape(local, per + 2, d, hidden)
        q_name, k_name, v_name = names
        if q_name in targets:
            targets[q_name].view(g, per, d, hidden)[g0:g1].copy_(grouped[:, :per])
            written[q_name] = local * per * d * hidden
        for name, j in ((k_name, per), (v_name, per + 1)):
            if name in targets:
                targets[name].view(g, d, hidden)[g0:g1].copy_(grouped[:, j])
                written[name] = local * d * hidden
        return written
    raise MappingError(f"{megatron_name}: unsupported kind {kind!r}")  # pragma: no cover - KINDS is closed
