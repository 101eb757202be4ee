"""Official scoring rules per benchmark (see ``evaluation/README.md``) and their aggregation."""
from __future__ import annotations

from typing import Callable, Dict, Sequence

from .common import Outcome
from .rewardbench import score_rewardbench
from .rmb import score_rmb
from .rmbench import score_rmbench

SCORERS: Dict[str, Callable[[Sequence[Outcome]], dict]] = {
    "rewardbench": score_rewardbench,
    "rmbench": score_rmbench,
    "rmb": score_rmb,
}

__all__ = ["Outcome", "SCORERS", "score_rewardbench", "score_rmb", "score_rmbench"]
