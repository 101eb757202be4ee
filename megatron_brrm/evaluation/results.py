"""results.json: writing, reading, and replay (re-scoring saved generations without a model).

File layout (``schema_version`` 1)::

    {"schema_version": 1,
     "config":     {...run settings: model, engine, protocol, orders, seed, limit, ...},
     "summary":    {"rewardbench": x, "rmbench": y, "rmb": z, "avg": a},
     "benchmarks": {name: {"overall", "scores", "format_errors", "coverage", ...}},
     "records":    [Judgement.to_dict(), ...]}

Minimal input for ``--engine replay`` (outputs produced elsewhere): a JSON object with a
``records`` list (or a bare list, or a JSONL file of records), each record holding

* ``comparison_id`` (as our loaders name it, e.g. ``"rewardbench:alpacaeval-easy:30"``,
  ``"rmbench:chat:12:c0r2"``, ``"rmb:pair:15173"``, ``"rmb:bon:3315:l0"``),
* ``swapped`` (bool: true when the chosen response was shown as Response 2), and
* either ``turn_texts`` (list of generated turn texts; the last is parsed by the judge
  protocol's verdict parser), ``verdict`` (1, 2 or null), or, for a scalar reward model,
  ``rewards`` = ``[reward of Response 1, reward of Response 2]`` (also read from
  ``extra.rewards``; the higher one wins, equal rewards are no verdict).

Optional: ``primary`` (which order is the single-order result when both are given;
default: the order our seed would have drawn). Everything else (labels, subsets, items)
is taken from the benchmark data, never from the file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from megatron_brrm.data.schema import DataError

from .benchmarks.base import Comparison
from .orders import Presentation, record_key, seeded_swap
from .records import Judgement
from .scalar_judging import verdict_from_rewards

SCHEMA_VERSION = 1


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` via a temporary file and rename (no torn files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    os.replace(tmp, path)


def build_results(config: Mapping[str, Any], benchmarks: Mapping[str, dict], summary: Mapping[str, Any],
                  records: Sequence[Judgement]) -> dict:
    """Assemble the results.json object (see the module docstring)."""
    return {"schema_version": SCHEMA_VERSION, "config": dict(config), "summary": dict(summary),
            "benchmarks": dict(benchmarks), "records": [r.to_dict() for r in records]}


def read_raw_records(path: Path) -> Tuple[List[Tuple[str, dict]], Dict[str, Any]]:
    """Read records from a results.json, a bare JSON list, or a JSONL file.

    Returns:
        ``([(where, record_dict), ...], config)``; ``config`` is the file's ``config`` or ``{}``.

    Raises:
        DataError: unreadable file, bad JSON (names line/column), or no ``records`` list.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the replay file ({exc.strerror})") from None
    if path.suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((f"{path}:{lineno}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
        return rows, {}
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg})") from None
    config: Dict[str, Any] = {}
    if isinstance(obj, dict):
        if not isinstance(obj.get("records"), list):
            raise DataError(f"{path}: expected a 'records' list (see evaluation/README.md, replay schema)")
        config = obj.get("config") or {}
        obj = obj["records"]
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a JSON object with 'records' or a JSON list of records")
    return [(f"{path} records[{k}]", r) for k, r in enumerate(obj)], config


def replay_judgements(raw: Sequence[Tuple[str, dict]], comparisons: Mapping[str, Comparison], parse_verdict,
                      seed: int) -> Tuple[Dict[str, Judgement], List[str]]:
    """Rebuild judgements from stored records against freshly loaded comparisons.

    Args:
        raw: ``(where, record)`` pairs from :func:`read_raw_records`.
        comparisons: comparison id -> comparison (the selected benchmark data).
        parse_verdict: ``text -> Verdict`` (the judge protocol's final-turn parser); used
            whenever a record has ``turn_texts``, so stored verdicts are re-derived. None for a
            scalar model's results (records are decided by their ``rewards``).
        seed: order seed, to decide ``primary`` when a record does not say.

    Returns:
        ``(judgements by record key, notes)``; records whose comparison is not in
        ``comparisons`` (another benchmark, or outside ``--limit``) are skipped and counted
        in the notes.

    Raises:
        DataError: a record lacks ``comparison_id``/``swapped`` or both ``turn_texts`` and
            ``verdict``, has a bad ``verdict`` value, or repeats a (comparison, order).
    """
    out: Dict[str, Judgement] = {}
    skipped = 0
    for where, rec in raw:
        if not isinstance(rec, dict) or "comparison_id" not in rec or "swapped" not in rec:
            raise DataError(f"{where}: a replay record needs 'comparison_id' and 'swapped' "
                            f"(see evaluation/README.md, replay schema)")
        comp = comparisons.get(rec["comparison_id"])
        if comp is None:
            skipped += 1
            continue
        swapped = rec["swapped"]
        if not isinstance(swapped, bool):
            raise DataError(f"{where}: 'swapped' must be true or false, got {swapped!r}")
        primary = rec.get("primary")
        if primary is None:
            primary = seeded_swap(seed, comp.comparison_id) == swapped
        pres = Presentation(comp, swapped, bool(primary))
        texts = rec.get("turn_texts")
        rewards = rec.get("rewards", (rec.get("extra") or {}).get("rewards"))
        if not texts and rewards is not None:  # a scalar reward model's record: decided by its rewards
            if (not isinstance(rewards, list) or len(rewards) != 2
                    or not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in rewards)):
                raise DataError(f"{where}: 'rewards' must be [reward of Response 1, reward of Response 2], got {rewards!r}")
            verdict, error = verdict_from_rewards(rewards)
            j = Judgement.build(pres, [], verdict, error, extra={**(rec.get("extra") or {}), "rewards": list(rewards)})
            if j.key in out:
                raise DataError(f"{where}: a second record for {comp.comparison_id!r} in the same order "
                                f"(swapped={swapped}); keep one")
            out[j.key] = j
            continue
        if texts is not None:
            if parse_verdict is None:
                raise DataError(f"{where}: this replay is of a scalar reward model: records need 'rewards' "
                                "[reward of Response 1, reward of Response 2]")
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
                raise DataError(f"{where}: 'turn_texts' must be a non-empty list of strings")
            v = parse_verdict(texts[-1])
            verdict, error = v.preference, v.format_error
            if verdict is None and (rec.get("extra") or {}).get("truncated") and rec.get("format_error"):
                error = rec["format_error"]  # keep the rollout's "truncated: ..." reason
        elif "verdict" in rec:
            verdict = rec["verdict"]
            if verdict not in (1, 2, None) or isinstance(verdict, bool):
                raise DataError(f"{where}: 'verdict' must be 1, 2 or null, got {verdict!r}")
            texts, error = [], (None if verdict is not None else "no verdict in the replayed record")
        else:
            raise DataError(f"{where}: a replay record needs 'turn_texts' (generated text per turn) or 'verdict'")
        j = Judgement.build(pres, texts, verdict, error, extra=rec.get("extra"))
        if j.key in out:
            raise DataError(f"{where}: a second record for {comp.comparison_id!r} in the same order "
                            f"(swapped={swapped}); keep one")
        out[j.key] = j
    notes = [f"replay: {skipped} record(s) for comparisons outside this run's selection were ignored"] if skipped else []
    return out, notes


def index_comparisons(comparisons: Sequence[Comparison]) -> Dict[str, Comparison]:
    """comparison id -> comparison."""
    return {c.comparison_id: c for c in comparisons}


def records_in_order(comparisons: Sequence[Comparison], judgements: Mapping[str, Judgement]) -> List[Judgement]:
    """The judgements ordered like the comparisons (unswapped order first)."""
    out = []
    for c in comparisons:
        for swapped in (False, True):
            j = judgements.get(record_key(c.comparison_id, swapped))
            if j is not None:
                out.append(j)
    return out


def load_results(path: Path) -> dict:
    """Read a results.json written by ``run.py``; raise :class:`DataError` if it is not one."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg})") from None
    if not isinstance(obj, dict) or "benchmarks" not in obj or "summary" not in obj:
        raise DataError(f"{path}: not a results file of evaluation/run.py (no 'benchmarks'/'summary' keys)")
    return obj
