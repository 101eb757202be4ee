"""Shared-memory buckets: the byte layout of a bucket of named tensors, and the files that carry it.

The same-node refit moves weights through files in ``/dev/shm`` (the CPU / same-node analog
of the CUDA-IPC refit of NeMo-RL and verl). This module holds the parts every side of that
transfer shares, so that a receiver (an engine in the driver, an engine actor, a vLLM worker
process) needs nothing but torch and this file:

* :class:`BucketEntry`: where one tensor of a bucket sits in a flat byte buffer (64-byte
  aligned offset, shape, dtype); :func:`layout_entries` lays tensors out back to back;
  :func:`bucket_views` turns a buffer plus entries back into ``(name, tensor view)`` pairs
  (no copy); :func:`pack_bucket` copies tensors into a buffer at their entries.
* files: :class:`SharedBuffers` (files removed when the transfer ends and at exit), and the
  stale-file sweep (:func:`remove_stale_files`) for files a killed process left behind;
* per-process mappings: :func:`map_buffer` (``MAP_SHARED | MAP_POPULATE``, cached so that a
  double-buffered transfer faults each file in once), :func:`unmap_buffers`.

A process killed before it could remove its files (SIGKILL runs no exit handler) leaves them
behind; the next one to create files removes those of dead processes.
"""
from __future__ import annotations

import atexit
import logging
import mmap
import os
import re
import tempfile
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

log = logging.getLogger(__name__)

ALIGN = 64  # byte alignment of every tensor in a bucket (cache line; any dtype's element size divides it)


def align_up(n: int) -> int:
    """``n`` rounded up to a multiple of :data:`ALIGN` bytes."""
    return (n + ALIGN - 1) // ALIGN * ALIGN


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"`` (the form :class:`BucketEntry` stores; picklable anywhere)."""
    return str(dtype).split(".")[-1]


@dataclass(frozen=True)
class BucketEntry:
    """One tensor of a bucket: where its bytes sit in the bucket's flat byte buffer.

    Attributes:
        hf_name: the tensor's name (a Hugging Face parameter name in a refit).
        offset: byte offset in the buffer (a multiple of :data:`ALIGN`).
        shape: the tensor's shape.
        dtype: torch dtype name (``"float32"``, ``"bfloat16"``...).
    """

    hf_name: str
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

    @property
    def end(self) -> int:
        """Byte offset one past the tensor's last byte."""
        return self.offset + self.nbytes


def layout_entries(specs: Iterable[Tuple[str, Sequence[int], str]], start: int = 0) -> List[BucketEntry]:
    """Lay ``(name, shape, dtype name)`` tensors out back to back from byte ``start``, each at a
    64-byte-aligned offset. The buffer must hold ``align_up(entries[-1].end)`` bytes."""
    entries: List[BucketEntry] = []
    end = start
    for name, shape, dtype in specs:
        entry = BucketEntry(name, align_up(end), tuple(int(s) for s in shape), dtype)
        entries.append(entry)
        end = entry.end
    return entries


def bucket_views(buffer: torch.Tensor, entries: Sequence[BucketEntry]) -> List[Tuple[str, torch.Tensor]]:
    """``[(hf_name, view)]`` of a bucket: views of the uint8 ``buffer`` with each entry's dtype and shape.

    Args:
        buffer: 1-D ``torch.uint8`` tensor (a mapped file or a device buffer).
        entries: the bucket's layout.

    Raises:
        ValueError: an entry reaches past the end of ``buffer``.
    """
    out = []
    for e in entries:
        if e.end > buffer.numel():
            raise ValueError(f"refit bucket entry {e.hf_name} ends at byte {e.end}, "
                             f"past the {buffer.numel()}-byte buffer")
        out.append((e.hf_name, buffer[e.offset:e.end].view(getattr(torch, e.dtype)).view(e.shape)))
    return out


def pack_bucket(buffer: torch.Tensor, named_tensors: Sequence[Tuple[str, torch.Tensor]],
                entries: Sequence[BucketEntry]) -> int:
    """Copy each tensor into its entry's place in ``buffer`` (dtype converted to the entry's);
    returns the bytes written.

    Raises:
        ValueError: a tensor's shape differs from its entry's, or an entry is past the buffer's end.
    """
    written = 0
    with torch.no_grad():
        for (name, tensor), (_, view) in zip(named_tensors, bucket_views(buffer, entries), strict=True):
            if tuple(tensor.shape) != tuple(view.shape):
                raise ValueError(f"pack_bucket: {name} has shape {tuple(tensor.shape)}, its entry says {tuple(view.shape)}")
            view.copy_(tensor)
            written += view.numel() * view.element_size()
    return written


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


def create_file(path: str, nbytes: int) -> None:
    """Create ``path`` (exclusive, mode 0600) with ``nbytes`` bytes allocated up front
    (``posix_fallocate``: running out of shared memory fails here, not at first write)."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, nbytes)
        os.posix_fallocate(fd, 0, nbytes)
    finally:
        os.close(fd)


def remove_file(path: str) -> None:
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


def file_name(kind: str) -> str:
    """``brrm-<kind>-<pid namespace>-<pid>-<uuid12>``: the owner can be told from the name."""
    return f"brrm-{kind}-{_pid_namespace() or 0}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


_FILE_NAME = re.compile(r"brrm-(?:refit|weights)-(\d+)-(\d+)-[0-9a-f]{12}(?:-\d+)?")


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
    is removed only when its name (:func:`file_name`) carries this process's PID namespace
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
            remove_file(path)
            removed.append(path)
    if removed:
        log.warning("refit: removed %d shared-memory file(s) left by dead processes: %s", len(removed), removed[:4])
    return removed


class SharedBuffers:
    """``count`` shared-memory files of ``nbytes`` bytes each, removed by :meth:`close` (and at exit).

    Names: ``brrm-refit-<pid namespace>-<pid>-<uuid>-<i>`` in :func:`shm_dir`; files that
    dead processes left there are removed first (:func:`remove_stale_files`). The pages are
    allocated up front (``posix_fallocate``), so running out of shared memory fails here, not
    in a writer. Two files (the default) let a writer fill one while readers copy out of the
    other (double buffering).

    Raises:
        OSError: the files cannot be created or ``count * nbytes`` bytes are not free in the
            directory (the message names it and the size; lower ``rollout.refit_bucket_size_mb``).
    """

    def __init__(self, nbytes: int, count: int = 2):
        self.nbytes = int(nbytes)
        swept = shm_dir()
        remove_stale_files(swept)  # before the free-space check: stale files may be what fills /dev/shm
        directory = shm_dir(count * self.nbytes)
        if directory != swept:  # the fallback directory can hold stale buffers too
            remove_stale_files(directory)
        tag = file_name("refit")
        self.paths: List[str] = []
        atexit.register(self.close)
        try:
            for i in range(count):
                path = os.path.join(directory, f"{tag}-{i}")
                create_file(path, self.nbytes)
                self.paths.append(path)
        except OSError as exc:
            self.close()
            raise OSError(exc.errno, f"refit: cannot create {count} {self.nbytes / 2**20:.0f} MiB shared-memory "
                                     f"buffer(s) in {directory} ({exc.strerror}); free space there or lower "
                                     "rollout.refit_bucket_size_mb") from exc

    def close(self) -> None:
        """Remove the files (idempotent); mappings still open elsewhere stay valid until unmapped."""
        for path in self.paths:
            remove_file(path)
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


def mmap_file(path: str, nbytes: int) -> Tuple[mmap.mmap, torch.Tensor]:
    """Map the first ``nbytes`` bytes of the file ``path`` (``MAP_SHARED | MAP_POPULATE``, read-write).

    Returns ``(mmap object, uint8 tensor over it)``, not cached: close the mmap once every
    view of the tensor is gone (:func:`map_buffer` is the cached form).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is shorter than ``nbytes``.
    """
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
    (an engine's shared weights, ``megatron_brrm.workers.refit_shm.SharedModuleWeights``) until :func:`unmap_buffers`.

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
    cache[path] = mmap_file(path, nbytes)
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

