"""Outputs of a checkpoint sweep: one table with a row per training step, and per benchmark a
PNG of its scores against the step (the BR-RM reference's ``print_evaluation_results.py``
prints the per-step numbers; here they are also plotted).

The table is :func:`evaluation.compare.compare_text` over the steps' results.json files
(headline row + the per-benchmark detail tables, ``*`` = partial); the plots draw the detail
scores of :func:`evaluation.report.detail_values` (RewardBench: the official section weights).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .compare import compare_text
from .report import BENCH_LABELS, DETAIL_HEADERS, detail_values
from ..figures import save_figure


def step_label(step: int) -> str:
    """Row label of a step in the sweep table (``"step 40"``)."""
    return f"step {step}"


def sweep_table(steps: Sequence[int], results_paths: Sequence[Path]) -> str:
    """The sweep table (markdown): headline scores and detail tables, one row per step.

    Raises:
        megatron_brrm.data.schema.DataError: a file is not a results.json of ``evaluation/run.py``.
    """
    return compare_text(list(results_paths), [step_label(s) for s in steps], reference=[], detail=True,
                        judge_column=False, agreement=False)


def step_series(bench: str, results: Sequence[Mapping]) -> Dict[str, List[Tuple[Optional[float], bool]]]:
    """``{column: [(score or None, partial) per step]}`` for one benchmark, columns as in
    :data:`evaluation.report.DETAIL_HEADERS` (RewardBench: the official section weights).
    A step whose results lack the benchmark contributes ``(None, True)``."""
    cols = DETAIL_HEADERS[bench]
    out: Dict[str, List[Tuple[Optional[float], bool]]] = {c: [] for c in cols}
    for res in results:
        bres = res.get("benchmarks", {}).get(bench)
        cells = next(iter(detail_values(bench, bres).values())) if bres else [(None, True)] * len(cols)
        for col, cell in zip(cols, cells):
            out[col].append(cell)
    return out


def save_sweep_png(bench: str, steps: Sequence[int], results: Sequence[Mapping], path: Path) -> Path:
    """Plot one benchmark's detail scores (percent) against the training step; returns ``path``.

    Lines are the columns of :func:`step_series` that have data (``Overall`` drawn thicker); a
    column with a partial score at some step gets ``*`` in the legend. Written with matplotlib's Agg
    backend, 100 dpi.
    """
    import matplotlib  # lazy: heavy, only needed on this path

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: heavy, only needed on this path

    series = step_series(bench, results)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    any_partial = False
    for col, cells in series.items():
        if all(v is None for v, _ in cells):
            continue  # no data at any step (e.g. a section absent from the data folder)
        ys = [float("nan") if v is None else v for v, _ in cells]
        partial = any(p for _, p in cells)
        any_partial |= partial
        overall = col == "Overall"
        ax.plot(list(steps), ys, marker="o", linewidth=2.6 if overall else 1.2, color="k" if overall else None,
                label=col + ("*" if partial else ""))
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    if len(steps) <= 12:
        ax.set_xticks(list(steps))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title(f"{BENCH_LABELS[bench]} vs training step" + ("  (* = partial coverage)" if any_partial else ""))
    fig.tight_layout()
    return save_figure(fig, path)
