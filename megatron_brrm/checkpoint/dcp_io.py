"""Single-process, bounded-memory io of Megatron ``dist_checkpointing`` (torch_dist) folders.

A torch_dist checkpoint (``megatron.core.dist_checkpointing.save`` with the default
``TorchDistSaveShardedStrategy``) is a PyTorch Distributed Checkpoint (DCP) folder:

- ``.metadata``: pickled ``torch.distributed.checkpoint.Metadata`` -- for every
  ShardedTensor *key* the global shape, dtype and the chunks stored, and where each chunk's
  bytes live (``__<rank>_<n>.distcp`` file, offset, length);
- ``__*.distcp``: the chunk bytes (one ``torch.save`` record per chunk);
- ``common.pt``: the non-sharded part of the state dict (``torch.save``);
- ``metadata.json``: ``{"sharded_backend": "torch_dist", ...}`` (marks a finished save).

Keys are layout-independent: a transformer layer's tensors share one key
(``decoder.layers.self_attention.linear_qkv.weight``) with a leading layer axis, and TP
shards are chunks of the global tensor, so a checkpoint saved at one TP/PP loads at any.

:func:`write_dist_checkpoint` writes such a folder from one process *without holding the
model*: it takes the ShardedTensors of a model built on the ``meta`` device (keys, global
shapes, offsets, dtypes, no data) and a callback that produces each chunk's data when DCP's
``FileSystemWriter`` asks for it (``SavePlanner.resolve_data``), one chunk at a time. The
save plan and the key translation are Megatron's own (``_replace_state_dict_keys_with_sharded_keys``,
``mcore_to_pyt_state_dict``, ``MCoreSavePlanner``), so the result is what
``dist_checkpointing.save`` writes. :func:`load_tensors` reads selected global tensors (or one
layer's slice of a stacked key) with ``dist_checkpointing.load``; DCP reads only the chunks
that overlap the request.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

COMMON_NAME = "common.pt"
DCP_METADATA_NAME = ".metadata"
MCORE_METADATA_NAME = "metadata.json"

@contextmanager
def unwrap_dcp_errors() -> Iterator[None]:
    """Re-raise the original error from inside torch DCP instead of its ``CheckpointException``.

    DCP wraps every failure of a save/load step in ``CheckpointException``, a ``BaseException``
    (not an ``Exception``) whose message is a formatted traceback. The first rank's original
    exception (e.g. a :class:`ConversionError` from a chunk resolver) is raised instead.
    """
    from torch.distributed.checkpoint.api import CheckpointException  # lazy: keeps train_bt --help fast

    try:
        yield
    except CheckpointException as exc:
        failures = exc.failures
        if not failures:
            raise
        inner = failures[min(failures)][0]
        raise inner from None


# Chunk request: (key, global offset incl. prepended axes, chunk sizes, dtype) -> tensor of those sizes.
ChunkResolver = Callable[[str, Tuple[int, ...], Tuple[int, ...], torch.dtype], torch.Tensor]


class DistCheckpointError(ValueError):
    """A Megatron distributed checkpoint is missing, incomplete or not torch_dist."""


def is_dist_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a finished dist_checkpointing folder (has ``metadata.json``)."""
    return (Path(path) / MCORE_METADATA_NAME).is_file()


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """The dist checkpoint folder a user means by ``path``.

    Accepts the checkpoint folder itself, a training ``save_dir`` whose ``latest`` file names
    the newest ``step_XXXXXXXX/`` folder (:mod:`megatron_brrm.checkpoint.train_ckpt`; the
    ``latest`` file itself is accepted too), or a
    Megatron-LM run folder holding ``latest_checkpointed_iteration.txt`` and ``iter_XXXXXXX/``.

    Raises:
        DistCheckpointError: nothing loadable there; the message lists what was found.
    """
    p = Path(path)
    if p.is_file() and p.name == "latest":  # ``save_dir/latest`` given directly
        p = p.parent
    if not p.is_dir():
        raise DistCheckpointError(f"Megatron checkpoint folder not found: {p}")
    if is_dist_checkpoint(p):
        return p
    pointer = p / "latest"  # megatron_brrm.checkpoint.train_ckpt: a file naming the newest step folder
    if pointer.is_file():
        cand = p / pointer.read_text().strip()
        if is_dist_checkpoint(cand):
            return cand
        raise DistCheckpointError(f"{pointer} names {cand.name!r}, which is not a finished dist checkpoint")
    tracker = p / "latest_checkpointed_iteration.txt"
    if tracker.is_file():
        it = tracker.read_text().strip()
        cand = p / ("release" if it == "release" else f"iter_{int(it):07d}")
        if is_dist_checkpoint(cand):
            return cand
        raise DistCheckpointError(f"{tracker} points at {cand}, which is not a finished dist checkpoint")
    subs = sorted(d.name for d in p.iterdir() if d.is_dir() and is_dist_checkpoint(d))
    hint = f"; checkpoints found inside: {', '.join(subs)} (pass one of them)" if subs else ""
    if (p / DCP_METADATA_NAME).is_file():
        raise DistCheckpointError(f"{p} has DCP data but no {MCORE_METADATA_NAME}: the save did not finish")
    raise DistCheckpointError(f"{p} is not a Megatron dist checkpoint (no {MCORE_METADATA_NAME}){hint}")


def read_tensor_metadata(ckpt_dir: str | os.PathLike) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
    """``{key: (global shape, dtype)}`` for every tensor key of a torch_dist checkpoint.

    Byte entries (ShardedObjects such as ``_extra_state``) are left out. Reads only
    ``.metadata``.

    Raises:
        DistCheckpointError: not a torch_dist checkpoint or unreadable metadata.
    """
    from torch.distributed.checkpoint import FileSystemReader, TensorStorageMetadata  # lazy: keeps train_bt --help fast

    ckpt_dir = Path(ckpt_dir)
    try:
        backend = json.loads((ckpt_dir / MCORE_METADATA_NAME).read_text()).get("sharded_backend")
    except (OSError, json.JSONDecodeError) as exc:
        raise DistCheckpointError(f"{ckpt_dir / MCORE_METADATA_NAME}: unreadable ({exc})") from None
    if backend != "torch_dist":
        raise DistCheckpointError(f"{ckpt_dir}: sharded_backend is {backend!r}; only 'torch_dist' checkpoints are supported")
    try:
        md = FileSystemReader(str(ckpt_dir)).read_metadata()
    except Exception as exc:  # missing/corrupt .metadata
        raise DistCheckpointError(f"{ckpt_dir / DCP_METADATA_NAME}: cannot read DCP metadata ({exc})") from None
    out = {}
    for key, item in md.state_dict_metadata.items():
        if isinstance(item, TensorStorageMetadata):
            out[key] = (tuple(int(d) for d in item.size), item.properties.dtype)
    return out


def write_dist_checkpoint(out_dir: str | os.PathLike, sharded_state_dict: dict, resolve: ChunkResolver,
                          on_chunk: Optional[Callable[[int], None]] = None) -> None:
    """Write a torch_dist checkpoint whose tensor data comes from ``resolve``, chunk by chunk.

    Must run in a process with ``torch.distributed`` initialised (any world size; only this
    process writes, with no collectives). ``out_dir`` must exist and be empty.

    Args:
        out_dir: target folder.
        sharded_state_dict: a model's ``sharded_state_dict()`` built on the ``meta`` device
            (ShardedTensor data are meta tensors; factories allowed). Every chunk of every
            key must be present (a TP=1, PP=1 model's state dict covers the whole model).
        resolve: ``(key, global_offset, chunk_sizes, dtype) -> tensor`` of exactly
            ``chunk_sizes`` (including the leading singleton layer axis of stacked keys) and
            ``dtype``; called once per chunk, in plan order.
        on_chunk: called with each chunk's byte size after it is resolved (progress).

    Raises:
        DistCheckpointError: ``resolve`` returned a wrong shape or dtype (names the key).
    """
    # lazy: keeps train_bt --help fast
    from megatron.core.dist_checkpointing.core import CheckpointingConfig, save_config
    from megatron.core.dist_checkpointing.state_dict_utils import save_preprocess  # lazy: keeps train_bt --help fast
    from megatron.core.dist_checkpointing.strategies.torch import (  # lazy: keeps train_bt --help fast
        MCoreSavePlanner,
        _replace_state_dict_keys_with_sharded_keys,
        mcore_to_pyt_state_dict,
    )
    from torch.distributed.checkpoint import FileSystemWriter  # lazy: keeps train_bt --help fast
    from torch.distributed.checkpoint import save as dcp_save  # lazy: keeps train_bt --help fast
    from torch.distributed.checkpoint.planner import WriteItemType  # lazy: keeps train_bt --help fast

    out_dir = Path(out_dir)
    sharded, common = save_preprocess(sharded_state_dict, validate_access_integrity=False)
    grouped, _, _ = _replace_state_dict_keys_with_sharded_keys(sharded, keep_only_main_replica=True)
    pyt_state_dict = mcore_to_pyt_state_dict(grouped, is_loading=False)

    class _LazyPlanner(MCoreSavePlanner):
        """Megatron's save planner, with tensor data produced on demand instead of looked up.

        torch's ``_write_files_from_queue`` keeps a reference to the last chunk written for
        every key (a dict only used by its safetensors output format), which would keep one
        chunk per key -- e.g. the embedding and output layer -- alive until the end. With one
        writer thread a chunk is fully serialised before the next is requested, so the
        previous chunk's storage is released (resized to 0 bytes) at each request.
        """

        _previous = None

        def resolve_data(self, write_item):
            if write_item.type == WriteItemType.BYTE_IO:
                return super().resolve_data(write_item)
            self.release_previous()
            key = write_item.index.fqn
            offset = tuple(int(x) for x in write_item.index.offset)
            sizes = tuple(int(x) for x in write_item.tensor_data.chunk.sizes)
            dtype = write_item.tensor_data.properties.dtype
            tensor = resolve(key, offset, sizes, dtype)
            if tuple(tensor.shape) != sizes or tensor.dtype != dtype:
                raise DistCheckpointError(f"{key} chunk at {offset}: produced {tuple(tensor.shape)} {tensor.dtype}, "
                                          f"expected {sizes} {dtype}")
            if not tensor.is_contiguous() or tensor.untyped_storage().nbytes() != tensor.nbytes:
                tensor = tensor.contiguous().clone()  # own, exactly-sized storage (releasable)
            self._previous = tensor
            if on_chunk is not None:
                on_chunk(tensor.nbytes)
            return tensor

        def release_previous(self):
            if self._previous is not None:
                self._previous.untyped_storage().resize_(0)
                self._previous = None

    planner = _LazyPlanner(dedup_replicated_tensors=False, flatten_state_dict=False)

    # One writer thread: chunks are produced and written strictly one at a time.
    writer = FileSystemWriter(str(out_dir), single_file_per_rank=True, thread_count=1, sync_files=True)
    with unwrap_dcp_errors():
        dcp_save(pyt_state_dict, storage_writer=writer, no_dist=True, planner=planner)
    planner.release_previous()
    torch.save(common, out_dir / COMMON_NAME)
    save_config(CheckpointingConfig("torch_dist", 1), str(out_dir))  # metadata.json last: marks completion


# Load request: (key, (layer index, number of layers) or None, shape without the layer axis, dtype).
LoadRequest = Tuple[str, Optional[Tuple[int, int]], Tuple[int, ...], torch.dtype]


def load_tensors(ckpt_dir: str | os.PathLike, requests: Dict[str, LoadRequest]) -> Dict[str, torch.Tensor]:
    """Load whole tensors, or one layer of a stacked key, from a torch_dist checkpoint.

    Args:
        ckpt_dir: the checkpoint folder.
        requests: ``{name: (key, layer, shape, dtype)}``; ``layer`` is ``(index, num_layers)``
            for a key with a leading layer axis (``decoder.layers.*``) or None; ``shape`` is
            the tensor's shape without that axis.

    Returns:
        ``{name: tensor}`` (CPU, ``dtype``, ``shape``). Only chunks overlapping the requests
        are read.
    """
    from megatron.core import dist_checkpointing  # lazy: keeps train_bt --help fast
    from megatron.core.dist_checkpointing.mapping import ShardedTensor  # lazy: keeps train_bt --help fast

    sharded = {}
    for name, (key, layer, shape, dtype) in requests.items():
        if layer is None:
            sharded[name] = ShardedTensor.from_rank_offsets(key, torch.empty(shape, dtype=dtype), replica_id=0)
        else:
            # The layer axis is a real (size-1) axis of the request rather than a Megatron
            # "prepended" axis: Megatron converts prepended-axis requests into a legacy torch
            # ShardedTensor that assumes every other layer lives on another rank, which fails
            # in a one-process world when only some layers are requested.
            data = torch.empty((1, *shape), dtype=dtype)
            sharded[name] = ShardedTensor.from_rank_offsets(key, data, (0, layer[0], layer[1]), replica_id=0)
    with unwrap_dcp_errors():
        loaded = dist_checkpointing.load(sharded, str(ckpt_dir), validate_access_integrity=False)
    # ``load`` also returns the checkpoint's common (non-tensor) state; keep the requests only.
    return {name: (loaded[name][0] if layer is not None else loaded[name])
            for name, (_, layer, _, _) in requests.items()}
