"""Official scoring rules per benchmark (see ``evaluation/README.md``) and their aggregation.

Every scorer is called as ``scorer(outcomes, missing=...)``: one :class:`Outcome` per selected
comparison (``correct=None`` when it has no judgement) and the benchmark parts absent from
the data folder (``BenchmarkData.missing``).
"""
from __future__ import annotations

from typing import Callable, Dict

from .common import UNPARSEABLE_RULES, Outcome, unparseable_credit
from .rewardbench import score_rewardbench
from .rmb import score_rmb
from .rmbench import score_rmbench

SCORERS: Dict[str, Callable[..., dict]] = {
    "rewardbench": score_rewardbench,
    "rmbench": score_rmbench,
    "rmb": score_rmb,
}

__all__ = ["Outcome", "SCORERS", "UNPARSEABLE_RULES", "score_rewardbench", "score_rmb", "score_rmbench",
           "unparseable_credit"]
