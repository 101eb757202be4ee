"""Order augmentation against position bias (BR-RM reference loader, docs/design.md §5).

Training uses both orders of every pair: the pair as emitted (chosen at its seeded position)
and its swapped copy, whose id is the original id plus :data:`SWAP_SUFFIX` (``":swap"``) and
whose label is flipped. Validation uses one order (the seeded one). Downstream GRPO group ids
come from the rollout (one group per written row), not from these ids.
"""
from __future__ import annotations

from typing import Iterable, List

from .schema import PreferencePair

SWAP_SUFFIX = ":swap"


def swapped_copy(pair: PreferencePair) -> PreferencePair:
    """``pair`` with the responses exchanged, the label flipped and ``":swap"`` appended to the id."""
    out = pair.swapped()
    out.id = pair.id + SWAP_SUFFIX
    return out


def both_orders(pairs: Iterable[PreferencePair]) -> List[PreferencePair]:
    """Each pair followed by its swapped copy (2 rows per pair)."""
    out: List[PreferencePair] = []
    for p in pairs:
        out += [p, swapped_copy(p)]
    return out


def base_id(pair_id: str) -> str:
    """The id of the pair a row came from (the swap suffix removed)."""
    return pair_id[: -len(SWAP_SUFFIX)] if pair_id.endswith(SWAP_SUFFIX) else pair_id
