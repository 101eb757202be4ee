"""Per-comparison generation cache: a JSONL file appended as judgements finish.

Each line is ``{"fingerprint": str, "record": Judgement.to_dict()}``. The fingerprint
hashes every setting that changes a generation (model folder, protocol, templates,
sampling settings, seed); lines written under another fingerprint are ignored, so a
changed setting never reuses stale generations. A torn last line (the run was killed
mid-write) is skipped. Resuming = loading the cache and judging only what is missing.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Tuple

from .records import Judgement


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A short stable hash of ``settings`` (JSON with sorted keys, SHA-256, 16 hex chars)."""
    blob = json.dumps(dict(settings), sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


class GenerationCache:
    """Append-only JSONL cache of :class:`Judgement` records for one run configuration.

    Args:
        path: the cache file (created on first append; parent folders too).
        settings: the generation settings; see :func:`fingerprint`.
    """

    def __init__(self, path: Path, settings: Mapping[str, Any]):
        self.path = Path(path)
        self.fingerprint = fingerprint(settings)

    def load(self) -> Tuple[Dict[str, Judgement], Dict[str, int]]:
        """Read the records written under this fingerprint.

        Returns:
            ``(records by key, stats)`` with ``stats = {"loaded", "other_settings", "unreadable"}``;
            a later line for the same key replaces an earlier one.
        """
        out: Dict[str, Judgement] = {}
        stats = {"loaded": 0, "other_settings": 0, "unreadable": 0}
        if not self.path.is_file():
            return out, stats
        with open(self.path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    if row.get("fingerprint") != self.fingerprint:
                        stats["other_settings"] += 1
                        continue
                    rec = Judgement.from_dict(row["record"], f"{self.path}:{lineno}")
                except Exception:  # a torn or foreign line: skip it, it will be regenerated
                    stats["unreadable"] += 1
                    continue
                out[rec.key] = rec
        stats["loaded"] = len(out)
        return out, stats

    def append(self, records: Iterable[Judgement]) -> None:
        """Append records and flush them to disk (``fsync``), so an interruption loses at most one batch."""
        lines = [json.dumps({"fingerprint": self.fingerprint, "record": r.to_dict()}, ensure_ascii=False)
                 for r in records]
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = False
        if self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                torn = fh.read(1) != b"\n"  # a killed run left half a line: start a new one
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(("\n" if torn else "") + "\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
