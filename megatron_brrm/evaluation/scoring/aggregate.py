"""Turn judged records into a benchmark's result: single-order and both-orders scores,
position consistency, format-error counts and coverage notes."""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

from ..benchmarks.base import BenchmarkData, Comparison
from ..orders import record_key
from ..records import Judgement
from . import SCORERS
from .common import Outcome, pct, unparseable_credit


def _primary(records: List[Judgement]) -> Optional[Judgement]:
    for r in records:
        if r.primary:
            return r
    return records[0] if len(records) == 1 else None


def credit(record: Judgement, unparseable: str = "wrong") -> float:
    """The credit of one judged order: 1.0 right, 0.0 wrong, unparseable per ``unparseable``
    (``"wrong"`` 0.0, ``"tie"`` 0.5; :func:`~evaluation.scoring.common.unparseable_credit`)."""
    if record.verdict is None:
        return unparseable_credit(unparseable)
    return 1.0 if record.correct else 0.0


def score_benchmark(data: BenchmarkData, comparisons: Sequence[Comparison],
                    judgements: Mapping[str, Judgement], orders: str, unparseable: str = "wrong") -> dict:
    """Score one benchmark.

    Args:
        data: the loaded benchmark (for coverage notes).
        comparisons: the comparisons that were to be judged (after ``--limit``).
        judgements: record key (:func:`evaluation.orders.record_key`) -> record.
        orders: ``"single"`` or ``"both"``.
        unparseable: ``"wrong"`` (an unparseable verdict scores 0, BR-RM) or ``"tie"``
            (0.5, RewardBench's generative rule).

    Returns:
        ``{"scores": tree, "overall": float|None, "n_comparisons", "n_records",
        "format_errors": {"count", "rate"}, "missing_generations": int, "unparseable_as",
        "coverage": {"missing", "notes", "partial", "sampled"}}``, plus for ``orders == "both"``:
        ``"missing_second_order"``, ``"scores_both_orders"`` (a comparison's credit is the
        product of its two orders' credits: 1 only when correct in both), ``"overall_both_orders"``
        and ``"position_consistency"`` (percent of comparisons where both verdicts parse and
        name the same response). ``sampled`` is True when every score is computed on a sample
        of the benchmark (``--limit``, or a data folder smaller than the official release).

    Raises:
        ValueError: unknown ``unparseable`` rule.
    """
    unparseable_credit(unparseable)  # validate before any work
    scorer = SCORERS[data.name]
    single: List[Outcome] = []
    both: List[Outcome] = []
    consistent = 0
    n_both = 0
    records: List[Judgement] = []
    missing = 0
    one_order = 0
    for comp in comparisons:
        mine = [judgements[k] for k in (record_key(comp.comparison_id, False), record_key(comp.comparison_id, True))
                if k in judgements]
        records += mine
        first = _primary(mine)
        if first is None:
            missing += 1
            single.append(Outcome(comp, None))
            both.append(Outcome(comp, None))
            continue
        single.append(Outcome(comp, credit(first, unparseable)))
        if orders == "both":
            if len(mine) < 2:
                one_order += 1
                both.append(Outcome(comp, None))
                continue
            a, b = mine
            n_both += 1
            both.append(Outcome(comp, credit(a, unparseable) * credit(b, unparseable)))
            if a.verdict is not None and b.verdict is not None and (a.verdict == a.label) == (b.verdict == b.label):
                consistent += 1
    errors = sum(1 for r in records if r.format_error is not None or r.verdict is None)
    scores = scorer(single, missing=list(data.missing))
    notes = list(data.notes)
    if missing:
        notes.append(f"{data.name}: {missing} comparison(s) have no generation and are left out of the scores")
    if one_order:
        notes.append(f"{data.name}: {one_order} comparison(s) were judged in one order only and are left out "
                     f"of the both-orders scores")
    limited = len(comparisons) < len(data.comparisons)
    if limited:
        notes.append(f"{data.name}: --limit kept {len(comparisons)} of {len(data.comparisons)} comparisons")
    if data.name == "rmb" and scores.get("bon_incomplete_items"):
        notes.append(f"rmb: {scores['bon_incomplete_items']} best-of-N item(s) lack some or all of their "
                     f"comparisons and are left out of the BoN scores")
    out = {
        "overall": scores["overall"],
        "scores": scores,
        "n_comparisons": len(comparisons),
        "n_records": len(records),
        "format_errors": {"count": errors, "rate": pct(errors, len(records))},
        "missing_generations": missing,
        "unparseable_as": unparseable,
        "coverage": {"missing": list(data.missing), "notes": notes, "sampled": bool(data.subsampled or limited),
                     "partial": bool(data.missing) or data.subsampled or bool(scores.get("partial")) or bool(missing)
                     or limited},
    }
    if orders == "both":
        both_scores = scorer(both, missing=list(data.missing))
        out.update({"missing_second_order": one_order, "scores_both_orders": both_scores,
                    "overall_both_orders": both_scores["overall"], "position_consistency": pct(consistent, n_both)})
    return out


def summary(benchmarks: Mapping[str, dict], key: str = "overall") -> Dict[str, Optional[float]]:
    """Headline row: each benchmark's ``key`` score and ``avg`` = the mean of those not None.

    The BR-RM README's Avg is the plain mean of RewardBench, RM-Bench and RMB; with fewer
    benchmarks the average is over those present (the report marks it partial).
    """
    row: Dict[str, Optional[float]] = {name: res.get(key) for name, res in benchmarks.items()}
    vals = [v for v in row.values() if v is not None]
    row["avg"] = sum(vals) / len(vals) if vals else None
    return row
