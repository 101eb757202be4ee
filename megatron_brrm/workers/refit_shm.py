"""Same-node refit from the policy ranks: the plan, the ranks' writes, and engine weights in shared memory.

The CPU / same-node analog of NeMo-RL's CUDA-IPC refit (its ``ipc`` weight update: the
policy workers expose their tensors through IPC handles and the colocated vLLM workers
copy them into their weights). The bytes travel through files in ``/dev/shm``; the file,
layout and mapping primitives are in :mod:`megatron_brrm.rollout.shm` (receivers need only
those), the policy side is here:

1. :func:`build_refit_plan` packs the model's HF tensors, in
   :meth:`~megatron_brrm.model.mapping.ArchMapping.hf_param_names` order, into buckets of
   at most ``bucket_bytes`` bytes, each entry at a 64-byte-aligned byte offset. The tensors
   of one fused module (:func:`megatron_brrm.rollout.refit.fused_module_key`: q/k/v, gate/up)
   always share a bucket: vLLM reloads a module from the tensors of one load call and would
   corrupt a module split over two. A group larger than the budget travels alone. A tied
   ``lm_head`` is not sent (HF ties it).
2. **Buckets** (any engine): the driver creates two
   :class:`~megatron_brrm.rollout.shm.SharedBuffers`; every policy rank writes its own TP
   shards straight into their HF-layout place in one buffer (:func:`write_bucket_shards`,
   :func:`megatron_brrm.model.shard_layout.write_shard_into_hf`: no gather, no collective)
   while the engines load the previous one (``GenerationEngine.load_shm_bucket``: the HF
   engine copies from views of the file, a vLLM engine hands the file to its workers), driven
   by :mod:`megatron_brrm.workers.refit`. Two copies of the model's bytes per refit;
   extra memory: two buckets of shared memory (``2 * plan.buffer_bytes``).
3. **Direct** (engines that declare ``abilities.shares_weights``: the HF engine on CPU):
   :class:`SharedModuleWeights` moves the engine's parameters into one shared-memory file
   once (the same memory, not an extra copy), and the ranks then write their shards straight
   into the engine's weights: one copy per refit, no buffers. Two copies of the model's bytes
   cannot beat half the speed of one plain copy on a memory-bandwidth-bound CPU node; one copy
   can (``tools/bench/refit.py``).
"""
from __future__ import annotations

import atexit
import logging
import math
import os
import time
import weakref
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from megatron_brrm.model.mapping import global_to_local_layer
from megatron_brrm.model.shard_layout import shard_pieces, write_shard_into_hf
from megatron_brrm.rollout.refit import fused_module_key
from megatron_brrm.rollout.shm import (BucketEntry, align_up, bucket_views, create_file, dtype_name, file_name,
                                       layout_entries, mmap_file, remove_file, remove_stale_files, shm_free_bytes)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefitPlan:
    """Buckets of :class:`~megatron_brrm.rollout.shm.BucketEntry`; ``buffer_bytes`` = the largest
    bucket's extent in bytes."""

    buckets: Tuple[Tuple[BucketEntry, ...], ...]
    buffer_bytes: int

    @property
    def num_tensors(self) -> int:
        return sum(len(b) for b in self.buckets)

    @property
    def num_bytes(self) -> int:
        return sum(e.nbytes for b in self.buckets for e in b)


def build_refit_plan(mapping, dtypes: Mapping[str, str], bucket_bytes: int) -> RefitPlan:
    """Deterministic bucket plan for the model described by ``mapping``.

    Args:
        mapping: the trainer's :class:`~megatron_brrm.model.mapping.ArchMapping`.
        dtypes: ``{global Megatron name: torch dtype name}`` of every parameter (merged over
            the pipeline stages).
        bucket_bytes: bucket budget in bytes (``rollout.refit_bucket_size_mb * 2**20``); the
            aligned extent of a bucket stays within it unless a single fused module's tensors
            (see the module docstring) are larger.

    Raises:
        ValueError: ``bucket_bytes`` < 1, or the tensors of one fused module are not consecutive
            in the mapping's order (they could not share a bucket).
        KeyError: a Megatron tensor missing from ``dtypes`` (no pipeline stage holds it).
    """
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    groups: List[Tuple[str, List[Tuple[str, Tuple[int, ...], str]]]] = []
    for megatron_name in mapping.megatron_param_names():
        if megatron_name.endswith("output_layer.weight") and mapping.tied:
            continue
        if megatron_name not in dtypes:
            raise KeyError(f"refit plan: no pipeline stage reported the tensor {megatron_name}")
        dtype = dtypes[megatron_name].split(".")[-1]
        for hf_name in mapping.hf_names_for(megatron_name):
            key = fused_module_key(hf_name)
            if not groups or groups[-1][0] != key:
                if any(k == key for k, _ in groups):
                    raise ValueError(f"refit plan: the tensors of module {key} are not consecutive in the mapping's "
                                     "order, so they cannot share a bucket")
                groups.append((key, []))
            groups[-1][1].append((hf_name, tuple(mapping.hf_shape(hf_name)), dtype))
    buckets: List[Tuple[BucketEntry, ...]] = []
    current: List[BucketEntry] = []
    for _, specs in groups:
        entries = layout_after(current, specs)
        if current and entries[-1].end > bucket_bytes:
            buckets.append(tuple(current))
            current, entries = [], layout_after([], specs)
        current += entries
    if current:
        buckets.append(tuple(current))
    extent = max((b[-1].end for b in buckets), default=0)
    return RefitPlan(tuple(buckets), align_up(max(extent, 1)))


def layout_after(entries: Sequence[BucketEntry], specs) -> List[BucketEntry]:
    """``layout_entries(specs)`` placed after the last of ``entries`` (from byte 0 when empty)."""
    return layout_entries(specs, start=entries[-1].end if entries else 0)


# ---------------------------------------------------------------- engine weights in shared memory
def _unshareable(params: Mapping[str, torch.Tensor], names: Sequence[str]) -> Tuple[List[str], List[str]]:
    """``(names that are not parameters, names whose parameter is not a contiguous CPU tensor)``."""
    missing = [n for n in names if n not in params]
    bad = [n for n in names if n in params and (params[n].device.type != "cpu" or not params[n].is_contiguous())]
    return missing, bad


class SharedModuleWeights:
    """A torch module's parameters moved into one shared-memory file, so that the policy ranks
    write their shards straight into the engine's weights (one copy per refit instead of two).

    Each parameter named in ``names`` gets a 64-byte-aligned slot in the file; its values are
    copied there and ``param.data`` becomes a view of the slot (same ``Parameter`` object, so
    tied weights and references stay valid). The file has the size of those parameters (it
    replaces their private memory, it is not an extra copy). The driver removes the file's
    name (:meth:`close`) as soon as the policy ranks have mapped it, so the memory lives
    exactly as long as the processes that map it; an unmapped file is also removed at
    interpreter exit and when the weights are shared again.

    Args:
        model: the engine's module (parameters on CPU, contiguous).
        names: parameter names (``named_parameters(remove_duplicate=False)`` names).

    Raises:
        ValueError: a name is not a parameter, or a parameter is not a contiguous CPU tensor.
        OSError: the file cannot be created (no room in :func:`shm_dir`).
    """

    def __init__(self, model: torch.nn.Module, names: Sequence[str]):
        params = dict(model.named_parameters(remove_duplicate=False))
        missing, bad = _unshareable(params, names)
        if missing:
            raise ValueError(f"cannot share the engine's weights: no parameter(s) {missing[:3]} in the model")
        if bad:
            raise ValueError(f"cannot share the engine's weights: {bad[:3]} are not contiguous CPU tensors")
        entries = layout_entries((n, params[n].shape, dtype_name(params[n].dtype)) for n in names)
        self.layout: Dict[str, Tuple[int, Tuple[int, ...], str]] = {e.hf_name: (e.offset, e.shape, e.dtype)
                                                                    for e in entries}
        self.nbytes = align_up(max(entries[-1].end if entries else 0, 1))
        remove_stale_files("/dev/shm")
        self.path = os.path.join("/dev/shm", file_name("weights"))
        self.linked = True
        atexit.register(self.close)
        try:
            create_file(self.path, self.nbytes)
            self._mm, buf = mmap_file(self.path, self.nbytes)
        except OSError as exc:
            self.close()
            raise OSError(exc.errno, f"refit: cannot put the engine's {self.nbytes / 2**20:.0f} MiB of weights in "
                                     f"/dev/shm ({exc.strerror})") from exc
        with torch.no_grad():
            for n, (offset, shape, dtype) in self.layout.items():
                p = params[n]
                view = buf[offset:offset + p.numel() * p.element_size()].view(p.dtype).view(shape)
                view.copy_(p.data)
                p.data = view
        self._params = {n: params[n] for n in names}
        self._ptrs = {n: params[n].data_ptr() for n in names}

    def valid(self, model: torch.nn.Module) -> bool:
        """True while ``model``'s parameters still live in this file (nobody replaced them)."""
        params = dict(model.named_parameters(remove_duplicate=False))
        return all(n in params and params[n].data_ptr() == ptr for n, ptr in self._ptrs.items())

    def info(self) -> Dict:
        """``{"path", "nbytes", "linked", "layout": {name: (byte offset, shape, dtype name)}}`` for the writers."""
        return {"path": self.path, "nbytes": self.nbytes, "linked": self.linked, "layout": dict(self.layout)}

    def close(self) -> None:
        """Remove the file's name (the weights stay valid: the mapping lives as long as the parameters)."""
        if self.linked:
            remove_file(self.path)
            self.linked = False
        atexit.unregister(self.close)


_SHARED: "weakref.WeakKeyDictionary[torch.nn.Module, SharedModuleWeights]" = weakref.WeakKeyDictionary()


def share_module_weights(model, names: Sequence[str], fresh: bool = False) -> Optional[SharedModuleWeights]:
    """The :class:`SharedModuleWeights` of ``model`` for ``names`` (made once; made again when
    stale, for other names, or with ``fresh=True``, e.g. for new ranks after the name was removed).

    Returns None when ``model`` is not a torch module with every name as a contiguous CPU
    parameter (e.g. a GPU or vLLM engine), or when ``/dev/shm`` has no room for the weights
    (logged): such engines load buckets instead.
    """
    if not isinstance(model, torch.nn.Module):
        return None
    params = dict(model.named_parameters(remove_duplicate=False))
    if any(_unshareable(params, names)):
        return None
    shared = _SHARED.get(model)
    if not fresh and shared is not None and list(shared.layout) == list(names) and shared.valid(model):
        return shared
    if shared is not None:
        shared.close()
    need = sum(params[n].numel() * params[n].element_size() for n in names)
    if shm_free_bytes() < need + (64 << 20):
        log.warning("refit: /dev/shm has %.0f MiB free, the engine's weights need %.0f MiB; loading buckets instead",
                    shm_free_bytes() / 2**20, need / 2**20)
        return None
    try:
        _SHARED[model] = shared = SharedModuleWeights(model, names)
    except OSError as exc:
        log.warning("%s; loading buckets instead", exc)
        return None
    return shared


def share_engine_weights(engine, names: Sequence[str], fresh: bool = False) -> Optional[Dict]:
    """:func:`share_module_weights` for a weight receiver (a generation engine) whose
    ``shares_weights`` is True (its ``model`` holds the weights in this process); returns the
    writers' ``info()``, or None when it cannot share (it then loads buckets)."""
    if not engine.shares_weights:
        return None
    shared = share_module_weights(engine.model, names, fresh=fresh)
    return None if shared is None else shared.info()


def seal_engine_weights(engine, num_tensors: int, num_bytes: int) -> bool:
    """:func:`seal_module_weights` for a generation engine's ``model``, after a direct refit
    wrote ``num_tensors`` tensors (``num_bytes`` bytes) into its shared weights: the engine's
    ``last_update_stats`` then reports that refit, as ``update_weights`` does for the others."""
    engine.last_update_stats = {"tensors": int(num_tensors), "bytes": int(num_bytes)}
    return seal_module_weights(engine.model)


def load_bucket(engines: Sequence, path: str, buffer_bytes: int, entries: Sequence[BucketEntry],
                num_threads: int = 1) -> int:
    """Load one bucket from the shared-memory file ``path`` into every engine of this process
    (``engine.load_shm_bucket``), with ``num_threads`` torch threads for the copies (restored
    afterwards).

    Returns:
        The bytes of the bucket (loaded into each engine).

    Raises:
        FileNotFoundError / ValueError: the buffer is missing or too small; KeyError /
        ValueError from an engine (unknown name, shape mismatch, a split fused module).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(num_threads)))
    try:
        for engine in engines:
            engine.load_shm_bucket(path, buffer_bytes, entries)
    finally:
        torch.set_num_threads(before)
    return int(sum(e.nbytes for e in entries))


def write_bucket_shards(local_params: Mapping[str, torch.Tensor], mapping, tp_rank: int, tp_size: int,
                        buffer: torch.Tensor, entries: Sequence[BucketEntry]) -> int:
    """Write this rank's shards of the bucket's tensors into ``buffer``; returns the bytes written.

    Args:
        local_params: ``{global Megatron name: parameter}`` of this rank
            (:func:`megatron_brrm.model.weights.local_global_params`); tensors of other
            pipeline stages are absent and skipped.
        mapping: the model's ``ArchMapping``.
        tp_rank, tp_size: this rank's TP layout.
        buffer: the mapped bucket buffer (uint8).
        entries: the bucket's :class:`~megatron_brrm.rollout.shm.BucketEntry` list (HF names).

    Raises:
        MappingError: an entry's name is not a tensor of ``mapping``'s architecture.
    """
    by_tensor: Dict[str, Dict[str, torch.Tensor]] = {}
    views = dict(bucket_views(buffer, entries))
    for e in entries:
        megatron_name = mapping.megatron_name_for_hf(e.hf_name)[0]
        if megatron_name in local_params:
            by_tensor.setdefault(megatron_name, {})[e.hf_name] = views[e.hf_name]
    written = 0
    for name, hf_views in by_tensor.items():
        shard = local_params[name].detach()
        for hf_name, count in write_shard_into_hf(mapping, name, shard, tp_rank, tp_size, hf_views).items():
            written += count * hf_views[hf_name].element_size()
    return written


def seal_module_weights(model) -> bool:
    """Remove the name of ``model``'s shared-weights file (see :class:`SharedModuleWeights`);
    returns whether ``model`` had one."""
    shared = _SHARED.get(model) if isinstance(model, torch.nn.Module) else None
    if shared is not None:
        shared.close()
    return shared is not None


def shard_ranks_needed(mapping, megatron_name: str, tp_size: int) -> List[int]:
    """TP ranks whose shards make up ``megatron_name`` in HF layout: all for a split tensor, rank 0 for a
    replicated one (the ranks hold equal copies), none for a tied ``output_layer`` (HF ties it)."""
    if megatron_name.endswith("output_layer.weight") and mapping.tied:
        return []
    return [0] if mapping.kind(megatron_name) == "replicated" else list(range(tp_size))


_RECEIVE_SCRATCH: Dict[torch.dtype, torch.Tensor] = {}


def receive_buffers(specs: Sequence[Tuple[Sequence[int], torch.dtype]], device: torch.device) -> List[torch.Tensor]:
    """Uninitialised, non-overlapping tensors of the ``(shape, dtype)`` in ``specs``, for the
    broadcasts of one refit call to land in at once (they are all in flight together).

    On CPU they are views of one grow-only flat buffer per dtype, kept for the process's life
    (sized by the largest call: the whole received part of the model on the direct path, one
    bucket's on the bucket path): a fresh ``torch.empty`` per shard pays first-touch page faults
    on every refit (a gloo broadcast of 1 GiB into fresh memory measured 0.81 s here, 0.28 s into
    touched memory). A caller uses the views only until its next call. On GPU they are plain
    allocations (the caching allocator already reuses memory, and a colocated engine needs the
    space back after refit).
    """
    if device.type != "cpu":
        return [torch.empty(tuple(shape), dtype=dtype, device=device) for shape, dtype in specs]
    sizes = [math.prod(int(d) for d in shape) for shape, _ in specs]
    need: Dict[torch.dtype, int] = {}
    for (_, dtype), numel in zip(specs, sizes):
        need[dtype] = need.get(dtype, 0) + numel
    for dtype, numel in need.items():
        flat = _RECEIVE_SCRATCH.get(dtype)
        if flat is None or flat.numel() < numel:
            _RECEIVE_SCRATCH[dtype] = None  # free the old one before the larger allocation
            _RECEIVE_SCRATCH[dtype] = torch.empty(numel, dtype=dtype)
    offset = dict.fromkeys(need, 0)
    out = []
    for (shape, dtype), numel in zip(specs, sizes):
        out.append(_RECEIVE_SCRATCH[dtype][offset[dtype]:offset[dtype] + numel].view(tuple(shape)))
        offset[dtype] += numel
    return out


def shared_layout(targets_by_node: Mapping[str, Sequence], nodes: Sequence[str]) -> Optional[List[BucketEntry]]:
    """The layout that every target file of every node in ``nodes`` has, or None.

    Args:
        targets_by_node: ``{node id: [(path, nbytes, entries), ...]}`` of one refit call.
        nodes: the route's engine nodes.

    Returns:
        The common ``entries`` list, or None when a node has no file in this call or two files are
        laid out differently (the same for every caller: it reads only its arguments).
    """
    layouts = []
    for node in nodes:
        files = targets_by_node.get(node) or []
        if not files:
            return None
        layouts += [list(entries) for _, _, entries in files]
    first = layouts[0] if layouts else None
    return first if first is not None and all(lay == first for lay in layouts[1:]) else None


def relay_ranges(mapping, route, layout: Optional[Sequence[BucketEntry]], hf_names: Sequence[str],
                 vp_size: Optional[int] = None) -> Optional[Dict[Tuple[int, int], Tuple[int, int]]]:
    """Byte ranges ``[lo, hi)`` of the target layout that a *relay* refit sends whole, per pipeline stage.

    A relay applies when each stage that crosses is written completely on one node before it
    crosses: the sources of all its TP shards' groups (:meth:`~.refit_route.RefitRoute.stage_sources`)
    are that node's writers of those shards, the node hosts engines, every shard goes to the same
    receivers, every node's files share ``layout``, and the stage's tensors of this call fill one
    contiguous range of ``layout`` (HF order keeps a pipeline stage's layers together; virtual
    pipeline stages do not). The stage's writers then write it into their node's file as usual,
    sync (a barrier over them at TP > 1), and the TP-0 source broadcasts those bytes as **one**
    message over the ``(stage, 0)`` group into the same range of every receiver's file: no
    per-piece messages (gloo over TCP spends markedly more CPU per byte on many mid-sized messages
    than on one large one: ``tools/bench/refit.py``).

    Every rank gets the same answer (it depends only on the arguments, equal on every rank), so
    the ranks agree on which collectives to issue.

    Args:
        mapping: the model's ``ArchMapping``; ``route``: the :class:`~.refit_route.RefitRoute`.
        layout: :func:`shared_layout` of this call (None: no relay).
        hf_names: the HF tensors of this call.
        vp_size: virtual pipeline size.

    Returns:
        ``{(stage, 0): (lo, hi)}`` (stages with no tensor in this call are absent), or None when
        any stage cannot be relayed (the caller then sends per shard piece).
    """
    if layout is None or not route.groups:
        return None
    by_name = {e.hf_name: e for e in layout}
    if any(n not in by_name for n in hf_names):
        return None
    stage_of = {n: global_to_local_layer(mapping.megatron_name_for_hf(n)[0], route.pp_size, mapping.num_layers,
                                         vp_size)[0] for n in hf_names}
    ranges = {}
    for stage in sorted({g.key[0] for g in route.groups}):
        groups = [route.group_for((stage, t)) for t in range(route.tp_size)]
        if any(g is None for g in groups):
            return None
        node = route.node_of[groups[0].source]
        if node not in route.nodes or any(route.node_of[g.source] != node or g.receivers != groups[0].receivers
                                          or route.writers.get((node, stage, t)) != g.source
                                          for t, g in enumerate(groups)):
            return None
        mine = [by_name[n] for n in hf_names if stage_of[n] == stage]
        if not mine:
            continue
        lo, hi = min(e.offset for e in mine), max(e.end for e in mine)
        if any(e.offset < hi and e.end > lo and stage_of.get(e.hf_name) != stage for e in layout):
            return None
        ranges[(stage, 0)] = (lo, hi)
    return ranges


@torch.no_grad()
def write_routed_shards(local_params: Mapping[str, torch.Tensor], mapping, route, rank: int, tp_rank: int,
                        groups: Mapping, dtypes: Mapping[str, str], targets: Sequence[Mapping[str, torch.Tensor]],
                        hf_names: Sequence[str], vp_size: Optional[int] = None,
                        buffers: Sequence[torch.Tensor] = (), layout: Optional[Sequence[BucketEntry]] = None,
                        writer_groups: Optional[Mapping[int, object]] = None) -> Dict[str, float]:
    """This rank's part of a node-aware refit of the tensors ``hf_names`` (see :mod:`.refit_route`).

    For each Megatron tensor behind ``hf_names`` (in order) and each TP shard it needs: the rank
    that ``route`` makes the shard's local writer on this node writes it into every target; a
    shard some node lacks crosses over the shard's broadcast group. Every rank of the policy calls
    this with the same arguments but its own ``targets`` / ``buffers``, in step (the broadcasts are
    collectives; each rank issues its part in the same global order, so they cannot deadlock).

    What crosses, two ways:

    * **relay** (:func:`relay_ranges` applies: each crossing stage written whole on one node,
      identical file layouts everywhere): the stage's writers write it into their node's first
      target (then meet at a barrier over ``writer_groups[stage]`` when there are several, TP > 1),
      and its TP-0 source broadcasts that byte range as one message straight into the same range
      of each receiver's first target; receivers copy the range into their other targets. The
      receive is posted before the local writes, the send right after them, so both directions
      travel together.
    * **per piece** (any layout): a shard travels as its
      :func:`~megatron_brrm.model.shard_layout.shard_pieces` (blocks of whole rows of one HF
      tensor each: q/k/v per query group, gate and up, the vocab rows without padding), one
      broadcast per piece, sent from the parameter itself and received straight into its place in
      the first target: no copy on either side. A piece whose place is missing there (or has
      another dtype), and a row-parallel shard at TP > 1 (a column slice), land in scratch and are
      copied out. Every broadcast is issued at once (``async_op``), before this rank's local
      writes; each received piece is written out as soon as its broadcast completes, in issue order.

    Args:
        local_params: ``{global Megatron name: parameter}`` of this rank.
        mapping: the model's ``ArchMapping``.
        route: the :class:`~megatron_brrm.workers.refit_route.RefitRoute`.
        rank: this rank's global rank; ``tp_rank``: its TP rank.
        groups: ``{shard key: process group}`` built from ``route.groups`` on every rank.
        dtypes: ``{global Megatron name: torch dtype name}`` of every tensor (receivers allocate with it).
        targets: this node's buffers as ``{hf_name: view}`` dicts (bucket files or engines' own
            shared weights); a target without a name skips it.
        hf_names: the HF tensors of this call (a bucket, or the whole model).
        vp_size: virtual pipeline size.
        buffers: the flat uint8 buffers behind ``targets`` (same order), for the relay.
        layout: :func:`shared_layout` of this call (None: no relay).
        writer_groups: ``{stage: process group of route.stage_sources(stage)}`` for the stages
            with several sources (TP > 1), built on every rank; needed for a relay at TP > 1.

    Returns:
        ``{"bytes": bytes written here, "comm_s": seconds issuing and waiting for broadcasts,
        "write_s": seconds copying, "relay": number of ranges this rank relayed (sent or received)}``.
    """
    node = route.node_of[rank]
    out = {"bytes": 0, "comm_s": 0.0, "write_s": 0.0, "relay": 0}
    shards = []  # (name, shard index, stage) of every TP shard of this call, in global order
    for name in dict.fromkeys(mapping.megatron_name_for_hf(n)[0] for n in hf_names):
        stage = global_to_local_layer(name, route.pp_size, mapping.num_layers, vp_size)[0]
        shards += [(name, t, stage) for t in shard_ranks_needed(mapping, name, route.tp_size)]
    local = [(name, t, local_params[name].detach())  # the shards this rank writes on its node
             for name, t, stage in shards if route.writers.get((node, stage, t)) == rank]

    def write(name: str, t: int, data: torch.Tensor, into: Sequence[Mapping[str, torch.Tensor]],
              piece=None) -> None:
        """Write ``data`` (TP shard ``t`` of ``name``, or only ``piece``'s rows of it) into every target of ``into``."""
        t0 = time.perf_counter()
        data = data.cpu() if data.is_cuda else data
        for views in into:
            counts = (write_shard_into_hf(mapping, name, data, t, route.tp_size, views) if piece is None
                      else piece.write(data, views))
            for hf_name, count in counts.items():
                out["bytes"] += count * views[hf_name].element_size()
        out["write_s"] += time.perf_counter() - t0

    ranges = relay_ranges(mapping, route, layout, hf_names, vp_size)
    if ranges is not None:
        _relay(rank, route, groups, writer_groups or {}, ranges, layout, targets, buffers, local, write, out)
    else:
        _send_pieces(local_params, mapping, route, rank, groups, dtypes, targets, shards, local, write, out)
    return out


def _relay(rank: int, route, groups: Mapping, writer_groups: Mapping, ranges: Mapping, layout: Sequence[BucketEntry],
           targets: Sequence[Mapping[str, torch.Tensor]], buffers: Sequence[torch.Tensor], local: Sequence, write,
           out: Dict) -> None:
    """The relay of :func:`write_routed_shards`: post receives, write locally, sync the stage's
    writers, send the written ranges."""
    def issue(g, lo: int, hi: int):
        t0 = time.perf_counter()
        work = torch.distributed.broadcast(buffers[0][lo:hi], src=g.source, group=groups[g.key], async_op=True)
        out["comm_s"] += time.perf_counter() - t0
        out["relay"] += 1
        return work

    relays = [(route.group_for(key), *ranges[key]) for key in sorted(ranges)]
    mine = [(g, lo, hi) for g, lo, hi in relays if rank in g.ranks]
    received = [(issue(g, lo, hi), lo, hi) for g, lo, hi in mine if rank != g.source]
    for name, t, shard in local:
        write(name, t, shard, targets)
    for g, _, _ in relays:  # the stage's other TP shards are written on this node too before it leaves
        writers = route.stage_sources(g.key[0])
        if len(writers) > 1 and rank in writers:
            t0 = time.perf_counter()
            torch.distributed.barrier(group=writer_groups[g.key[0]])
            out["comm_s"] += time.perf_counter() - t0
    sent = [issue(g, lo, hi) for g, lo, hi in mine if rank == g.source]  # after the local writes filled them
    t0 = time.perf_counter()
    for work in sent:
        work.wait()
    for work, lo, hi in received:
        work.wait()
    out["comm_s"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    for work, lo, hi in received:
        for buffer in buffers[1:]:
            buffer[lo:hi].copy_(buffers[0][lo:hi])
        out["bytes"] += len(buffers) * sum(e.nbytes for e in layout if lo <= e.offset < hi)
    out["write_s"] += time.perf_counter() - t0


def _send_pieces(local_params: Mapping[str, torch.Tensor], mapping, route, rank: int, groups: Mapping,
                 dtypes: Mapping[str, str], targets: Sequence[Mapping[str, torch.Tensor]], shards: Sequence,
                 local: Sequence, write, out: Dict) -> None:
    """The per-piece path of :func:`write_routed_shards` (``shards``: its ``(name, shard index, stage)`` list)."""
    device = next(iter(local_params.values())).device if local_params else torch.device("cpu")
    comm = []  # (name, shard index, stage, group, piece or None = the whole shard), in global order
    for name, t, stage in shards:
        group = route.group_for((stage, t))
        if group is not None and rank in group.ranks:
            pieces = shard_pieces(mapping, name, t, route.tp_size)
            comm += [(name, t, stage, group, piece) for piece in (pieces if pieces is not None else [None])]
    t0 = time.perf_counter()
    # where each received piece lands: its place in the first target when it has one (direct), else scratch
    dest: Dict[int, torch.Tensor] = {}
    scratch = []
    for i, (name, t, _, group, piece) in enumerate(comm):
        if rank == group.source:
            continue
        dtype = getattr(torch, dtypes[name].split(".")[-1])
        if piece is not None and targets and device.type == "cpu" and piece.hf_name in targets[0]:
            view = piece.of_hf(targets[0][piece.hf_name])
            if view.dtype == dtype and view.is_contiguous():
                dest[i] = view
                continue
        shape = tuple(mapping.shard_shape(name, route.tp_size))
        scratch.append((i, ((piece.rows, *shape[1:]) if piece is not None else shape, dtype)))
    direct = set(dest)
    dest.update(zip((i for i, _ in scratch), receive_buffers([spec for _, spec in scratch], device)))
    in_flight, keep = [], []
    for i, (name, t, stage, group, piece) in enumerate(comm):
        if rank == group.source:
            tensor = local_params[name].detach()
            tensor = (piece.of_shard(tensor) if piece is not None else tensor).contiguous()
            keep.append(tensor)  # alive until its broadcast completes
            in_flight.append((torch.distributed.broadcast(tensor, src=rank, group=groups[(stage, t)], async_op=True),
                              None))
        else:
            in_flight.append((torch.distributed.broadcast(dest[i], src=group.source, group=groups[(stage, t)],
                                                          async_op=True), i))
    out["comm_s"] += time.perf_counter() - t0
    for name, t, shard in local:  # while the broadcasts travel
        write(name, t, shard, targets)
    for work, i in in_flight:
        t0 = time.perf_counter()
        work.wait()
        out["comm_s"] += time.perf_counter() - t0
        if i is None:
            continue
        name, t, _, _, piece = comm[i]
        if i in direct:  # already in place in the first target: count it, copy it to the others
            out["bytes"] += dest[i].numel() * dest[i].element_size()
            write(name, t, dest[i], targets[1:], piece)
        else:
            write(name, t, dest[i], targets, piece)
