"""The per-trajectory reward of a judge: correct / wrong / malformed verdict.

Rule (docs/design.md §5; BR-RM README "Architecture Overview"): a verdict that matches the
human label gets ``correct`` (0), a wrong one ``wrong`` (-1), a malformed one ``malformed``
(-100). The BR-RM reference code actually used ``-10 * |pred - gt|``, i.e. -10 for a wrong
verdict: that is the ``"reference"`` preset. The reference never penalised turn 1; the
optional ``strict_turn1`` also gives ``malformed`` to a trajectory whose turn-1 output is
malformed (0 or more than 3 focus dimensions, unknown names, a missing analysis block).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Optional

from .results import Turn1Result, Verdict

PRESETS = {
    "paper": dict(correct=0.0, wrong=-1.0, malformed=-100.0),
    "reference": dict(correct=0.0, wrong=-10.0, malformed=-100.0),
}


@dataclass
class RewardRule:
    """Reward constants (floats, reward units) and the turn-1 strictness switch.

    Raises:
        ValueError: if a constant is not a finite number.
    """

    correct: float = 0.0
    wrong: float = -1.0
    malformed: float = -100.0
    strict_turn1: bool = False

    def __post_init__(self) -> None:
        for name in ("correct", "wrong", "malformed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"RewardRule.{name} must be a finite number, got {value!r}")
            setattr(self, name, float(value))
        if not isinstance(self.strict_turn1, bool):
            raise ValueError(f"RewardRule.strict_turn1 must be True or False, got {self.strict_turn1!r}")

    @classmethod
    def preset(cls, name: str, *, strict_turn1: bool = False) -> "RewardRule":
        """A named rule: ``"paper"`` (0 / -1 / -100) or ``"reference"`` (0 / -10 / -100).

        Raises:
            ValueError: for an unknown name (the message lists the valid ones).
        """
        if name not in PRESETS:
            raise ValueError(f"unknown reward preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}")
        return cls(strict_turn1=strict_turn1, **PRESETS[name])

    @classmethod
    def from_config(cls, cfg: Any) -> "RewardRule":
        """Build from any object with ``correct``/``wrong``/``malformed``/``strict_turn1``
        attributes (e.g. ``RunConfig.judge.reward``) or a dict with those keys."""
        names = [f.name for f in fields(cls)]
        if isinstance(cfg, dict):
            unknown = sorted(set(cfg) - set(names))
            if unknown:
                raise ValueError(f"unknown reward key(s) {unknown}; valid keys: {names}")
            return cls(**cfg)
        return cls(**{n: getattr(cfg, n) for n in names if hasattr(cfg, n)})


def check_label(label: Any) -> int:
    """Return ``label`` if it is 1 or 2 (not a bool), else raise ``ValueError``."""
    if isinstance(label, bool) or label not in (1, 2):
        raise ValueError(f"preference label must be 1 or 2, got {label!r}")
    return int(label)


def compute_reward(verdict: Verdict, label: int, rule: RewardRule, turn1: Optional[Turn1Result] = None) -> float:
    """The trajectory reward for ``verdict`` against the human ``label``.

    Args:
        verdict: the parsed final-turn output.
        label: the human preference, 1 or 2.
        rule: the reward constants.
        turn1: the parsed turn-1 output; only consulted when ``rule.strict_turn1`` is set
            (``None`` = no turn-1 check, e.g. single-turn protocols).

    Returns:
        ``rule.malformed`` if the verdict (or, under ``strict_turn1``, turn 1) is malformed,
        else ``rule.correct`` if ``verdict.preference == label``, else ``rule.wrong``.

    Raises:
        ValueError: if ``label`` is not 1 or 2.
    """
    label = check_label(label)
    if verdict.format_error is not None:
        return rule.malformed
    if rule.strict_turn1 and turn1 is not None and turn1.format_error is not None:
        return rule.malformed
    return rule.correct if verdict.preference == label else rule.wrong
