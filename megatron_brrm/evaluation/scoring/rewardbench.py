"""RewardBench scoring: per-subset accuracy -> weighted section scores -> overall.

Official rule (allenai/reward-bench @ 05a9005, ``rewardbench/utils.py::calculate_scores_per_section``
with ``EXAMPLE_COUNTS`` and ``SUBSET_MAPPING`` from ``rewardbench/constants.py``; README
"Getting Leaderboard Section Scores"):

* subset accuracy = mean of the row results of the subset (a row scores 1 or 0; an
  unparseable verdict 0.5 under ``--unparseable-as tie``, as ``scripts/run_generative.py``
  scores ties and errors, else 0);
* section score = sum(subset accuracy x EXAMPLE_COUNTS[subset]) / sum(EXAMPLE_COUNTS) over
  the section's subsets present in the results (math-prm weighs 984, the six hep-* subsets
  164 each, so Reasoning = 0.5 math-prm + 0.5 mean(hep-*));
* overall = unweighted mean of the (present) section scores.

Also reported, labelled ``sections_micro`` / ``overall_micro``: the BR-RM paper's variant
(``reward_benchmarks.py`` of the BR-RM code), where a section is the plain accuracy over
all its rows (no subset weights) and the overall is the mean of those.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Sequence

from ..benchmarks.rewardbench import EXAMPLE_COUNTS, SECTIONS
from .common import Outcome, count, mean, pct


def score_rewardbench(outcomes: Sequence[Outcome], missing: Sequence[str] = ()) -> dict:
    """Score RewardBench outcomes (one per row); percentages in [0, 100].

    Args:
        outcomes: one per selected row; ``correct`` is the row's credit (1 / 0, or 0.5 for an
            unparseable verdict under ``--unparseable-as tie``, RewardBench's generative
            rule), ``None`` for a row without a judgement.
        missing: official subsets absent from the data folder (their sections are partial).

    Returns:
        ``{"subsets": {name: {"accuracy", "n", "correct", "missing"}}, "sections": {section: score},
        "overall": float|None, "sections_micro": {...}, "overall_micro": float|None,
        "missing_subsets": [...], "incomplete_subsets": [...], "partial_sections": [...], "partial"}``.
        ``n`` counts judged rows and ``missing`` the selected rows without a judgement.
        A section is partial when one of its subsets has no rows or misses judgements;
        sections with no rows are absent from ``sections`` and excluded from ``overall``.
    """
    credit: Dict[str, float] = defaultdict(float)
    judged: Dict[str, int] = defaultdict(int)
    expected: Dict[str, int] = defaultdict(int)
    for o in outcomes:
        subset = o.comparison.meta["subset"]
        expected[subset] += 1
        if o.judged:
            judged[subset] += 1
            credit[subset] += float(o.correct)
    subsets = {s: {"accuracy": pct(credit[s], judged[s]), "n": judged[s], "correct": count(credit[s]),
                   "missing": expected[s] - judged[s]}
               for s in EXAMPLE_COUNTS if judged[s]}
    incomplete = [s for s in EXAMPLE_COUNTS if expected[s] > judged[s]]
    sections: Dict[str, float] = {}
    sections_micro: Dict[str, float] = {}
    partial: List[str] = []
    for section, names in SECTIONS.items():
        present = [s for s in names if judged[s]]
        if len(present) < len(names) or any(s in incomplete or s in missing for s in names):
            partial.append(section)
        if not present:
            continue
        weight = sum(EXAMPLE_COUNTS[s] for s in present)
        sections[section] = sum(subsets[s]["accuracy"] * EXAMPLE_COUNTS[s] for s in present) / weight
        sections_micro[section] = pct(sum(credit[s] for s in present), sum(judged[s] for s in present))
    return {
        "subsets": subsets,
        "sections": sections,
        "overall": mean(sections.values()),
        "sections_micro": sections_micro,
        "overall_micro": mean(sections_micro.values()),
        "missing_subsets": [s for s in EXAMPLE_COUNTS if not judged[s]],
        "incomplete_subsets": incomplete,
        "partial_sections": partial,
        "partial": bool(partial),
    }
