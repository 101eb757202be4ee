"""A resumable prompt loader: seeded per-epoch shuffles, a saved position, fixed-size batches."""
from __future__ import annotations

import random
from typing import Dict, List, Sequence

from .schema import PreferencePair


class PairLoader:
    """Yields batches of ``batch_size`` pairs forever, epoch after epoch.

    Epoch ``e`` visits the pairs in ``random.Random(seed + e)``-shuffled order (or file order
    with ``shuffle=False``); a batch that would cross an epoch boundary continues into the
    next epoch. ``state_dict()`` is the position (epoch, offset); loading it makes the next
    batches identical to an uninterrupted run, which is what checkpoint resume needs.

    Raises:
        ValueError: no pairs, or ``batch_size`` < 1.
    """

    def __init__(self, pairs: Sequence[PreferencePair], batch_size: int, seed: int = 0, shuffle: bool = True):
        if not pairs:
            raise ValueError("PairLoader: the dataset is empty")
        if batch_size < 1:
            raise ValueError(f"PairLoader: batch_size must be >= 1, got {batch_size}")
        self.pairs = list(pairs)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.offset = 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> List[int]:
        order = list(range(len(self.pairs)))
        if self.shuffle:
            random.Random(self.seed + epoch).shuffle(order)
        return order

    def next_batch(self) -> List[PreferencePair]:
        """The next ``batch_size`` pairs (advances the position)."""
        out = []
        while len(out) < self.batch_size:
            if self.offset >= len(self._order):
                self.epoch += 1
                self.offset = 0
                self._order = self._epoch_order(self.epoch)
            out.append(self.pairs[self._order[self.offset]])
            self.offset += 1
        return out

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset, "num_pairs": len(self.pairs)}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Restore a position saved by :meth:`state_dict`.

        Raises:
            ValueError: the saved position belongs to a dataset of another size.
        """
        if int(state.get("num_pairs", len(self.pairs))) != len(self.pairs):
            raise ValueError(f"PairLoader: checkpoint was taken on {state['num_pairs']} pairs, "
                             f"this dataset has {len(self.pairs)}; resume with the same data.train_path")
        self.epoch = int(state["epoch"])
        self.offset = int(state["offset"])
        self._order = self._epoch_order(self.epoch)
