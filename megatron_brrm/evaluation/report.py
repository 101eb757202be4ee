"""Human-readable outputs of a results.json: the printed table and the PNG report.

The table follows the BR-RM README layout: a headline row (RewardBench | RM-Bench | RMB |
Avg), then per-benchmark detail (RewardBench Chat / Chat-Hard / Safety / Reasoning;
RM-Bench Chat / Math / Code / Safety / Easy / Normal / Hard; RMB Help-BoN / Help-Pair /
Harm-BoN / Harm-Pair). ``*`` marks a partial score, ``-`` a score with no data. The
"Judging" lines say how unparseable verdicts were scored (``--unparseable-as``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..figures import save_figure

RB_SECTIONS = (("Chat", "Chat"), ("Chat Hard", "Chat-Hard"), ("Safety", "Safety"), ("Reasoning", "Reasoning"))
RMBENCH_DOMAINS = (("chat", "Chat"), ("math", "Math"), ("code", "Code"), ("safety", "Safety"))
RMB_HEADLINE = ("Help-BoN", "Help-Pair", "Harm-BoN", "Harm-Pair")
BENCH_LABELS = {"rewardbench": "RewardBench", "rmbench": "RM-Bench", "rmb": "RMB"}


def fmt(value: Optional[float], partial: bool = False) -> str:
    """A score as ``"92.1"`` (one decimal), ``"-"`` for None, with ``"*"`` appended when partial."""
    if value is None:
        return "-"
    return f"{value:.1f}" + ("*" if partial else "")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def sampled(res: Mapping[str, Any]) -> bool:
    """Whether every score of a benchmark result is partial: ``coverage.sampled`` (``--limit``, or
    a data folder smaller than the official release). Results files written before that key
    existed fall back to ``coverage.partial``, so their cells are starred rather than not."""
    cov = res.get("coverage", {}) or {}
    return bool(cov["sampled"]) if "sampled" in cov else bool(cov.get("partial"))


def detail_values(bench: str, res: Mapping[str, Any],
                  scores_key: str = "scores") -> Dict[str, List[Tuple[Optional[float], bool]]]:
    """Per-benchmark detail scores ``{table title: [(score or None, partial), ...]}`` in the column
    order of :data:`DETAIL_HEADERS` (percent values).

    ``scores_key`` selects the score tree (``"scores"`` or ``"scores_both_orders"``). A score is
    partial when its own data is (a missing subset, domain file, scenario file or judgement
    under it) or when the whole benchmark is sampled (:func:`sampled`).
    """
    s = res.get(scores_key) or {}
    every = sampled(res)
    out: Dict[str, List[Tuple[Optional[float], bool]]] = {}
    if bench == "rewardbench":
        partial = set(s.get("partial_sections", []))
        overall_partial = every or bool(partial)
        out["RewardBench (official section weights, EXAMPLE_COUNTS)"] = [
            *((s.get("sections", {}).get(k), every or k in partial) for k, _ in RB_SECTIONS),
            (s.get("overall"), overall_partial)]
        out["RewardBench (BR-RM paper variant: unweighted micro-average per section)"] = [
            *((s.get("sections_micro", {}).get(k), every or k in partial) for k, _ in RB_SECTIONS),
            (s.get("overall_micro"), overall_partial)]
    elif bench == "rmbench":
        doms = s.get("domains", {})
        partial = every or bool(s.get("partial"))
        out["RM-Bench"] = [*((doms.get(k, {}).get("score"), every or (k in doms and not doms[k].get("complete", True)))
                             for k, _ in RMBENCH_DOMAINS),
                           *((s.get(k), partial) for k in ("easy", "normal", "hard", "overall"))]
    elif bench == "rmb":
        head = s.get("headline", {})
        partial_head = set(s.get("partial_headline", []))
        out["RMB"] = [*((head.get(k), every or k in partial_head) for k in RMB_HEADLINE),
                      (s.get("overall"), every or bool(s.get("partial")))]
    return out


def detail_rows(bench: str, res: Mapping[str, Any], scores_key: str = "scores") -> Dict[str, List[str]]:
    """:func:`detail_values` formatted as table cells (:func:`fmt`: ``*`` = partial, ``-`` = no data)."""
    return {title: [fmt(v, p) for v, p in cells] for title, cells in detail_values(bench, res, scores_key).items()}


UNPARSEABLE_TEXT = {
    "wrong": "counted as wrong (BR-RM's rule)",
    "tie": "scored 0.5 each (RewardBench's generative rule: a tie or an unparseable verdict is 0.5)",
}


DETAIL_HEADERS = {
    "rewardbench": ["Chat", "Chat-Hard", "Safety", "Reasoning", "Overall"],
    "rmbench": ["Chat", "Math", "Code", "Safety", "Easy", "Normal", "Hard", "Overall"],
    "rmb": list(RMB_HEADLINE) + ["Overall"],
}


def format_report(results: Mapping[str, Any]) -> str:
    """The full printed report of one results.json object (markdown tables + notes)."""
    cfg = results.get("config", {})
    benches: Mapping[str, Any] = results.get("benchmarks", {})
    name = cfg.get("name") or Path(str(cfg.get("model", "model"))).name or "model"
    parts: List[str] = []
    head = ["Model"] + [BENCH_LABELS[b] for b in BENCH_LABELS] + ["Avg"]
    summ = results.get("summary", {})
    row = [name] + [fmt(summ.get(b), bool(benches.get(b, {}).get("coverage", {}).get("partial"))) for b in BENCH_LABELS]
    row.append(fmt(summ.get("avg"), any(benches.get(b, {}).get("coverage", {}).get("partial", True) for b in BENCH_LABELS)))
    parts.append(markdown_table(head, [row]))
    both = cfg.get("orders") == "both"
    for bench, res in benches.items():
        for title, cells in detail_rows(bench, res).items():
            parts.append(f"\n{title}" + (" - single (seeded) order" if both else ""))
            parts.append(markdown_table(DETAIL_HEADERS[bench], [cells]))
        if both:
            for title, cells in detail_rows(bench, res, "scores_both_orders").items():
                parts.append(f"\n{title} - both orders (correct in both)")
                parts.append(markdown_table(DETAIL_HEADERS[bench], [cells]))
    rule = cfg.get("unparseable_as") or "wrong"
    what = "tied rewards" if cfg.get("engine") == "scalar" or cfg.get("protocol") == "scalar" else "unparseable verdicts"
    lines = ["", f"Judging ({what} {UNPARSEABLE_TEXT.get(rule, rule)}, --unparseable-as {rule}):"]
    for bench, res in benches.items():
        fe = res.get("format_errors", {})
        rate = "" if fe.get("rate") is None else f" ({fe['rate']:.1f}%)"
        line = (f"  {BENCH_LABELS.get(bench, bench)}: {res.get('n_comparisons', 0)} comparisons, "
                f"{res.get('n_records', 0)} judged orders, {what} {fe.get('count', 0)}{rate}")
        if both:
            line += (f"; both-orders overall {fmt(res.get('overall_both_orders'))}, "
                     f"position consistency {fmt(res.get('position_consistency'))}"
                     + ("%" if res.get("position_consistency") is not None else ""))
        lines.append(line)
    notes = [n for res in benches.values() for n in res.get("coverage", {}).get("notes", [])]
    notes += list(results.get("notes", []))
    if notes:
        lines += ["", "* partial scores:"] + [f"  - {n}" for n in notes]
    parts.append("\n".join(lines))
    return "\n".join(parts)


def save_png(results: Mapping[str, Any], path: Path) -> Path:
    """Draw the PNG report: per-section bars for each benchmark and one RM-Bench 3x3 heatmap per domain.

    Returns:
        ``path`` (written with matplotlib's Agg backend, 100 dpi).
    """
    import matplotlib  # lazy: heavy, only needed on this path

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: heavy, only needed on this path

    benches: Mapping[str, Any] = results.get("benchmarks", {})
    doms = (benches.get("rmbench", {}).get("scores", {}) or {}).get("domains", {})
    n_heat = max(1, len(doms))
    ncols = max(3, n_heat)
    fig, axes = plt.subplots(2, ncols, figsize=(4.2 * ncols, 8), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for k, bench in enumerate(("rewardbench", "rmbench", "rmb")):
        if bench not in benches:
            continue
        ax = axes[0][k]
        ax.set_visible(True)
        s = benches[bench].get("scores", {})
        if bench == "rewardbench":
            labels = [lbl for _, lbl in RB_SECTIONS]
            series = {"official": [s.get("sections", {}).get(key) for key, _ in RB_SECTIONS],
                      "micro (BR-RM)": [s.get("sections_micro", {}).get(key) for key, _ in RB_SECTIONS]}
        elif bench == "rmbench":
            labels = [lbl for _, lbl in RMBENCH_DOMAINS] + ["Easy", "Normal", "Hard"]
            series = {"score": [s.get("domains", {}).get(key, {}).get("score") for key, _ in RMBENCH_DOMAINS]
                      + [s.get("easy"), s.get("normal"), s.get("hard")]}
        else:
            labels = list(RMB_HEADLINE)
            series = {"accuracy": [s.get("headline", {}).get(key) for key in RMB_HEADLINE]}
        width = 0.8 / len(series)
        for j, (sname, vals) in enumerate(series.items()):
            xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(labels))]
            ax.bar(xs, [v if v is not None else 0.0 for v in vals], width=width, label=sname)
            for x, v in zip(xs, vals):
                ax.text(x, (v or 0.0) + 1, "n/a" if v is None else f"{v:.0f}", ha="center", fontsize=7)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 110)
        ax.set_ylabel("accuracy (%)")
        overall = benches[bench].get("overall")
        ax.set_title(f"{BENCH_LABELS[bench]} overall {fmt(overall, benches[bench].get('coverage', {}).get('partial'))}")
        if len(series) > 1:
            ax.legend(fontsize=7)
    for k, (dom, d) in enumerate(doms.items()):
        ax = axes[1][k]
        ax.set_visible(True)
        mat = [[(v if v is not None else float("nan")) for v in row] for row in d["matrix"]]
        im = ax.imshow(mat, vmin=0, vmax=100, cmap="viridis")
        for i in range(3):
            for j in range(3):
                v = d["matrix"][i][j]
                ax.text(j, i, "n/a" if v is None else f"{v:.0f}", ha="center", va="center",
                        color="k" if v is not None and v > 60 else "w", fontsize=9)
        ax.set_xticks(range(3))
        ax.set_yticks(range(3))
        ax.set_xticklabels(["concise", "detailed", "markdown"], fontsize=8)
        ax.set_yticklabels(["concise", "detailed", "markdown"], fontsize=8)
        ax.set_xlabel("rejected style")
        ax.set_ylabel("chosen style")
        ax.set_title(f"RM-Bench {dom} (score {fmt(d['score'])})\n"
                     f"hard {fmt(d['hard'])}  normal {fmt(d['normal'])}  easy {fmt(d['easy'])}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    cfg = results.get("config", {})
    name = cfg.get("name") or Path(str(cfg.get("model", ""))).name
    fig.suptitle(f"Reward-model evaluation: {name}  (* = partial coverage)")
    fig.tight_layout()
    return save_figure(fig, path)
