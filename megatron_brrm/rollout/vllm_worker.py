"""vLLM worker extension: the receiving side of a refit (runs inside every vLLM worker process).

vLLM mixes the class named by ``LLM(worker_extension_cls="megatron_brrm.rollout.vllm_worker.
BRRMWorkerExtension")`` into its worker (GPU or CPU), so ``llm.collective_rpc(method,
args=...)`` runs these methods on every worker (all TP ranks). The pattern is vLLM's RLHF
examples' and NeMo-RL's ``VllmInternalWorkerExtension``, with one rule of this project:
**tensors never travel through** ``collective_rpc``. A multiprocess vLLM engine pickles RPC
arguments, and pickling a tensor fails there ("cannot pickle memoryview objects"). A refit
bucket travels as a small *descriptor* instead, naming where its bytes already are:

* ``{"kind": "shm", "path": ..., "nbytes": ..., "entries": [...]}``: a shared-memory file
  on this node (CPU, or any same-node sender); the worker maps it;
* ``{"kind": "cuda_ipc", "handle": ..., "nbytes": ..., "entries": [...]}``: a CUDA buffer
  of the sender, shared through a CUDA IPC handle (``torch.multiprocessing.reductions.
  reduce_tensor``), as NeMo-RL and verl do on GPU; the worker opens it on its own device.

``entries`` are ``(name, byte offset, shape, dtype name)`` tuples (the
:class:`~megatron_brrm.rollout.shm.BucketEntry` layout). The worker builds views of the
buffer and loads them with the model runner's ``reload_weights(weights_iterator=...,
is_checkpoint_format=True)``: vLLM's in-place reload, which re-runs each module's
``process_weights_after_loading`` (the CPU backend repacks linear weights after loading; a
plain ``model.load_weights`` then fails with "'Parameter' object has no attribute
'weight_loader'"). A module must receive all its tensors in one call (see
:func:`megatron_brrm.rollout.refit.fused_module_key`); modules absent from a bucket keep their
weights (vLLM logs "Failed to load weights" for each; that message is silenced here).

All vLLM internals this project touches live in this module (one place to adapt when vLLM
changes). Nothing here imports vLLM at module import time.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Sequence, Tuple

import torch

from .fp8 import quantize_named_weights
from .shm import BucketEntry, bucket_views, mmap_file

WORKER_EXTENSION_CLS = f"{__name__}.BRRMWorkerExtension"

_RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"


def entries_to_wire(entries: Sequence[BucketEntry]) -> List[Tuple[str, int, Tuple[int, ...], str]]:
    """Entries as plain tuples (picklable by any process, whatever it imports)."""
    return [(e.hf_name, int(e.offset), tuple(int(s) for s in e.shape), str(e.dtype)) for e in entries]


def entries_from_wire(wire: Sequence[Sequence[Any]]) -> List[BucketEntry]:
    """Inverse of :func:`entries_to_wire`."""
    return [BucketEntry(str(n), int(o), tuple(int(s) for s in shape), str(d)) for n, o, shape, d in wire]


def open_cuda_ipc_buffer(handle: Tuple[Any, Sequence[Any]], device_index: int) -> torch.Tensor:
    """Rebuild a sender's CUDA uint8 buffer from its IPC handle, on this process's ``device_index``.

    ``handle`` is ``torch.multiprocessing.reductions.reduce_tensor(buffer)``: a rebuild function
    and its arguments, the 7th of which is the CUDA device index *in the sender's numbering*.
    Colocated engines share the sender's GPU under another ``CUDA_VISIBLE_DEVICES`` numbering, so
    it is replaced by the receiver's own device (what verl and NeMo-RL do).
    """
    rebuild, args = handle
    args = list(args)
    args[6] = int(device_index)
    return rebuild(*args)


class BRRMWorkerExtension:
    """Methods mixed into vLLM's worker; ``self.model_runner`` and ``self.device`` are provided by
    the vLLM worker they are mixed into."""

    def brrm_packed_modules(self) -> Dict[str, List[str]]:
        """The model's ``packed_modules_mapping`` (``{"qkv_proj": ["q_proj", "k_proj", "v_proj"], ...}``):
        the sub-modules vLLM fuses, which a refit bucket must never split."""
        model = self.model_runner.get_model()
        return {k: list(v) for k, v in dict(getattr(model, "packed_modules_mapping", {}) or {}).items()}

    def brrm_device_type(self) -> str:
        """``"cpu"`` or ``"cuda"``: the device this worker computes on."""
        return torch.device(self.device).type

    def brrm_load_bucket(self, descriptor: Dict[str, Any]) -> int:
        """Load one refit bucket described by ``descriptor`` (see the module docstring); returns
        the bytes loaded. The buffer is released before returning.

        Raises:
            ValueError: an unknown descriptor kind, or an entry past the buffer's end.
            FileNotFoundError: the shared-memory file is gone.
        """
        kind = descriptor.get("kind")
        entries = entries_from_wire(descriptor["entries"])
        nbytes = int(descriptor["nbytes"])
        mm = None
        if kind == "shm":
            mm, buffer = mmap_file(descriptor["path"], nbytes)
        elif kind == "cuda_ipc":
            buffer = open_cuda_ipc_buffer(descriptor["handle"], torch.device(self.device).index or 0)
        else:
            raise ValueError(f"brrm_load_bucket: unknown bucket descriptor kind {kind!r} (expected 'shm' or 'cuda_ipc')")
        quiet = logging.getLogger(_RELOAD_LOGGER)
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            views = bucket_views(buffer, entries)
            if getattr(getattr(self, "model_config", None), "quantization", None) == "fp8":
                # FP8 rollouts: each GEMM weight becomes its block-FP8 tensor and scales here, on the
                # worker's device, so the checkpoint-format reload sees what an FP8 checkpoint holds
                views = list(quantize_named_weights((n, v.to(self.device)) for n, v in views))
            self.model_runner.reload_weights(weights_iterator=iter(views), is_checkpoint_format=True)
            if torch.device(self.device).type == "cuda":
                torch.cuda.synchronize()
        finally:
            quiet.setLevel(level)
            views = None
            del buffer
            if mm is not None:
                mm.close()
        return int(sum(e.nbytes for e in entries))
