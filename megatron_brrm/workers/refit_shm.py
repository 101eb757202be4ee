"""Same-node refit through shared memory: the plan, the buffers, and the per-process mappings.

The CPU / same-node analog of NeMo-RL's CUDA-IPC refit (its ``ipc`` weight update: the
policy workers expose their tensors through IPC handles and the colocated vLLM workers
copy them into their weights). Here the bytes travel through files in ``/dev/shm``:

1. :func:`build_refit_plan` packs the model's HF tensors, in
   :meth:`~megatron_brrm.model.mapping.ArchMapping.hf_param_names` order, into buckets of
   at most ``bucket_bytes`` bytes (a larger tensor travels alone, as
   :func:`megatron_brrm.rollout.refit.iter_buckets` does), each entry at a 64-byte-aligned
   byte offset. A tied ``lm_head`` is not sent (HF ties it).
2. **Buckets** (any engine with ``update_weights``): :class:`SharedBuffers` (driver side)
   creates two files of the largest bucket's size, removed when the refit ends (and at
   interpreter exit should that be skipped). Every policy rank writes its own TP shards
   straight into their HF-layout place in one buffer
   (:func:`megatron_brrm.model.shard_layout.write_shard_into_hf`: no gather, no collective)
   while the engines copy the previous bucket out of the other one (double buffering,
   driven by :mod:`megatron_brrm.workers.refit_stream`). Two copies of the model's bytes per
   refit; extra memory: two buckets of shared memory (``2 * plan.buffer_bytes``).
3. **Direct** (engines whose weights are contiguous CPU tensors of a torch ``model``, i.e.
   the HF engine on CPU): :class:`SharedModuleWeights` moves the engine's parameters into
   one shared-memory file once (the same memory, not an extra copy), and the ranks then
   write their shards straight into the engine's weights: one copy per refit, no buffers.
   Two copies of the model's bytes cannot beat half the speed of one plain copy on a
   memory-bandwidth-bound CPU node; one copy can (``tools/bench/refit.py``).

Processes map the files with ``MAP_POPULATE`` (one call faults every page in; page-by-page
write faults measured ~15x slower on the development VM) and cache the mappings
(:func:`map_buffer`, released by :func:`unmap_buffers`). A process killed before it could
remove its files (SIGKILL runs no exit handler) leaves them behind; the next one to create
files removes those of dead processes (:func:`remove_stale_files`).
"""
from __future__ import annotations

import atexit
import dataclasses
import logging
import mmap
import os
import re
import tempfile
import uuid
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

log = logging.getLogger(__name__)

ALIGN = 64  # byte alignment of every tensor in a bucket (cache line; any dtype's element size divides it)


@dataclass(frozen=True)
class PlanEntry:
    """One HF tensor of a bucket: where its bytes sit in the buffer.

    Attributes:
        hf_name: HF parameter name.
        megatron_name: global Megatron name of the tensor it comes from.
        offset: byte offset in the buffer (multiple of :data:`ALIGN`).
        shape: HF shape.
        dtype: torch dtype name (``"float32"``, ``"bfloat16"``...): the trainer parameter's dtype.
    """

    hf_name: str
    megatron_name: str
    offset: int
    shape: Tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor (``numel * element size``)."""
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=getattr(torch, self.dtype)).element_size()


@dataclass(frozen=True)
class RefitPlan:
    """Buckets of :class:`PlanEntry`; ``buffer_bytes`` = the largest bucket's extent in bytes."""

    buckets: Tuple[Tuple[PlanEntry, ...], ...]
    buffer_bytes: int

    @property
    def num_tensors(self) -> int:
        return sum(len(b) for b in self.buckets)

    @property
    def num_bytes(self) -> int:
        return sum(e.nbytes for b in self.buckets for e in b)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def build_refit_plan(mapping, dtypes: Mapping[str, str], bucket_bytes: int) -> RefitPlan:
    """Deterministic bucket plan for the model described by ``mapping``.

    Args:
        mapping: the trainer's :class:`~megatron_brrm.model.mapping.ArchMapping`.
        dtypes: ``{global Megatron name: torch dtype name}`` of every parameter (merged over
            the pipeline stages).
        bucket_bytes: bucket budget in bytes (``rollout.refit_bucket_size_mb * 2**20``); the
            aligned extent of a bucket stays within it unless a single tensor is larger.

    Raises:
        ValueError: ``bucket_bytes`` < 1.
        KeyError: a Megatron tensor missing from ``dtypes`` (no pipeline stage holds it).
    """
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    buckets: List[Tuple[PlanEntry, ...]] = []
    current: List[PlanEntry] = []
    end = 0
    for megatron_name in mapping.megatron_param_names():
        if megatron_name.endswith("output_layer.weight") and mapping.tied:
            continue
        if megatron_name not in dtypes:
            raise KeyError(f"refit plan: no pipeline stage reported the tensor {megatron_name}")
        dtype = dtypes[megatron_name].split(".")[-1]
        for hf_name in mapping.hf_names_for(megatron_name):
            entry = PlanEntry(hf_name, megatron_name, 0, tuple(mapping.hf_shape(hf_name)), dtype)
            offset = _align(end)
            if current and offset + entry.nbytes > bucket_bytes:
                buckets.append(tuple(current))
                current, offset = [], 0
            current.append(dataclasses.replace(entry, offset=offset))
            end = offset + entry.nbytes
    if current:
        buckets.append(tuple(current))
    extent = max((b[-1].offset + b[-1].nbytes for b in buckets), default=0)
    return RefitPlan(tuple(buckets), _align(max(extent, 1)))


def bucket_views(buffer: torch.Tensor, entries: Sequence[PlanEntry]) -> List[Tuple[str, torch.Tensor]]:
    """``[(hf_name, view)]`` of a bucket: views of the uint8 ``buffer`` with each entry's dtype and shape.

    Raises:
        ValueError: an entry reaches past the end of ``buffer``.
    """
    out = []
    for e in entries:
        if e.offset + e.nbytes > buffer.numel():
            raise ValueError(f"refit bucket entry {e.hf_name} ends at byte {e.offset + e.nbytes}, "
                             f"past the {buffer.numel()}-byte buffer")
        out.append((e.hf_name, buffer[e.offset:e.offset + e.nbytes].view(getattr(torch, e.dtype)).view(e.shape)))
    return out


# ---------------------------------------------------------------- shared-memory files
def shm_free_bytes() -> int:
    """Free bytes in ``/dev/shm`` (0 when it is missing or not writable)."""
    if not (os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK)):
        return 0
    st = os.statvfs("/dev/shm")
    return st.f_bavail * st.f_frsize


def shm_dir(required_bytes: int = 0) -> str:
    """``/dev/shm`` when it is writable with ``required_bytes`` free, else ``tempfile.gettempdir()``
    (e.g. a container's 64 MiB ``/dev/shm``)."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) and shm_free_bytes() >= required_bytes:
        return "/dev/shm"
    return tempfile.gettempdir()


def _create_file(path: str, nbytes: int) -> None:
    """Create ``path`` (exclusive, mode 0600) with ``nbytes`` bytes allocated up front
    (``posix_fallocate``: running out of shared memory fails here, not at first write)."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, nbytes)
        os.posix_fallocate(fd, 0, nbytes)
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _pid_namespace() -> Optional[str]:
    """This process's PID-namespace id (inode of ``/proc/self/ns/pid``); None where unknown."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return None


def _file_name(kind: str) -> str:
    """``brrm-<kind>-<pid namespace>-<pid>-<uuid12>``: the owner can be told from the name."""
    return f"brrm-{kind}-{_pid_namespace() or 0}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


_FILE_NAME = re.compile(r"brrm-(?:refit|weights)-(\d+)-(\d+)-[0-9a-f]{12}(?:-[01])?")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_files(directory: str) -> List[str]:
    """Remove the refit files that dead processes of this PID namespace left in ``directory``.

    A process killed with SIGKILL (or by the OOM killer) runs no ``atexit`` handler, so the
    files it created (:class:`SharedBuffers`, :class:`SharedModuleWeights`) stay in
    ``/dev/shm`` and hold memory until reboot. This runs before new files are created. A file
    is removed only when its name (:func:`_file_name`) carries this process's PID namespace
    and a PID that no longer exists: files of live processes, and of other namespaces (e.g.
    containers sharing ``/dev/shm``, where a PID means another process), are kept; where the
    namespace cannot be read nothing is removed. A reused PID keeps a stale file (safe side).

    Returns:
        The removed paths (also logged as a warning).
    """
    ns = _pid_namespace()
    try:
        names = os.listdir(directory) if ns is not None else []
    except OSError:
        return []
    removed = []
    for name in names:
        m = _FILE_NAME.fullmatch(name)
        if m and m.group(1) == ns and not _pid_alive(int(m.group(2))):
            path = os.path.join(directory, name)
            _remove(path)
            removed.append(path)
    if removed:
        log.warning("refit: removed %d shared-memory file(s) left by dead processes: %s", len(removed), removed[:4])
    return removed


class SharedBuffers:
    """Two shared-memory files of ``nbytes`` bytes each, removed by :meth:`close` (and at exit).

    Names: ``brrm-refit-<pid namespace>-<pid>-<uuid>-<0|1>`` in :func:`shm_dir`; files that
    dead processes left there are removed first (:func:`remove_stale_files`). The pages are
    allocated up front (``posix_fallocate``), so running out of shared memory fails here, not
    in a rank.

    Raises:
        OSError: the files cannot be created or ``2 * nbytes`` bytes are not free in the
            directory (the message names it and the size; lower ``rollout.refit_bucket_size_mb``).
    """

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        swept = shm_dir()
        remove_stale_files(swept)  # before the free-space check: stale files may be what fills /dev/shm
        directory = shm_dir(2 * self.nbytes)
        if directory != swept:  # the fallback directory can hold stale buffers too
            remove_stale_files(directory)
        tag = _file_name("refit")
        self.paths: List[str] = []
        atexit.register(self.close)
        try:
            for i in range(2):
                path = os.path.join(directory, f"{tag}-{i}")
                _create_file(path, self.nbytes)
                self.paths.append(path)
        except OSError as exc:
            self.close()
            raise OSError(exc.errno, f"refit: cannot create two {self.nbytes / 2**20:.0f} MiB shared-memory buffers in "
                                     f"{directory} ({exc.strerror}); free space there or lower "
                                     "rollout.refit_bucket_size_mb") from exc

    def close(self) -> None:
        """Remove the files (idempotent); mappings still open elsewhere stay valid until unmapped."""
        for path in self.paths:
            _remove(path)
        self.paths = []
        atexit.unregister(self.close)

    def __enter__(self) -> "SharedBuffers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- per-process mappings
_MAPPED: "OrderedDict[str, Tuple[mmap.mmap, torch.Tensor]]" = OrderedDict()
_PERSISTENT: Dict[str, Tuple[mmap.mmap, torch.Tensor]] = {}
_MAX_MAPPED = 2


def _mmap(path: str, nbytes: int) -> Tuple[mmap.mmap, torch.Tensor]:
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size < nbytes:
            raise ValueError(f"refit buffer {path} has {size} bytes, {nbytes} expected")
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        mm = mmap.mmap(fd, nbytes, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    return mm, torch.frombuffer(mm, dtype=torch.uint8)


def map_buffer(path: str, nbytes: int, persistent: bool = False) -> torch.Tensor:
    """The file ``path`` as a writable uint8 tensor of ``nbytes`` bytes (``MAP_SHARED | MAP_POPULATE``).

    Mappings are cached per process, so the pages are faulted in once per refit, not once
    per bucket: bucket buffers at most two (oldest dropped first); ``persistent`` mappings
    (an engine's shared weights, :class:`SharedModuleWeights`) until :func:`unmap_buffers`.

    Raises:
        FileNotFoundError: ``path`` does not exist (the driver removed it, or another node).
        ValueError: the file is shorter than ``nbytes``.
    """
    cache = _PERSISTENT if persistent else _MAPPED
    hit = cache.get(path)
    if hit is not None and hit[1].numel() == nbytes:
        if not persistent:
            _MAPPED.move_to_end(path)
        return hit[1]
    if hit is not None:
        _close(path, cache.pop(path))
    cache[path] = _mmap(path, nbytes)
    while len(_MAPPED) > _MAX_MAPPED:
        _close(*_MAPPED.popitem(last=False))
    return cache[path][1]


def _close(path: str, entry: Tuple[mmap.mmap, torch.Tensor]) -> None:
    mm, tensor = entry
    del tensor, entry
    try:
        mm.close()
    except BufferError:  # a view is still alive somewhere: the mapping goes with the last view
        log.debug("refit buffer %s still has live views; unmapped when they are freed", path)


def unmap_buffers(keep: Sequence[str] = ()) -> int:
    """Drop this process's cached mappings except those of ``keep``; returns how many were dropped."""
    dropped = 0
    for cache in (_MAPPED, _PERSISTENT):
        for key in [k for k in cache if k not in keep]:
            _close(key, cache.pop(key))
            dropped += 1
    return dropped


def mapped_paths() -> List[str]:
    """Paths this process has mapped (for tests and diagnostics)."""
    return list(_MAPPED) + list(_PERSISTENT)


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
        self.layout: Dict[str, Tuple[int, Tuple[int, ...], str]] = {}
        end = 0
        for n in names:
            p = params[n]
            offset = _align(end)
            self.layout[n] = (offset, tuple(p.shape), str(p.dtype).split(".")[-1])
            end = offset + p.numel() * p.element_size()
        self.nbytes = _align(max(end, 1))
        remove_stale_files("/dev/shm")
        self.path = os.path.join("/dev/shm", _file_name("weights"))
        self.linked = True
        atexit.register(self.close)
        try:
            _create_file(self.path, self.nbytes)
            self._mm, buf = _mmap(self.path, self.nbytes)
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
            _remove(self.path)
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
    """:func:`share_module_weights` for a generation engine's ``model``; returns the writers'
    ``info()``, or None when the engine cannot share (it then loads buckets)."""
    shared = share_module_weights(getattr(engine, "model", None), names, fresh=fresh)
    return None if shared is None else shared.info()


def seal_engine_weights(engine, num_tensors: int, num_bytes: int) -> bool:
    """:func:`seal_module_weights` for a generation engine's ``model``, after a direct refit
    wrote ``num_tensors`` tensors (``num_bytes`` bytes) into its shared weights: the engine's
    ``last_update_stats`` then reports that refit, as ``update_weights`` does for the others."""
    if hasattr(engine, "last_update_stats"):
        engine.last_update_stats = {"tensors": int(num_tensors), "bytes": int(num_bytes)}
    return seal_module_weights(getattr(engine, "model", None))


def load_bucket(engines: Sequence, path: str, buffer_bytes: int, entries: Sequence[PlanEntry],
                num_threads: int = 1) -> int:
    """Load one bucket from the shared-memory file ``path`` into every engine of this process.

    Maps the file (:func:`map_buffer`), builds one view per entry (:func:`bucket_views`) and
    hands them to each engine's ``update_weights`` (which copies them into its weights), with
    ``num_threads`` torch threads for the copies (restored afterwards).

    Returns:
        The bytes of the bucket (loaded into each engine).

    Raises:
        FileNotFoundError / ValueError: the buffer is missing or too small; KeyError /
        ValueError from an engine (unknown name, shape mismatch).
    """
    views = bucket_views(map_buffer(path, buffer_bytes), entries)
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(num_threads)))
    try:
        for engine in engines:
            engine.update_weights(iter(views))
    finally:
        torch.set_num_threads(before)
    nbytes = int(sum(t.numel() * t.element_size() for _, t in views))
    del views
    return nbytes


def write_bucket_shards(local_params: Mapping[str, torch.Tensor], mapping, tp_rank: int, tp_size: int,
                        buffer: torch.Tensor, entries: Sequence[PlanEntry]) -> int:
    """Write this rank's shards of the bucket's tensors into ``buffer``; returns the bytes written.

    Args:
        local_params: ``{global Megatron name: parameter}`` of this rank
            (:func:`megatron_brrm.model.weights.local_global_params`); tensors of other
            pipeline stages are absent and skipped.
        mapping: the model's ``ArchMapping``.
        tp_rank, tp_size: this rank's TP layout.
        buffer: the mapped bucket buffer (uint8).
        entries: the bucket's :class:`PlanEntry` list.
    """
    from megatron_brrm.model.shard_layout import write_shard_into_hf

    by_tensor: Dict[str, Dict[str, torch.Tensor]] = {}
    views = dict(bucket_views(buffer, entries))
    for e in entries:
        if e.megatron_name in local_params:
            by_tensor.setdefault(e.megatron_name, {})[e.hf_name] = views[e.hf_name]
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
