"""Prompts of the evaluation benchmarks, for removing them from training data.

Reads the three benchmark layouts documented in SOURCES.md sections 1-3 and 6 (this module must
not import ``evaluation/``, so it carries its own small readers):

* ``rewardbench/``: JSONL / JSON / parquet rows with ``prompt`` (the renamed parquet copy of
  section 6 uses ``question``);
* ``rmbench/``: JSON lists of items with ``prompt``;
* ``rmb/``: JSON lists (any depth, e.g. ``RMB_dataset/Pairwise_set/...``) with
  ``conversation_input`` = list of ``{role, content}``; every user turn counts.

All prompts are compared in :func:`~megatron_brrm.data.text.normalize_text` form.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, Set, Union

from .io import iter_records
from .schema import DataError
from .text import normalize_text

BENCHMARK_DIRS = ("rewardbench", "rmbench", "rmb")
_DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")


def _data_files(folder: Path) -> Iterator[Path]:
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name.endswith(_DATA_SUFFIXES):
            yield p


def _prompts_of(folder: Path, kind: str) -> Set[str]:
    keys: Set[str] = set()
    for path in _data_files(folder):
        for rec in iter_records(path):
            row = rec.value
            if rec.error or not isinstance(row, dict):
                raise DataError(f"{rec.where}: {rec.error or 'expected a JSON object'} (benchmark file)")
            if kind == "rmb":
                turns = row.get("conversation_input")
                if not isinstance(turns, list):
                    raise DataError(f"{rec.where}: RMB record without a 'conversation_input' list")
                texts = [t.get("content", "") for t in turns if isinstance(t, dict) and t.get("role") == "user"]
            else:
                text = row.get("prompt", row.get("question"))
                if not isinstance(text, str):
                    raise DataError(f"{rec.where}: {kind} record without a 'prompt' string")
                texts = [text]
            keys.update(k for k in (normalize_text(t) for t in texts if isinstance(t, str)) if k)
    return keys


def benchmark_prompts(root: Union[str, Path]) -> Dict[str, Set[str]]:
    """Normalised prompts per benchmark found under ``root``.

    ``root`` is a folder holding any of ``rewardbench/``, ``rmbench/``, ``rmb/`` (like
    ``samples/`` or the shared data folder), or one of those folders itself.

    Returns:
        ``{"rewardbench": {...}, "rmbench": {...}, "rmb": {...}}`` for the benchmarks present.

    Raises:
        DataError: ``root`` is missing or holds none of the three, or a benchmark row is malformed.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: benchmark folder does not exist")
    found = {name: root / name for name in BENCHMARK_DIRS if (root / name).is_dir()}
    if not found and root.name in BENCHMARK_DIRS:
        found = {root.name: root}
    if not found:
        raise DataError(f"{root}: holds none of {', '.join(d + '/' for d in BENCHMARK_DIRS)}; "
                        "point --decontaminate at a folder laid out like samples/")
    return {name: _prompts_of(folder, name) for name, folder in found.items()}
