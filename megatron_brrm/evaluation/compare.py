"""Print several results.json files side by side (e.g. a checkpoint sweep), with published rows.

Usage::

    python evaluation/compare.py out/step100/results.json out/step200/results.json \\
        [--labels step100 step200] [--reference brrm rmr1 baseline | --reference none] [--detail]

Each results file becomes a row (RewardBench | RM-Bench | RMB | Avg, ``*`` = partial
coverage, see the file's notes) with the kind of judge it evaluated (a generative judge and its
protocol, e.g. ``generative (brrm)``, or ``scalar (BT)`` for a Bradley-Terry reward model from
``run.py --engine scalar``); ``--detail`` adds the per-section tables. With two or more files an
agreement table follows: for each pair of files, over the comparisons both judged (their
primary order), how often they prefer the same response and each one's accuracy there -- a BT
model and a BR-RM judge side by side on the same comparisons. Reference rows are the published
numbers of :mod:`evaluation.reference`, with their source.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

from megatron_brrm.evaluation.reference import BRRM_14B_DETAIL, reference_rows
from megatron_brrm.evaluation.report import BENCH_LABELS, DETAIL_HEADERS, detail_rows, fmt, markdown_table
from megatron_brrm.evaluation.results import load_results
from megatron_brrm.data.schema import DataError


def default_label(path: Path, results: Mapping) -> str:
    """A row label: the config's ``name`` if set, else ``<parent folder>/<file stem>``."""
    name = results.get("config", {}).get("name")
    return name or f"{path.parent.name}/{path.stem}"


def judge_kind(results: Mapping) -> str:
    """``scalar (BT)`` for a scalar reward model's results, else ``generative (<protocol>)``."""
    cfg = results.get("config", {})
    if cfg.get("engine") == "scalar" or cfg.get("protocol") == "scalar":
        return "scalar (BT)"
    return f"generative ({cfg.get('protocol') or 'brrm'})"


def _preferred(results: Mapping) -> dict:
    """comparison id -> whether the primary order preferred the chosen response (None: no verdict)."""
    out = {}
    for r in results.get("records", []):
        if r.get("primary", True):
            out[r["comparison_id"]] = None if r.get("verdict") is None else r["verdict"] == r["label"]
    return out


def agreement_rows(labels: Sequence[str], results: Sequence[Mapping]) -> List[List[str]]:
    """Rows ``[A, B, common comparisons, agreement %, accuracy A %, accuracy B %]`` for every pair of files.

    Agreement counts the common comparisons where both have a verdict and prefer the same
    response; a comparison without a verdict in either file counts as a disagreement.
    """
    prefs = [_preferred(r) for r in results]
    rows = []
    for i in range(len(results)):
        for j in range(i + 1, len(results)):
            common = sorted(set(prefs[i]) & set(prefs[j]))
            if not common:
                rows.append([labels[i], labels[j], "0", "-", "-", "-"])
                continue
            a, b = [prefs[i][c] for c in common], [prefs[j][c] for c in common]
            agree = sum(1 for x, y in zip(a, b) if x is not None and x == y)
            rows.append([labels[i], labels[j], str(len(common)), fmt(100.0 * agree / len(common)),
                         fmt(100.0 * sum(1 for x in a if x) / len(common)),
                         fmt(100.0 * sum(1 for y in b if y) / len(common))])
    return rows


def compare_text(paths: Sequence[Path], labels: Optional[Sequence[str]] = None,
                 reference: Optional[List[str]] = None, detail: bool = False, judge_column: bool = True,
                 agreement: bool = True) -> str:
    """The comparison report as text.

    Args:
        paths: results.json files.
        labels: one label per file (default: :func:`default_label`).
        reference: reference groups to append (``["brrm", "rmr1", "baseline"]``); ``[]`` for none.
        detail: also print per-section tables (files, plus the BR-RM-14B published breakdown).
        judge_column: show each file's kind of judge (:func:`judge_kind`).
        agreement: with two or more files, add the pairwise agreement table (:func:`agreement_rows`).

    Raises:
        DataError: a file is not a results.json of ``run.py``.
        ValueError: ``labels`` has the wrong length.
    """
    results = [load_results(p) for p in paths]
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"--labels: got {len(labels)} labels for {len(paths)} files")
    labels = list(labels) if labels is not None else [default_label(Path(p), r) for p, r in zip(paths, results)]
    header = ["Model", *(["judge"] if judge_column else []), *BENCH_LABELS.values(), "Avg", "source"]
    rows = []
    for label, res, path in zip(labels, results, paths):
        benches = res.get("benchmarks", {})
        partial = {b: bool(benches.get(b, {}).get("coverage", {}).get("partial")) for b in BENCH_LABELS}
        summ = res.get("summary", {})
        rows.append([label, *([judge_kind(res)] if judge_column else []),
                     *(fmt(summ.get(b), partial[b] and b in benches) for b in BENCH_LABELS),
                     fmt(summ.get("avg"), any(partial[b] or b not in benches for b in BENCH_LABELS)), str(path)])
    refs = reference_rows(reference) if reference is None or reference else []
    for r in refs:
        rows.append([r.model + " (published)", *(["-"] if judge_column else []), fmt(r.rewardbench), fmt(r.rmbench),
                     fmt(r.rmb), fmt(r.avg), r.source])
    parts = [markdown_table(header, rows)]
    if agreement and len(results) > 1:
        parts.append("\nAgreement on the comparisons judged by both (primary order)")
        parts.append(markdown_table(["A", "B", "comparisons", "same preference %", "accuracy A %", "accuracy B %"],
                                    agreement_rows(labels, results)))
    if detail:
        for bench in BENCH_LABELS:
            titled = {}
            for label, res in zip(labels, results):
                if bench in res.get("benchmarks", {}):
                    for title, cells in detail_rows(bench, res["benchmarks"][bench]).items():
                        titled.setdefault(title, []).append([label, *cells])
            for title, trows in titled.items():
                # BR-RM's published RewardBench sections are the unweighted micro-average variant
                if refs and (bench != "rewardbench" or "micro" in title):
                    ref = BRRM_14B_DETAIL[bench]
                    trows.append(["BR-RM-14B (published)", *(fmt(ref.get(h)) for h in DETAIL_HEADERS[bench])])
                parts.append(f"\n{title}")
                parts.append(markdown_table(["Model", *DETAIL_HEADERS[bench]], trows))
    parts.append("\n* = partial coverage (missing subsets/domains, --limit, or missing generations); "
                 "partial scores are not comparable to published full-benchmark numbers.")
    return "\n".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the process exit code (2 on bad input)."""
    ap = argparse.ArgumentParser(description="Compare evaluation results files side by side.")
    ap.add_argument("results", nargs="+", type=Path, help="results.json files written by evaluation/run.py")
    ap.add_argument("--labels", nargs="+", help="row labels, one per file")
    ap.add_argument("--reference", nargs="+", default=["brrm", "rmr1", "baseline"],
                    choices=["brrm", "rmr1", "baseline", "none"], help="published reference rows to include")
    ap.add_argument("--detail", action="store_true", help="also print the per-section tables")
    args = ap.parse_args(argv)
    groups = [] if "none" in args.reference else args.reference
    try:
        print(compare_text(args.results, args.labels, groups, args.detail))
    except (DataError, ValueError) as exc:
        print(f"compare.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
