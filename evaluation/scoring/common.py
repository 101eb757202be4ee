"""The scorers' input type and small shared helpers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional

from ..benchmarks.base import Comparison


@dataclass
class Outcome:
    """Whether the judge got one comparison right.

    Attributes:
        comparison: the benchmark comparison (its ``meta`` holds the scoring keys).
        correct: True iff the verdict named the chosen response. A generative judge has no
            ties: an unparseable verdict (format error) is ``False``, never 0.5.
    """

    comparison: Comparison
    correct: bool


def pct(numerator: float, denominator: float) -> Optional[float]:
    """``100 * numerator / denominator`` as a float, or None when ``denominator`` is 0."""
    return 100.0 * numerator / denominator if denominator else None


def mean(values: Iterable[Optional[float]]) -> Optional[float]:
    """Arithmetic mean of the non-None values, or None if there are none."""
    vals: List[float] = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
