"""Release a training rank's memory while the colocated engines generate, and restore it bit-exactly.

The colocated lifecycle (NeMo-RL's ``prepare_for_generation`` / ``finish_generation``, verl's
``offload_fsdp_*``): before generation the policy moves its optimizer state, gradients and,
optionally, its parameters to host memory and frees their device storage; after generation it
allocates the storage again and copies the bytes back.

:class:`StorageOffloader` works on *storages*, not tensors: Megatron's DDP keeps parameters and
``main_grad`` as views of large contiguous buffers (``param_data`` / ``grad_data``), and the
distributed optimizer's shards may view those too. Each distinct storage is copied to host
once (a raw byte copy, so the round trip is bit-exact for every dtype), then resized to zero
bytes, which frees it while every view keeps its shape, strides and identity (Megatron's own
``offload_grad_buffers`` uses the same ``resize_(0)``). :meth:`StorageOffloader.onload`
resizes each storage back and copies its bytes in. A view must not be *read* while its
storage is offloaded.

On GPU the host copies are pinned CPU tensors and freeing returns device memory; on CPU the
same code runs (the host copy is another CPU tensor), so the bookkeeping is what the CPU tests
prove: which storages are released, that nothing is released twice, and that training after a
round trip is bit-identical.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Tuple

import torch


def _bytes_view(storage: torch.UntypedStorage) -> torch.Tensor:
    """A uint8 tensor over every byte of ``storage``."""
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)


def distinct_storages(tensors: Iterable[torch.Tensor]) -> List[torch.UntypedStorage]:
    """The distinct, non-empty storages behind ``tensors`` (views of one buffer count once), in first-seen order."""
    seen, out = set(), []
    for t in tensors:
        if t is None:
            continue
        s = t.untyped_storage()
        key = (s.device.type, s.device.index, s.data_ptr())
        if s.nbytes() == 0 or key in seen:
            continue
        seen.add(key)
        out.append(s)
    return out


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes held by the distinct storages behind ``tensors`` (0 for offloaded ones)."""
    return sum(s.nbytes() for s in distinct_storages(tensors))


class StorageOffloader:
    """Host copies of offloaded storages (see the module docstring).

    Raises:
        RuntimeError: :meth:`offload` while storages are already offloaded (onload first).
    """

    def __init__(self):
        self._saved: List[Tuple[torch.UntypedStorage, torch.Tensor]] = []

    @property
    def offloaded(self) -> bool:
        return bool(self._saved)

    @torch.no_grad()
    def offload(self, tensors: Iterable[torch.Tensor]) -> int:
        """Copy every distinct storage behind ``tensors`` to host and free it; returns the bytes freed."""
        if self._saved:
            raise RuntimeError("StorageOffloader.offload: storages are already offloaded; call onload() first")
        freed = 0
        for storage in distinct_storages(tensors):
            data = _bytes_view(storage)
            host = torch.empty(data.numel(), dtype=torch.uint8, pin_memory=data.is_cuda)
            host.copy_(data, non_blocking=False)
            del data
            freed += storage.nbytes()
            storage.resize_(0)
            self._saved.append((storage, host))
        if freed and torch.cuda.is_available():
            torch.cuda.empty_cache()
        return freed

    @torch.no_grad()
    def onload(self) -> int:
        """Allocate every offloaded storage again and copy its bytes back; returns the bytes restored."""
        restored = 0
        for storage, host in self._saved:
            storage.resize_(host.numel())
            _bytes_view(storage).copy_(host, non_blocking=False)
            restored += host.numel()
        self._saved = []
        return restored


def model_tensors(model_chunks) -> Dict[str, List[torch.Tensor]]:
    """``{"params": [...], "grads": [...]}`` of Megatron DDP-wrapped chunks: every parameter (and the
    DDP ``param_data`` buffers they may view) and every gradient buffer (``grad_data``, which the
    parameters' ``main_grad`` views) or plain ``.grad``."""
    params, grads = [], []
    for chunk in model_chunks:
        buffers = list(getattr(chunk, "buffers", []) or []) + list(getattr(chunk, "expert_parallel_buffers", []) or [])
        for buf in buffers:
            if getattr(buf, "param_data", None) is not None:
                params.append(buf.param_data)
            if getattr(buf, "grad_data", None) is not None:
                grads.append(buf.grad_data)
        for p in chunk.parameters():
            params.append(p)
            grads.append(getattr(p, "main_grad", None))
            grads.append(p.grad)
    return {"params": params, "grads": [g for g in grads if g is not None]}


def optimizer_tensors(optimizer) -> List[torch.Tensor]:
    """Every tensor of a Megatron optimizer's state: the inner torch optimizers' per-parameter state
    (Adam's ``exp_avg``, ``exp_avg_sq``, ``step``) and their parameters (the fp32 main copies or
    shards of a mixed-precision / distributed optimizer; plain fp32 parameters are the model's own
    and are deduplicated by storage)."""
    out: List[torch.Tensor] = []
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(sub, "optimizer", None)
        if inner is None:
            continue
        for state in inner.state.values():
            out += [v for v in state.values() if isinstance(v, torch.Tensor)]
        for group in inner.param_groups:
            out += [p for p in group["params"] if isinstance(p, torch.Tensor)]
    return out
