"""Reading raw source files and reading/writing PreferencePair JSONL.

Raw files are streamed record by record, each with a location string used in every error:
``"<file>:<line>"`` for JSONL (1-based line), ``"<file>:row <n>"`` for a JSON list or a parquet
table (1-based record index). ``.gz`` is decompressed transparently for JSONL and JSON.
"""
from __future__ import annotations

import gzip
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional, Union

from .schema import DataError, PreferencePair

PathLike = Union[str, Path]


@dataclass
class RawRecord:
    """One record of a raw source file.

    Attributes:
        where: location for messages, ``"file:line"`` or ``"file:row n"``.
        index: 1-based line (JSONL) or record index (JSON list, parquet).
        value: the decoded object (``None`` when ``error`` is set).
        error: why the record could not be decoded (invalid JSON), else ``None``.
    """

    where: str
    index: int
    value: Any = None
    error: Optional[str] = None


def _strip_gz(name: str) -> str:
    return name[:-3] if name.endswith(".gz") else name


def file_tag(path: PathLike) -> str:
    """File name without directory and data extensions (``test.jsonl.gz`` -> ``test``)."""
    name = _strip_gz(Path(path).name)
    for ext in (".jsonl", ".json", ".parquet"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, "r", encoding="utf-8")


def iter_records(path: PathLike) -> Iterator[RawRecord]:
    """Stream the records of a JSONL, JSON-list, parquet or gzip-compressed JSON/JSONL file.

    The format follows the extension (``.parquet``; ``.jsonl``; ``.json`` holding either one list
    or JSONL; each optionally ``.gz``). A JSONL line that is not valid JSON is yielded with
    ``error`` set (so callers can skip and count it); blank lines are ignored.

    Raises:
        DataError: the file is missing, has an unknown extension, or a whole-file JSON document
            cannot be parsed (``"file:line:col: invalid JSON"``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    name = _strip_gz(path.name)
    if name.endswith(".parquet"):
        yield from _iter_parquet(path)
    elif name.endswith(".jsonl"):
        yield from _iter_jsonl(path)
    elif name.endswith(".json"):
        with _open_text(path) as f:
            head = f.read(4096).lstrip()
        if head.startswith("["):
            yield from _iter_json_list(path)
        else:
            yield from _iter_jsonl(path)
    else:
        raise DataError(f"{path}: unknown data file type; expected .jsonl, .json, .parquet (optionally .gz)")


def _iter_jsonl(path: Path) -> Iterator[RawRecord]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                yield RawRecord(where, lineno, json.loads(line))
            except json.JSONDecodeError as exc:
                yield RawRecord(where, lineno, None, f"invalid JSON ({exc.msg} at column {exc.colno})")


def _iter_json_list(path: Path) -> Iterator[RawRecord]:
    with _open_text(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for i, value in enumerate(data, 1):
        yield RawRecord(f"{path}:row {i}", i, value)


def _iter_parquet(path: Path) -> Iterator[RawRecord]:
    try:
        import pyarrow.parquet as pq  # lazy: heavy, only needed on this path
    except ImportError:  # pragma: no cover - pyarrow is a declared dependency
        raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several error types for a corrupt file
        raise DataError(f"{path}: not a readable parquet file ({exc})") from None
    i = 0
    for batch in table.iter_batches(batch_size=1024):
        for value in batch.to_pylist():
            i += 1
            yield RawRecord(f"{path}:row {i}", i, value)


def read_pairs(path: PathLike) -> List[PreferencePair]:
    """Read a PreferencePair JSONL file (as written by :func:`write_pairs`).

    Raises:
        DataError: ``"file:line: ..."`` for invalid JSON, a missing/unknown field or a value that
            fails :meth:`PreferencePair.validate`.
    """
    return list(iter_pairs(path))


def iter_pairs(path: PathLike) -> Iterator[PreferencePair]:
    """Stream :class:`PreferencePair` records from JSONL; errors as in :func:`read_pairs`."""
    for rec in iter_records(path):
        if rec.error:
            raise DataError(f"{rec.where}: {rec.error}")
        yield PreferencePair.from_dict(rec.value, where=rec.where)


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_pairs(path: PathLike, pairs: Iterable[PreferencePair]) -> int:
    """Write pairs as JSONL atomically (temp file in the same folder, then ``os.replace``).

    Each pair is validated first; a reader never sees a half-written file. Returns the row count.

    Raises:
        DataError: a pair fails validation (nothing is written then).
    """
    rows = [p.validate().to_dict() for p in pairs]

    def write(f):
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    _atomic_write(Path(path), write)
    return len(rows)


def write_json(path: PathLike, obj: Any) -> None:
    """Write one JSON document atomically (indent 2, UTF-8)."""
    _atomic_write(Path(path), lambda f: f.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n"))
