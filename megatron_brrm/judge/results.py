"""Typed results of parsing judge outputs and of stepping an episode.

The eight evaluation dimensions are those of the BR-RM turn-1 prompt (reference code
``UNIFIED_ANALYSIS_PROMPT``, docs/design.md §5); their spelling is part of the format.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

DIMENSIONS: Tuple[str, ...] = (
    "Information Accuracy",
    "Computational Precision",
    "Logical Reasoning",
    "Implementation Capability",
    "Safety Awareness",
    "Response Completeness",
    "Instruction Adherence",
    "Communication Clarity",
)

_BY_KEY = {" ".join(d.lower().split()): d for d in DIMENSIONS}


def canonical_dimension(name: str) -> Optional[str]:
    """The canonical spelling of a dimension name, or ``None`` if it is not one of :data:`DIMENSIONS`.

    Matching ignores case and collapses runs of whitespace ("logical   REASONING" ->
    "Logical Reasoning"); nothing else is forgiven (no abbreviations, no typos).
    """
    if not isinstance(name, str):
        return None
    return _BY_KEY.get(" ".join(name.lower().split()))


@dataclass
class Turn1Result:
    """The parsed turn-1 ("adaptive branching") output of a BR-RM judge.

    Attributes:
        dimensions: the recognised focus dimensions, canonical spelling, in order of
            appearance, duplicates removed (may be empty or longer than 3 when malformed).
        analysis1: text of ``[Quality Analysis for Response 1]`` (stripped), ``None`` if absent.
        analysis2: the same for Response 2.
        format_error: ``None`` when well-formed, else every problem found joined by ``"; "``.
            Only affects the reward when ``RewardRule.strict_turn1`` is set.
    """

    dimensions: List[str] = field(default_factory=list)
    analysis1: Optional[str] = None
    analysis2: Optional[str] = None
    format_error: Optional[str] = None


@dataclass
class Verdict:
    """The parsed final-turn output: a preference or the reason it is malformed.

    Attributes:
        preference: 1 or 2 (which response the judge prefers), ``None`` when malformed.
        format_error: ``None`` when well-formed, else a specific reason
            (e.g. ``"conflicting verdicts 1 and 2"``).
        analysis1 / analysis2: the turn-2 analyses (``[The Begin of Analysis on Response k]``
            blocks) when present; informational, never a format error.

    Raises:
        ValueError: on construction unless exactly one of ``preference`` / ``format_error`` is
            ``None`` and ``preference`` is 1 or 2.
    """

    preference: Optional[int]
    format_error: Optional[str]
    analysis1: Optional[str] = None
    analysis2: Optional[str] = None

    def __post_init__(self) -> None:
        if (self.preference is None) == (self.format_error is None):
            raise ValueError(
                f"Verdict needs exactly one of preference/format_error, got "
                f"preference={self.preference!r}, format_error={self.format_error!r}"
            )
        if self.preference is not None and (self.preference not in (1, 2) or isinstance(self.preference, bool)):
            raise ValueError(f"Verdict.preference must be 1 or 2, got {self.preference!r}")

    @property
    def is_valid(self) -> bool:
        """True when the verdict is well-formed (``preference`` is set)."""
        return self.format_error is None


@dataclass
class EnvStep:
    """What :meth:`Episode.step` returns after one generated turn.

    Attributes:
        done: True after the final turn.
        next_message: the user message ``{"role": "user", "content": str}`` to append before
            the next turn (``None`` when done).
        reward: the trajectory reward (float, set only when done).
        verdict: the parsed verdict (set only when done).
        turn1: the parsed turn-1 result (BR-RM: set from the first step on, also on the
            final step; ``None`` for single-turn protocols).
    """

    done: bool
    next_message: Optional[Dict[str, str]] = None
    reward: Optional[float] = None
    verdict: Optional[Verdict] = None
    turn1: Optional[Turn1Result] = None
