"""Types shared by the benchmark loaders: one chosen-vs-rejected comparison, and a loaded benchmark."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from megatron_brrm.data.io import iter_records
from megatron_brrm.data.schema import DataError


@dataclass
class Comparison:
    """One judged unit of a benchmark: a context and two responses, ``chosen`` being the better.

    Attributes:
        benchmark: ``"rewardbench"``, ``"rmbench"`` or ``"rmb"``.
        comparison_id: unique across all benchmarks, stable across runs (it seeds the A/B
            order and keys the generation cache), e.g. ``"rmbench:chat:12:c0r2"``.
        item_id: the benchmark item the comparison belongs to (a RewardBench row, an
            RM-Bench item with its 9 comparisons, an RMB pair, an RMB best-of-N group).
            ``--limit`` counts items, never splitting one.
        context: ``[{"role": "user"|"assistant", "content": str}, ...]`` ending with a user turn.
        chosen: the preferred response text.
        rejected: the dispreferred response text.
        stratum: ``(section, subset)`` used by :func:`select_items` to spread a ``--limit``
            evenly over a benchmark's sections.
        meta: benchmark-specific scoring keys (RewardBench ``subset``/``section``; RM-Bench
            ``domain``/``chosen_style``/``rejected_style``; RMB ``set``/``goal``/``scenario``),
            plus ``source`` (``file:line`` or ``file[index]``) for error messages.
    """

    benchmark: str
    comparison_id: str
    item_id: str
    context: List[Dict[str, str]]
    chosen: str
    rejected: str
    stratum: Tuple[str, str]
    meta: Dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchmarkData:
    """A loaded benchmark.

    Attributes:
        name: benchmark name.
        comparisons: every comparison, in file order (items contiguous).
        missing: the parts the official benchmark has but the data folder lacks (subset,
            domain or scenario-file names); scores touching them are partial.
        notes: human-readable coverage notes for the report (what is partial and why).
        root: the folder the data was read from.
        subsampled: True when the folder holds fewer records than the official release
            (where that count is known), e.g. the repository's ``samples/``; scores are then
            marked partial.
    """

    name: str
    comparisons: List[Comparison]
    missing: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    root: Optional[str] = None
    subsampled: bool = False


def read_json_file(path: Path) -> Any:
    """Parse a whole JSON file; raise :class:`DataError` naming the file, line and column on bad JSON."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg}); "
                        f"the file must hold one JSON list of records") from None


def read_jsonl_file(path: Path) -> List[Tuple[int, dict]]:
    """Parse a JSONL file into ``[(line_number, object), ...]``; blank lines are skipped.

    Reads through :func:`megatron_brrm.data.io.iter_records` (the project's one JSONL reader).

    Raises:
        DataError: a line is not valid JSON or not an object (message names ``file:line``).
    """
    rows = []
    for rec in iter_records(path):
        if rec.error is not None:
            raise DataError(f"{rec.where}: {rec.error}")
        if not isinstance(rec.value, dict):
            raise DataError(f"{rec.where}: expected a JSON object, got {type(rec.value).__name__}")
        rows.append((rec.index, rec.value))
    return rows


def require(record: Any, keys: Sequence[str], where: str, types: Optional[Dict[str, type]] = None) -> None:
    """Check that ``record`` is a dict holding ``keys`` (with the given types); raise :class:`DataError`."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in keys if k not in record]
    if missing:
        raise DataError(f"{where}: missing key(s) {missing}; present keys: {sorted(record)}")
    for key, typ in (types or {}).items():
        if key in record and not isinstance(record[key], typ):
            raise DataError(f"{where}: key {key!r} must be {typ.__name__}, got {type(record[key]).__name__}")


def check_unique(comparisons: Sequence[Comparison]) -> None:
    """Raise :class:`DataError` if two comparisons share an id (the same record loaded twice)."""
    seen: Dict[str, str] = {}
    for comp in comparisons:
        where = comp.meta.get("source", "?")
        if comp.comparison_id in seen:
            raise DataError(f"{where}: duplicate comparison id {comp.comparison_id!r} (also at {seen[comp.comparison_id]}); "
                            f"remove the duplicate file or record from the data folder")
        seen[comp.comparison_id] = where


def select_items(comparisons: Sequence[Comparison], limit: Optional[int]) -> List[Comparison]:
    """Keep the comparisons of at most ``limit`` items, spread round-robin over sections then subsets.

    Items are taken in this order: the first item of each section (sections in first-seen
    order, and within a section its subsets round-robin), then the second, and so on, so a
    small ``--limit`` still touches every section. The choice depends only on the data and
    ``limit`` (never on the seed). ``limit=None`` keeps everything. The returned
    comparisons keep file order.

    Raises:
        ValueError: ``limit`` is negative.
    """
    if limit is None:
        return list(comparisons)
    if limit < 0:
        raise ValueError(f"--limit must be >= 0, got {limit}")
    # item -> stratum, in file order
    sections: Dict[str, Dict[str, List[str]]] = {}
    seen_items = set()
    for comp in comparisons:
        if comp.item_id in seen_items:
            continue
        seen_items.add(comp.item_id)
        section, subset = comp.stratum
        sections.setdefault(section, {}).setdefault(subset, []).append(comp.item_id)
    per_section: List[List[str]] = [_round_robin(list(subsets.values())) for subsets in sections.values()]
    chosen = set(_round_robin(per_section)[:limit])
    return [c for c in comparisons if c.item_id in chosen]


def _round_robin(lists: List[List[str]]) -> List[str]:
    out: List[str] = []
    depth = max((len(x) for x in lists), default=0)
    for k in range(depth):
        for lst in lists:
            if k < len(lst):
                out.append(lst[k])
    return out


def messages_from_turns(turns: Any, where: str) -> List[Dict[str, str]]:
    """Validate a conversation (``[{"role", "content", ...}]``) and keep only role and content.

    Raises:
        DataError: empty, a turn with an unknown role or non-string content, or not ending
            with a user turn (message names ``where`` and the turn index).
    """
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: the conversation must be a non-empty list of turns")
    out = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant", "system") \
                or not isinstance(turn.get("content"), str):
            raise DataError(f"{where}: turn {k} must be {{'role': 'user'|'assistant'|'system', 'content': str}}, "
                            f"got {str(turn)[:200]}")
        out.append({"role": turn["role"], "content": turn["content"]})
    if out[-1]["role"] != "user":
        raise DataError(f"{where}: the conversation must end with a user turn, ends with {out[-1]['role']!r}")
    return out
