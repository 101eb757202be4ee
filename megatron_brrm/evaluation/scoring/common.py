"""The scorers' input type and small shared helpers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Union

from ..benchmarks.base import Comparison

UNPARSEABLE_RULES = ("wrong", "tie")


@dataclass
class Outcome:
    """The credit the judge earned on one comparison.

    Attributes:
        comparison: the benchmark comparison (its ``meta`` holds the scoring keys).
        correct: the credit, a number in [0, 1] (``True``/``False`` are 1/0): 1 when the
            verdict named the chosen response, 0 when it named the rejected one, and for an
            unparseable verdict 0 (``--unparseable-as wrong``, BR-RM's rule) or 0.5
            (``--unparseable-as tie``, RewardBench's generative rule). ``None`` when the
            comparison has no judgement (e.g. missing from a replay): it is left out of every
            accuracy but makes the scores it belongs to partial.
    """

    comparison: Comparison
    correct: Optional[Union[bool, float]]

    @property
    def judged(self) -> bool:
        """True when the comparison has a judgement (``correct`` is not None)."""
        return self.correct is not None


def unparseable_credit(rule: str) -> float:
    """Credit of an unparseable verdict under ``rule``.

    ``"wrong"`` -> 0.0 (BR-RM's evaluation, ``reward_benchmarks.py``: a parse failure is wrong;
    RM-R1's RMB re-implementation too); ``"tie"`` -> 0.5 (RewardBench
    ``scripts/run_generative.py``: a tie or an unparseable verdict scores 0.5).

    Raises:
        ValueError: unknown rule (the message lists the choices).
    """
    if rule not in UNPARSEABLE_RULES:
        raise ValueError(f"--unparseable-as must be one of {list(UNPARSEABLE_RULES)}, got {rule!r}")
    return 0.5 if rule == "tie" else 0.0


def count(value: float) -> Union[int, float]:
    """A sum of credits as an int when it is whole (JSON shows ``3``, not ``3.0``), else the float."""
    return int(value) if float(value).is_integer() else float(value)


def pct(numerator: float, denominator: float) -> Optional[float]:
    """``100 * numerator / denominator`` as a float, or None when ``denominator`` is 0."""
    return 100.0 * numerator / denominator if denominator else None


def mean(values: Iterable[Optional[float]]) -> Optional[float]:
    """Arithmetic mean of the non-None values, or None if there are none."""
    vals: List[float] = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
