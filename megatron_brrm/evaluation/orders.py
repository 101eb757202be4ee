"""Which response the judge sees first: seeded per comparison, independent of batching.

BR-RM's evaluation (``examples/run_eval_brrm.py``) shows each comparison once in a random
order drawn from a global RNG seeded with 42, so the order of a comparison depends on
everything loaded before it. Here the order of comparison ``c`` under seed ``s`` is a pure
function of ``(s, c.comparison_id)`` (a SHA-256 bit), so ``--limit``, batch composition,
resumption and the benchmark selection never change it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import List, Sequence

from megatron_brrm.data.schema import PreferencePair

from .benchmarks.base import Comparison

ORDER_MODES = ("single", "both")


def seeded_swap(seed: int, comparison_id: str) -> bool:
    """True if, under ``seed``, the chosen response is shown as Response 2 (a fair, seeded coin).

    The coin is the lowest bit of ``sha256(f"{seed}:{comparison_id}")``.
    """
    digest = hashlib.sha256(f"{int(seed)}:{comparison_id}".encode("utf-8")).digest()
    return bool(digest[0] & 1)


@dataclass
class Presentation:
    """One comparison in one order: what the judge is shown, and the correct verdict.

    Attributes:
        comparison: the benchmark comparison.
        swapped: False -> chosen is Response 1 (label 1); True -> chosen is Response 2 (label 2).
        primary: True for the seeded order (the paper-comparable single-order result).
    """

    comparison: Comparison
    swapped: bool
    primary: bool

    @property
    def label(self) -> int:
        """The correct verdict: the position (1 or 2) of the chosen response."""
        return 2 if self.swapped else 1

    @property
    def key(self) -> str:
        """Cache/record key: ``"<comparison_id>|swapped"`` or ``"<comparison_id>|unswapped"``."""
        return record_key(self.comparison.comparison_id, self.swapped)

    def to_pair(self) -> PreferencePair:
        """The comparison as a :class:`PreferencePair` in this order (id = :attr:`key`)."""
        c = self.comparison
        r1, r2 = (c.rejected, c.chosen) if self.swapped else (c.chosen, c.rejected)
        return PreferencePair(id=self.key, context=c.context, response1=r1, response2=r2, preference=self.label,
                              domain=c.meta.get("domain", c.meta.get("section", "general")), source=c.benchmark)


def record_key(comparison_id: str, swapped: bool) -> str:
    """The key of one judged order of a comparison."""
    return f"{comparison_id}|{'swapped' if swapped else 'unswapped'}"


def presentations(comparisons: Sequence[Comparison], orders: str, seed: int) -> List[Presentation]:
    """Expand comparisons into the orders to judge.

    Args:
        orders: ``"single"`` -> the seeded order only; ``"both"`` -> the seeded order
            (``primary=True``) followed by the other order (``primary=False``).
        seed: order seed (see :func:`seeded_swap`).

    Raises:
        ValueError: unknown ``orders``.
    """
    if orders not in ORDER_MODES:
        raise ValueError(f"--orders must be one of {ORDER_MODES}, got {orders!r}")
    out = []
    for comp in comparisons:
        swap = seeded_swap(seed, comp.comparison_id)
        out.append(Presentation(comp, swap, True))
        if orders == "both":
            out.append(Presentation(comp, not swap, False))
    return out
