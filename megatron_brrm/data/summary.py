"""Counters that make every dropped row visible: skipped-invalid vs filtered-by-rule, and more."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List

MAX_EXAMPLES = 5


@dataclass
class SourceSummary:
    """What happened to the rows of one source.

    Attributes:
        source: adapter name.
        files: input files read.
        rows_read: raw records read (JSONL lines / list items / parquet rows).
        pairs: PreferencePairs produced by the adapter (one order, before mixing).
        skipped_invalid: malformed rows skipped under ``skip_invalid`` (would raise otherwise).
        invalid_examples: the first few "file:line: reason" messages of skipped rows.
        filtered: rule name -> rows removed by a documented source rule (ties, excluded
            sub-source, multi-turn, identical responses, ...). These are not errors.
        deduplicated: pairs dropped because their prompt was already taken by another prompt group.
        decontaminated: pairs dropped because a user turn equals an evaluation-benchmark prompt.
        capped: pairs dropped by the per-source cap.
        train / val: pairs (one order) that went to each split.
    """

    source: str
    files: List[str] = field(default_factory=list)
    rows_read: int = 0
    pairs: int = 0
    skipped_invalid: int = 0
    invalid_examples: List[str] = field(default_factory=list)
    filtered: Counter = field(default_factory=Counter)
    deduplicated: int = 0
    decontaminated: int = 0
    capped: int = 0
    train: int = 0
    val: int = 0

    def add_invalid(self, message: str) -> None:
        """Count one skipped malformed row; keep its message if among the first few."""
        self.skipped_invalid += 1
        if len(self.invalid_examples) < MAX_EXAMPLES:
            self.invalid_examples.append(message)

    def add_filtered(self, rule: str, n: int = 1) -> None:
        """Count ``n`` rows removed by the named source rule."""
        self.filtered[rule] += n

    def to_dict(self) -> dict:
        """JSON-ready copy (``filtered`` as a plain dict)."""
        d = dict(self.__dict__)
        d["filtered"] = dict(self.filtered)
        return d


@dataclass
class MixSummary:
    """Summary of a whole preprocessing run (all sources, both splits).

    ``train_rows`` counts written rows (both orders), ``train_pairs`` the underlying pairs.
    """

    sources: Dict[str, SourceSummary] = field(default_factory=dict)
    train_domains: Counter = field(default_factory=Counter)
    val_domains: Counter = field(default_factory=Counter)
    train_pairs: int = 0
    train_rows: int = 0
    val_pairs: int = 0
    val_rows: int = 0
    benchmark_prompts: int = 0

    def source(self, name: str) -> SourceSummary:
        """The summary of ``name``, created on first use."""
        if name not in self.sources:
            self.sources[name] = SourceSummary(name)
        return self.sources[name]

    def to_dict(self) -> dict:
        """JSON-ready copy, written next to the outputs as ``preprocess_summary.json``."""
        return {
            "sources": {k: v.to_dict() for k, v in self.sources.items()},
            "train_domains": dict(self.train_domains), "val_domains": dict(self.val_domains),
            "train_pairs": self.train_pairs, "train_rows": self.train_rows,
            "val_pairs": self.val_pairs, "val_rows": self.val_rows,
            "benchmark_prompts": self.benchmark_prompts,
        }

    def format_table(self) -> str:
        """A plain-text table: one line per source, then totals and per-domain counts."""
        cols = ["source", "rows", "pairs", "invalid", "filtered", "dedup", "decontam", "capped", "train", "val"]
        lines = []
        body = []
        for s in self.sources.values():
            body.append([s.source, s.rows_read, s.pairs, s.skipped_invalid, sum(s.filtered.values()),
                         s.deduplicated, s.decontaminated, s.capped, s.train, s.val])
        tot = ["TOTAL"] + [sum(r[i] for r in body) for i in range(1, len(cols))]
        widths = [max(len(str(x)) for x in col) for col in zip(cols, *body, tot)]
        fmt = lambda r: "  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w) for i, (x, w) in enumerate(zip(r, widths)))
        lines.append(fmt(cols))
        lines.append("-" * len(lines[0]))
        lines += [fmt(r) for r in body]
        lines.append("-" * len(lines[0]))
        lines.append(fmt(tot))
        lines.append("")
        for s in self.sources.values():
            if s.filtered:
                rules = ", ".join(f"{k}={v}" for k, v in sorted(s.filtered.items()))
                lines.append(f"filtered by rule [{s.source}]: {rules}")
            for msg in s.invalid_examples:
                lines.append(f"skipped invalid [{s.source}]: {msg}")
        domains = sorted(set(self.train_domains) | set(self.val_domains))
        lines.append("domain counts (pairs, one order): " + ", ".join(
            f"{d}: train {self.train_domains.get(d, 0)} / val {self.val_domains.get(d, 0)}" for d in domains))
        lines.append(f"benchmark prompts used for decontamination: {self.benchmark_prompts}")
        lines.append(f"train: {self.train_pairs} pairs -> {self.train_rows} rows (both orders); "
                     f"val: {self.val_pairs} pairs -> {self.val_rows} rows (one order)")
        return "\n".join(lines)
