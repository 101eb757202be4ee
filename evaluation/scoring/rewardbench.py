"""RewardBench scoring: per-subset accuracy -> weighted section scores -> overall.

Official rule (allenai/reward-bench @ 05a9005, ``rewardbench/utils.py::calculate_scores_per_section``
with ``EXAMPLE_COUNTS`` and ``SUBSET_MAPPING`` from ``rewardbench/constants.py``; README
"Getting Leaderboard Section Scores"):

* subset accuracy = mean of the row results of the subset;
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
from .common import Outcome, mean, pct


def score_rewardbench(outcomes: Sequence[Outcome]) -> dict:
    """Score RewardBench outcomes (one per row); percentages in [0, 100].

    Returns:
        ``{"subsets": {name: {"accuracy", "n", "correct"}}, "sections": {section: score},
        "overall": float|None, "sections_micro": {...}, "overall_micro": float|None,
        "missing_subsets": [...], "partial_sections": [...]}``. Sections with no rows are
        absent from ``sections`` and excluded from ``overall`` (and listed as partial).
    """
    correct: Dict[str, int] = defaultdict(int)
    count: Dict[str, int] = defaultdict(int)
    for o in outcomes:
        subset = o.comparison.meta["subset"]
        count[subset] += 1
        correct[subset] += int(bool(o.correct))
    subsets = {s: {"accuracy": pct(correct[s], count[s]), "n": count[s], "correct": correct[s]}
               for s in EXAMPLE_COUNTS if count[s]}
    sections: Dict[str, float] = {}
    sections_micro: Dict[str, float] = {}
    partial: List[str] = []
    for section, names in SECTIONS.items():
        present = [s for s in names if count[s]]
        if len(present) < len(names):
            partial.append(section)
        if not present:
            continue
        weight = sum(EXAMPLE_COUNTS[s] for s in present)
        sections[section] = sum(subsets[s]["accuracy"] * EXAMPLE_COUNTS[s] for s in present) / weight
        sections_micro[section] = pct(sum(correct[s] for s in present), sum(count[s] for s in present))
    return {
        "subsets": subsets,
        "sections": sections,
        "overall": mean(sections.values()),
        "sections_micro": sections_micro,
        "overall_micro": mean(sections_micro.values()),
        "missing_subsets": [s for s in EXAMPLE_COUNTS if not count[s]],
        "partial_sections": partial,
        "partial": bool(partial),
    }
