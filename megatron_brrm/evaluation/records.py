"""One judged order of one comparison: the unit stored in results.json and in the cache."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from megatron_brrm.data.schema import DataError

from .orders import Presentation, record_key


@dataclass
class Judgement:
    """The judge's output for one comparison shown in one order.

    Attributes:
        benchmark: benchmark name.
        comparison_id: the comparison (see :class:`~evaluation.benchmarks.base.Comparison`).
        item_id: its benchmark item.
        swapped: True when the chosen response was shown as Response 2.
        primary: True for the seeded order (the single-order score uses it).
        label: the correct verdict, 1 or 2 (the chosen response's position).
        turn_texts: the generated text of every turn, in order (BR-RM: turn 1, turn 2).
        verdict: the parsed final verdict, 1 or 2, or None when malformed.
        format_error: None when well-formed, else the parser's reason.
        correct: ``verdict == label`` (a malformed verdict is wrong, never a tie).
        meta: the comparison's scoring keys (copied for readers of results.json).
        extra: engine details (finish reasons, token counts, reward), informational.
    """

    benchmark: str
    comparison_id: str
    item_id: str
    swapped: bool
    primary: bool
    label: int
    turn_texts: List[str]
    verdict: Optional[int]
    format_error: Optional[str]
    correct: bool
    meta: Dict[str, Any] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """``"<comparison_id>|swapped"`` / ``"|unswapped"`` (see :func:`evaluation.orders.record_key`)."""
        return record_key(self.comparison_id, self.swapped)

    @classmethod
    def build(cls, presentation: Presentation, turn_texts: List[str], verdict: Optional[int],
              format_error: Optional[str], extra: Optional[Dict[str, Any]] = None) -> "Judgement":
        """Make the record of ``presentation`` from the judge's texts and parsed verdict."""
        c = presentation.comparison
        meta = {k: v for k, v in c.meta.items() if k != "source"}
        return cls(benchmark=c.benchmark, comparison_id=c.comparison_id, item_id=c.item_id,
                   swapped=presentation.swapped, primary=presentation.primary, label=presentation.label,
                   turn_texts=list(turn_texts), verdict=verdict, format_error=format_error,
                   correct=verdict is not None and verdict == presentation.label, meta=meta, extra=dict(extra or {}))

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (one entry of results.json ``records`` / one cache line)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict, where: str) -> "Judgement":
        """Rebuild a stored record; raise :class:`DataError` naming ``where`` and the bad key."""
        if not isinstance(row, dict):
            raise DataError(f"{where}: a record must be a JSON object, got {type(row).__name__}")
        missing = [k for k in ("benchmark", "comparison_id", "item_id", "swapped", "label", "turn_texts",
                               "verdict", "correct") if k not in row]
        if missing:
            raise DataError(f"{where}: record is missing key(s) {missing}")
        if not isinstance(row["turn_texts"], list) or not all(isinstance(t, str) for t in row["turn_texts"]):
            raise DataError(f"{where}: 'turn_texts' must be a list of strings")
        return cls(benchmark=row["benchmark"], comparison_id=row["comparison_id"], item_id=row["item_id"],
                   swapped=bool(row["swapped"]), primary=bool(row.get("primary", True)), label=int(row["label"]),
                   turn_texts=row["turn_texts"], verdict=row["verdict"], format_error=row.get("format_error"),
                   correct=bool(row["correct"]), meta=dict(row.get("meta") or {}), extra=dict(row.get("extra") or {}))
