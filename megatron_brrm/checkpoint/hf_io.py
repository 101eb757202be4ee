"""Streaming Hugging Face safetensors io: read one tensor at a time, write sharded folders.

Memory stays bounded by a few tensors, never by the model (issue 3 item 4):

- :class:`HFSafetensorsReader` parses the safetensors headers of a folder (one
  ``model.safetensors`` or shards listed in ``model.safetensors.index.json``) without
  loading data, and loads a single tensor per :meth:`~HFSafetensorsReader.get_tensor` call (or ``reader[name]``) through
  ``safetensors.safe_open`` (the file is opened for that call only, so no mapping of a whole
  shard stays resident).
- :class:`ShardedSafetensorsWriter` is given the list of tensors up front (names, shapes,
  dtypes), lays them out into shards of at most ``max_shard_bytes`` with Hugging Face file
  names (``model-00001-of-00003.safetensors``; one shard is ``model.safetensors``), writes
  every shard header first and then each tensor's bytes at its planned offset, in any order.
  The file format is the safetensors specification
  (https://github.com/huggingface/safetensors#format): an 8-byte little-endian header length,
  a JSON header ``{name: {dtype, shape, data_offsets}}`` plus ``__metadata__``, then the
  contiguous little-endian tensor bytes.
- :func:`atomic_output_dir` writes into a hidden temporary folder next to the target and
  renames it at the end, so an interrupted run leaves nothing under the target name.
- :func:`copy_hf_side_files` / :func:`write_hf_config` carry ``config.json`` (with
  ``architectures`` and the dtype set), ``generation_config.json``, tokenizer files and the
  chat template over from a source folder.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from collections.abc import Mapping

import torch
from safetensors import safe_open

from megatron_brrm.hub import is_hub_id, resolve_hf_path

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
# transformers' default ``max_shard_size="5GB"`` (decimal units, ``convert_file_size_to_int``).
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9

_ST_TO_DTYPE: Dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_DTYPE_TO_ST: Dict[torch.dtype, str] = {v: k for k, v in _ST_TO_DTYPE.items()}

# Files that hold weights (never copied as "side files").
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".npz", ".distcp")


class HFCheckpointError(ValueError):
    """An HF folder is missing, malformed, or does not hold the tensor asked for.

    The message names the folder/file and the tensor, and says what to do.
    """


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in a safetensors folder.

    Attributes:
        name: HF parameter name (``model.layers.0.self_attn.q_proj.weight``).
        shape: tensor shape.
        dtype: torch dtype of the stored bytes.
        file: file name relative to the folder.
        nbytes: stored size in bytes.
    """

    name: str
    shape: Tuple[int, ...]
    dtype: torch.dtype
    file: str
    nbytes: int


def dtype_nbytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    """Bytes taken by a dense tensor of ``shape`` and ``dtype``."""
    n = 1
    for d in shape:
        n *= int(d)
    return n * torch.empty((), dtype=dtype).element_size()


def read_safetensors_header(path: str | os.PathLike) -> Dict[str, TensorInfo]:
    """Parse a safetensors file header (no tensor data is read).

    Args:
        path: a ``.safetensors`` file.

    Returns:
        ``{name: TensorInfo}`` in header order (``__metadata__`` excluded).

    Raises:
        HFCheckpointError: the file is truncated, the header is not JSON, or a dtype is
            not supported; the message names the file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise HFCheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (hlen,) = struct.unpack("<Q", raw)
            if hlen > 100 * 2**20:
                raise HFCheckpointError(f"{path}: safetensors header length {hlen} is implausible; the file is corrupt")
            header = json.loads(f.read(hlen))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HFCheckpointError(f"{path}: cannot read safetensors header: {exc}") from None
    out: Dict[str, TensorInfo] = {}
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_TO_DTYPE.get(entry.get("dtype"))
        if dtype is None:
            raise HFCheckpointError(f"{path}: tensor {name!r} has unsupported dtype {entry.get('dtype')!r}")
        begin, end = entry["data_offsets"]
        data_end = max(data_end, int(end))
        out[name] = TensorInfo(name=name, shape=tuple(int(d) for d in entry["shape"]), dtype=dtype,
                               file=path.name, nbytes=int(end) - int(begin))
    size, expected = path.stat().st_size, 8 + hlen + data_end
    if size < expected:
        raise HFCheckpointError(f"{path}: truncated safetensors file ({size} bytes, its header describes {expected}); "
                                "copy or download it again")
    return out


class HFSafetensorsReader(Mapping):
    """Read-only, tensor-at-a-time view of an HF safetensors folder: a ``Mapping`` of HF name ->
    tensor (``reader[name]`` raises ``KeyError`` for an absent name; :meth:`get_tensor` raises
    :class:`HFCheckpointError` naming the folder).

    Args:
        folder: a folder with ``model.safetensors`` or ``model.safetensors.index.json`` plus
            the shards it lists.

    Raises:
        HFCheckpointError: no safetensors weights in the folder (``pytorch_model.bin`` folders
            are refused with a hint to re-save with ``safe_serialization=True``), a shard
            listed in the index is missing, or the index names a tensor a shard lacks.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise HFCheckpointError(f"HF folder not found: {self.folder}")
        index_path = self.folder / WEIGHTS_INDEX_NAME
        single = self.folder / WEIGHTS_NAME
        self._info: Dict[str, TensorInfo] = {}
        if index_path.is_file():
            try:
                weight_map: Dict[str, str] = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise HFCheckpointError(f"{index_path}: not a valid safetensors index ({exc!r})") from None
            headers: Dict[str, Dict[str, TensorInfo]] = {}
            for fname in sorted(set(weight_map.values())):
                shard = self.folder / fname
                if not shard.is_file():
                    raise HFCheckpointError(f"{index_path} lists shard {fname!r}, which is missing from {self.folder}")
                headers[fname] = read_safetensors_header(shard)
            for name, fname in weight_map.items():
                if name not in headers[fname]:
                    raise HFCheckpointError(f"{index_path} maps tensor {name!r} to {fname}, but that shard does not hold it")
                self._info[name] = headers[fname][name]
        elif single.is_file():
            self._info = read_safetensors_header(single)
        else:
            legacy = [p.name for p in self.folder.glob("pytorch_model*.bin")]
            hint = (f" (found {legacy[0]}: re-save the model with save_pretrained(..., safe_serialization=True))"
                    if legacy else "")
            raise HFCheckpointError(f"{self.folder} holds neither {WEIGHTS_NAME} nor {WEIGHTS_INDEX_NAME}{hint}")

    def names(self) -> List[str]:
        """All tensor names, sorted."""
        return sorted(self._info)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._info:
            raise KeyError(name)
        return self.get_tensor(name)

    def __contains__(self, name: object) -> bool:
        return name in self._info

    def __len__(self) -> int:
        return len(self._info)

    def info(self, name: str) -> TensorInfo:
        """Shape/dtype/file of ``name`` (no data read). Raises HFCheckpointError if absent."""
        try:
            return self._info[name]
        except KeyError:
            raise HFCheckpointError(f"tensor {name!r} is missing from the HF checkpoint {self.folder}") from None

    @property
    def total_bytes(self) -> int:
        """Sum of stored tensor sizes in bytes (the index's ``metadata.total_size``)."""
        return sum(i.nbytes for i in self._info.values())

    def shapes(self) -> Dict[str, Tuple[int, ...]]:
        """``{name: shape}`` of every tensor (from the headers; no data read)."""
        return {name: info.shape for name, info in self._info.items()}

    def _handle(self, file: str):
        handles = self.__dict__.setdefault("_handles", {})
        if file not in handles:
            handles[file] = safe_open(str(self.folder / file), framework="pt", device="cpu")
        return handles[file]

    def get_tensor(self, name: str) -> torch.Tensor:
        """Load one tensor (CPU, stored dtype and shape); only its bytes are read (each file is
        opened once, memory-mapped, and kept open for later reads).

        Raises:
            HFCheckpointError: the tensor is not in the folder.
        """
        return self._handle(self.info(name).file).get_tensor(name)

    def iter_tensors(self) -> Iterator[Tuple[str, torch.Tensor]]:
        """Stream ``(name, tensor)`` for every tensor, file by file (one tensor materialised at a time)."""
        for name in sorted(self._info, key=lambda n: (self._info[n].file, n)):
            yield name, self.get_tensor(name)


def resolve_hf_source(value: str | os.PathLike) -> Path:
    """A local HF folder, or a Hugging Face Hub model id (``Qwen/Qwen3-8B``) fetched into the HF cache.

    Only the command-line tools call this (tests never download). An existing path is
    returned unchanged; ``org/name`` that is not a local path is fetched by
    :func:`megatron_brrm.hub.resolve_hf_path`; anything else is returned for the caller to report.

    Raises:
        HFCheckpointError: the hub download failed (the message says how to fix it).
    """
    path = Path(value)
    if path.exists() or not is_hub_id(str(value)):
        return path
    try:
        return Path(resolve_hf_path(value))
    except FileNotFoundError as exc:
        raise HFCheckpointError(str(exc)) from None


def parse_size(value: str | int) -> int:
    """``"5GB"`` -> 5_000_000_000, ``"512MiB"`` -> 536_870_912, ``1000`` -> 1000 (bytes).

    Decimal (KB/MB/GB) and binary (KiB/MiB/GiB) units, as transformers' ``max_shard_size``.

    Raises:
        ValueError: the string is not a number followed by an optional unit.
    """
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B|B)?\s*", str(value), flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot parse size {value!r}; use e.g. '5GB', '500MB' or '2GiB'")
    number, unit = float(m.group(1)), (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    return int(number * scale)


def shard_file_names(num_shards: int) -> List[str]:
    """HF shard names: ``model.safetensors`` for one shard, else ``model-0000k-of-0000N.safetensors``."""
    if num_shards == 1:
        return [WEIGHTS_NAME]
    return [f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors" for i in range(num_shards)]


class ShardedSafetensorsWriter:
    """Write a known set of tensors into HF safetensors shards, one tensor at a time.

    The plan (every tensor's name, shape and dtype) is fixed at construction: tensors are
    packed into shards in plan order, a new shard starting when the next tensor would push
    the current one past ``max_shard_bytes`` (a tensor larger than that gets a shard of its
    own, as transformers does). Headers are written immediately; :meth:`write` then puts
    each tensor's bytes at its planned offset, so tensors may arrive in any order and only
    the tensor being written is in memory. :meth:`close` checks every planned tensor was
    written and writes ``model.safetensors.index.json`` (``metadata.total_size`` = sum of
    tensor bytes, ``weight_map``) when there are several shards.

    Args:
        out_dir: existing folder to write into (normally from :func:`atomic_output_dir`).
        plan: ``(name, shape, dtype)`` per tensor, names unique.
        max_shard_bytes: shard size limit in bytes (default 5 GB, as transformers).
        metadata: extra ``__metadata__`` strings; ``format: pt`` is always set (transformers
            requires it).

    Raises:
        HFCheckpointError: duplicate names in the plan, an unsupported dtype; from
            :meth:`write`: an unplanned tensor, a second write, a shape or dtype mismatch;
            from :meth:`close`: planned tensors never written (all named).
    """

    def __init__(self, out_dir: str | os.PathLike, plan: Sequence[Tuple[str, Sequence[int], torch.dtype]],
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, metadata: Optional[Dict[str, str]] = None):
        self.out_dir = Path(out_dir)
        if max_shard_bytes <= 0:
            raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
        shards: List[List[Tuple[str, Tuple[int, ...], torch.dtype, int]]] = [[]]
        seen = set()
        current = 0
        for name, shape, dtype in plan:
            if name in seen:
                raise HFCheckpointError(f"tensor {name!r} appears twice in the write plan")
            if dtype not in _DTYPE_TO_ST:
                raise HFCheckpointError(f"tensor {name!r}: dtype {dtype} cannot be stored in safetensors")
            seen.add(name)
            nbytes = dtype_nbytes(shape, dtype)
            if shards[-1] and current + nbytes > max_shard_bytes:
                shards.append([])
                current = 0
            shards[-1].append((name, tuple(int(d) for d in shape), dtype, nbytes))
            current += nbytes
        if not shards[-1]:
            shards.pop()
        self.file_names = shard_file_names(max(len(shards), 1))
        self._loc: Dict[str, Tuple[int, int, Tuple[int, ...], torch.dtype, int]] = {}
        self._files = []
        self.total_size = 0
        meta = {"format": "pt", **(metadata or {})}
        for shard_idx, entries in enumerate(shards):
            header: Dict[str, dict] = {"__metadata__": meta}
            offset = 0
            for name, shape, dtype, nbytes in entries:
                header[name] = {"dtype": _DTYPE_TO_ST[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
                offset += nbytes
            blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
            blob += b" " * (-len(blob) % 8)  # 8-byte alignment of the data section (as safetensors does)
            base = 8 + len(blob)
            path = self.out_dir / self.file_names[shard_idx]
            f = open(path, "w+b")
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            f.truncate(base + offset)
            self._files.append(f)
            for name, shape, dtype, nbytes in entries:
                begin = header[name]["data_offsets"][0]
                self._loc[name] = (shard_idx, base + begin, shape, dtype, nbytes)
            self.total_size += offset
        self._written: set = set()
        self._closed = False

    def __enter__(self) -> "ShardedSafetensorsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._close_files()

    def planned_names(self) -> List[str]:
        """Names of all planned tensors (plan order)."""
        return list(self._loc)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write one planned tensor's bytes (CPU copy made if needed; shape and dtype must match).

        Raises:
            HFCheckpointError: ``name`` not planned, already written, or shape/dtype differ.
        """
        if name not in self._loc:
            raise HFCheckpointError(f"unexpected tensor {name!r}: not in the planned HF tensors of this checkpoint")
        if name in self._written:
            raise HFCheckpointError(f"tensor {name!r} written twice")
        shard_idx, offset, shape, dtype, nbytes = self._loc[name]
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise HFCheckpointError(f"tensor {name!r}: got shape {tuple(tensor.shape)} {tensor.dtype}, "
                                    f"expected {shape} {dtype}")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        f = self._files[shard_idx]
        f.seek(offset)
        f.write(memoryview(data.numpy()))
        self._written.add(name)

    def _close_files(self) -> None:
        for f in self._files:
            if not f.closed:
                f.close()

    def close(self) -> Optional[Path]:
        """Finish: flush shards, write the index when sharded; return the index path or None.

        Raises:
            HFCheckpointError: some planned tensors were never written (names listed).
        """
        if self._closed:
            return None
        missing = [n for n in self._loc if n not in self._written]
        if missing:
            self._close_files()
            shown = ", ".join(missing[:10]) + (f" ... ({len(missing)} in all)" if len(missing) > 10 else "")
            raise HFCheckpointError(f"HF export incomplete: tensors never written: {shown}")
        for f in self._files:
            f.flush()
            os.fsync(f.fileno())
        self._close_files()
        self._closed = True
        if len(self.file_names) == 1:
            return None
        index = {"metadata": {"total_size": self.total_size},
                 "weight_map": {n: self.file_names[loc[0]] for n, loc in sorted(self._loc.items())}}
        path = self.out_dir / WEIGHTS_INDEX_NAME
        path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        return path


@contextmanager
def atomic_output_dir(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder that becomes ``target`` only if the block succeeds.

    The temporary folder is ``<parent>/.<name>.tmp-XXXX`` (same filesystem, so the final
    ``os.rename`` is atomic). On any exception (including KeyboardInterrupt) it is deleted
    and nothing appears under ``target``. A process killed with SIGKILL can leave the hidden
    temporary folder behind, never a half-written ``target``.

    Args:
        target: the folder to create.
        overwrite: replace an existing ``target`` (the old one is removed after the rename).

    Raises:
        FileExistsError: ``target`` exists and ``overwrite`` is False.
    """
    target = Path(target).absolute()
    if target.exists() and not overwrite:
        raise FileExistsError(f"output folder {target} already exists; remove it or pass --overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rename(target, old / "x")
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def is_weight_file(name: str) -> bool:
    """Whether a file name is a weight file or weight index (not copied as a side file)."""
    return name.endswith(_WEIGHT_SUFFIXES) or name.endswith(".index.json")


def copy_hf_side_files(src: str | os.PathLike, dst: str | os.PathLike, skip: Sequence[str] = (CONFIG_NAME,)) -> List[str]:
    """Copy every non-weight file of an HF folder (tokenizer, chat template, generation config, README...).

    Weight files (``*.safetensors``, ``*.bin``, indexes...) and the names in ``skip`` are left
    out; sub-folders are not copied.

    Returns:
        The copied file names, sorted.
    """
    src, dst = Path(src), Path(dst)
    copied = []
    for p in sorted(src.iterdir()):
        if p.is_file() and not is_weight_file(p.name) and p.name not in skip and not p.name.startswith("."):
            shutil.copy2(p, dst / p.name)
            copied.append(p.name)
    return copied


def read_hf_config(folder: str | os.PathLike) -> dict:
    """``config.json`` of an HF folder as a dict.

    Raises:
        HFCheckpointError: missing or not JSON (message names the file).
    """
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise HFCheckpointError(f"{path} not found: an HF model folder needs a config.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise HFCheckpointError(f"{path}: invalid JSON ({exc})") from None


_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def write_hf_config(config: dict, dst: str | os.PathLike, architectures: Sequence[str], dtype: torch.dtype) -> Path:
    """Write ``config.json`` with ``architectures`` and the weights' dtype set.

    The dtype goes under the key(s) the source config already uses (transformers >= 5 writes
    ``dtype``, older versions ``torch_dtype``); ``torch_dtype`` when it has neither, which
    both major transformers versions read.
    """
    cfg = dict(config)
    cfg["architectures"] = list(architectures)
    name = _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))
    keys = [k for k in ("dtype", "torch_dtype") if k in cfg] or ["torch_dtype"]
    for k in keys:
        cfg[k] = name
    path = Path(dst) / CONFIG_NAME
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return path
