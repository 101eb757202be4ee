"""Move weights between HF tensors and this rank's Megatron model chunks, via ``mapping``.

:func:`load_hf_weights_into_megatron` fills a rank's chunks from HF tensors (a dict or a
lazy getter such as a ``safetensors`` ``safe_open`` handle's ``get_tensor``), building each
full Megatron tensor and keeping only this rank's TP shard. :func:`iter_megatron_to_hf`
streams the whole model back as ``(hf_name, full_tensor)``: all-gather over the TP group,
:meth:`ArchMapping.to_hf`, then a broadcast from the owning pipeline stage over the PP
group, one Megatron tensor at a time (memory bounded by the largest tensor). Both are
collective-free for TP=PP=1 and work on gloo and NCCL.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import torch

from megatron_brrm.model.mapping import ArchMapping, MappingError, global_to_local_layer, local_to_global_layer

Tensor = torch.Tensor
HFSource = Union[Mapping[str, Tensor], Callable[[str], Tensor]]


def _layout(tp_rank, tp_size, pp_rank, pp_size) -> Tuple[int, int, int, int]:
    if None in (tp_rank, tp_size, pp_rank, pp_size):
        from megatron.core import parallel_state as mpu  # lazy: keeps train --help fast

        tp_rank = mpu.get_tensor_model_parallel_rank() if tp_rank is None else tp_rank
        tp_size = mpu.get_tensor_model_parallel_world_size() if tp_size is None else tp_size
        pp_rank = mpu.get_pipeline_model_parallel_rank() if pp_rank is None else pp_rank
        pp_size = mpu.get_pipeline_model_parallel_world_size() if pp_size is None else pp_size
    return tp_rank, tp_size, pp_rank, pp_size


def _chunks(model_chunks) -> List[torch.nn.Module]:
    return list(model_chunks) if isinstance(model_chunks, (list, tuple)) else [model_chunks]


def local_global_params(model_chunks, mapping: ArchMapping, pp_rank: int, pp_size: int,
                        vp_size: Optional[int] = None) -> Dict[str, Tensor]:
    """``{global Megatron name: parameter}`` for this rank's chunks (wrapper prefixes removed).

    With VPP, chunk ``k`` of ``model_chunks`` is virtual stage ``k``.

    Raises:
        MappingError: a parameter the mapping does not know, or a chunk count != ``vp_size``.
    """
    chunks = _chunks(model_chunks)
    if vp_size is not None and len(chunks) != vp_size:
        raise MappingError(f"got {len(chunks)} model chunks but virtual_pipeline_model_parallel_size={vp_size}")
    out: Dict[str, Tensor] = {}
    for k, chunk in enumerate(chunks):
        vp_stage = k if vp_size is not None else None
        for local, param in chunk.named_parameters():
            name = local_to_global_layer(local, pp_rank, pp_size, mapping.num_layers, vp_stage, vp_size)
            mapping.kind(name)  # raises for an unknown tensor
            out[name] = param
    return out


@torch.no_grad()
def load_hf_weights_into_megatron(model_chunks, hf_weights: HFSource, mapping: ArchMapping, *,
                                  tp_rank: Optional[int] = None, tp_size: Optional[int] = None,
                                  pp_rank: Optional[int] = None, pp_size: Optional[int] = None,
                                  vp_size: Optional[int] = None) -> List[str]:
    """Copy HF weights into this rank's Megatron parameters (its TP shard of each tensor).

    Args:
        model_chunks: a ``GPTModel`` (possibly wrapped by DDP / Float16Module) or the list of
            this rank's virtual-pipeline chunks.
        hf_weights: ``{hf_name: tensor}`` or a callable ``hf_name -> tensor`` (lazy reads).
        mapping: from :func:`megatron_brrm.model.mapping.get_mapping`, with the model's
            padded vocab (``tp_size`` / ``make_vocab_size_divisible_by`` of the build).
        tp_rank, tp_size, pp_rank, pp_size: layout; default: Megatron's parallel state.
        vp_size: virtual pipeline size (None without VPP).

    Returns:
        The HF names read, in load order.

    Raises:
        MappingError: an HF tensor is missing or mis-shaped, or a shard does not match the
            parameter's shape (the message names the tensor).
    """
    tp_rank, tp_size, pp_rank, pp_size = _layout(tp_rank, tp_size, pp_rank, pp_size)
    get = hf_weights.__getitem__ if isinstance(hf_weights, Mapping) else hf_weights
    read: List[str] = []
    for name, param in local_global_params(model_chunks, mapping, pp_rank, pp_size, vp_size).items():
        tensors = {}
        for hf_name in mapping.hf_names_for(name):
            try:
                tensors[hf_name] = get(hf_name)
            except KeyError:
                raise MappingError(f"{name}: HF tensor {hf_name} not found in the HF checkpoint") from None
            read.append(hf_name)
        shard = mapping.shard(name, mapping.to_megatron(name, tensors), tp_rank, tp_size)
        if tuple(shard.shape) != tuple(param.shape):
            raise MappingError(f"{name}: TP shard {tuple(shard.shape)} does not match the model parameter "
                               f"{tuple(param.shape)} (TP={tp_size}); was the model built for this config?")
        param.data.copy_(shard.to(dtype=param.dtype, device=param.device))
    return read


@torch.no_grad()
def iter_megatron_to_hf(model_chunks, mapping: ArchMapping, *, vp_size: Optional[int] = None,
                        tp_group=None, pp_group=None, dst: Optional[int] = None) -> Iterator[Tuple[str, Tensor]]:
    """Yield ``(hf_name, full tensor)`` for the whole model (collective).

    Every rank of the job must call it and consume it fully, in step: tensors are gathered
    over the TP group and, by default, broadcast from their pipeline stage over the PP group,
    so every rank yields every tensor. With ``dst`` (a global rank) only that rank needs them:
    another stage's tensors travel point to point from that stage's rank in ``dst``'s PP group
    to ``dst``, nothing goes to other stages, and the ranks yield only what they hold (``dst``
    yields the whole model). Order: :meth:`ArchMapping.megatron_param_names`. Tensors keep the
    parameters' dtype and device (a tied ``lm_head`` is not emitted: HF ties it).

    Args:
        model_chunks: this rank's model (chunks with VPP).
        mapping: the model's :class:`ArchMapping`.
        vp_size: virtual pipeline size.
        tp_group / pp_group: process groups; default Megatron's.
        dst: the only global rank that needs every tensor (None: all ranks).
    """
    from megatron.core import parallel_state as mpu  # lazy: keeps train --help fast

    tp_group = tp_group if tp_group is not None else mpu.get_tensor_model_parallel_group()
    pp_group = pp_group if pp_group is not None else mpu.get_pipeline_model_parallel_group()
    tp_size, pp_size = torch.distributed.get_world_size(tp_group), torch.distributed.get_world_size(pp_group)
    pp_rank = torch.distributed.get_rank(pp_group)
    local = local_global_params(model_chunks, mapping, pp_rank, pp_size, vp_size)
    if pp_size > 1:  # every stage learns the dtype of every tensor (it allocates broadcast buffers)
        mine = {n: str(p.dtype) for n, p in local.items()}
        stages: List[Any] = [None] * pp_size
        torch.distributed.all_gather_object(stages, mine, group=pp_group)
        merged = {k: v for s in stages for k, v in s.items()}
    else:
        merged = {n: str(p.dtype) for n, p in local.items()}
    device = next(iter(local.values())).device if local else torch.device("cpu")
    members = torch.distributed.get_process_group_ranks(pp_group) if (dst is not None and pp_size > 1) else []
    for name in mapping.megatron_param_names():
        owner, _, _ = global_to_local_layer(name, pp_size, mapping.num_layers, vp_size)
        if name not in merged:
            raise MappingError(f"{name}: no pipeline stage holds this tensor")
        dtype = getattr(torch, merged[name].split(".")[-1])
        if owner == pp_rank:
            if name not in local:
                raise MappingError(f"{name}: expected on pipeline stage {pp_rank} but the model has no such parameter")
            shard = local[name].detach()
            if tp_size > 1 and mapping.tp_split_axis(name) is not None:
                parts = [torch.empty_like(shard) for _ in range(tp_size)]
                torch.distributed.all_gather(parts, shard.contiguous(), group=tp_group)
                full = mapping.gather(name, parts)
            else:
                full = shard.clone()
            hf = mapping.to_hf(name, full)
        else:
            hf = {n: torch.empty(mapping.hf_shape(n), dtype=dtype, device=device) for n in mapping.hf_names_for(name)}
        if pp_size > 1:
            src = torch.distributed.get_global_rank(pp_group, owner)
            if dst is None:
                for t in hf.values():
                    torch.distributed.broadcast(t, src=src, group=pp_group)
            elif src != dst and dst in members:  # p2p inside dst's PP group only
                me = torch.distributed.get_rank()
                if me not in (src, dst):
                    continue
                for t in hf.values():
                    if me == src:
                        torch.distributed.send(t.contiguous(), dst=dst)
                    else:
                        torch.distributed.recv(t, src=src)
                if me == src:
                    continue
            elif owner != pp_rank:
                continue
        yield from hf.items()


def megatron_state_to_hf(model_chunks, mapping: ArchMapping, *, vp_size: Optional[int] = None,
                         to_cpu: bool = True) -> Dict[str, Tensor]:
    """The whole model as an HF state dict ``{hf_name: full tensor}`` on every rank (collective).

    Materialises every tensor: for tests and small models; stream with
    :func:`iter_megatron_to_hf` otherwise.
    """
    out: Dict[str, Tensor] = {}
    for name, tensor in iter_megatron_to_hf(model_chunks, mapping, vp_size=vp_size):
        out[name] = tensor.cpu() if to_cpu else tensor
    return out
