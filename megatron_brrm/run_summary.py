"""What a GRPO run did, from its ``metrics.jsonl``: a before/after table with sample counts and
standard errors, a significance test on the change, and a PNG of the per-step curves.

Every figure says where it comes from: ``validation`` figures are the held-out pairs (one
sample per pair, fixed seed, measured at step 0 after the warm start and every
``grpo.val_every_n_steps`` steps); ``rollout`` figures are the training samples of one step
(``num_prompts_per_step x num_generations`` trajectories, drawn from a moving policy). Only the
validation figures are comparable between steps.

Imports nothing of the project but :mod:`megatron_brrm.metrics`' file layout.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .figures import save_figure

# (metric key without its prefix, row label, whether lower is better)
RATES = (("format_error_rate", "format-error rate", True), ("accuracy", "accuracy", False))


def read_metrics(path: str | Path) -> List[dict]:
    """Rows of a ``metrics.jsonl`` (one JSON object per logged step, each with ``step``), in file
    order; ``[]`` when the file does not exist.

    Raises:
        ValueError: a line is not JSON (named by file and line).
    """
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{i}: not JSON ({exc.msg})") from None
    return rows


def rate_se(p: float, n: int) -> float:
    """Standard error of a binomial proportion ``p`` over ``n`` independent trials (Wald):
    ``sqrt(p (1 - p) / n)``; ``nan`` for ``n < 1``."""
    return math.sqrt(p * (1 - p) / n) if n >= 1 else float("nan")


def diff_se(p0: float, n0: int, p1: float, n1: int) -> float:
    """Standard error of ``p1 - p0`` for two independent binomial proportions (normal
    approximation): ``sqrt(p0 (1 - p0) / n0 + p1 (1 - p1) / n1)``."""
    return math.sqrt(rate_se(p0, n0) ** 2 + rate_se(p1, n1) ** 2)


def mean_se(std: float, n: int) -> float:
    """Standard error of a mean of ``n`` samples whose *population* standard deviation (divisor
    ``n``) is ``std``: ``std / sqrt(n - 1)`` (= the sample std over ``sqrt(n)``); ``nan`` for ``n < 2``."""
    return std / math.sqrt(n - 1) if n >= 2 else float("nan")


@dataclass(frozen=True)
class MeanChange:
    """A mean measured twice (e.g. the rollout reward at the first and last step): ``before`` with
    standard error ``se_before`` over ``n_before`` samples at ``step_before``, likewise ``after``;
    ``se`` of the difference (independent samples) and ``z = (after - before) / se``."""

    key: str
    before: float
    se_before: float
    n_before: int
    step_before: int
    after: float
    se_after: float
    n_after: int
    step_after: int

    @property
    def se(self) -> float:
        return math.sqrt(self.se_before ** 2 + self.se_after ** 2)

    @property
    def z(self) -> float:
        return (self.after - self.before) / self.se if self.se > 0 else float("nan")

    def line(self) -> str:
        """``key: before ± se (step s, N=n) -> after ± se (...), change ± se, z``."""
        return (f"{self.key}: {self.before:.4g} ± {self.se_before:.2g} (step {self.step_before}, N={self.n_before}) -> "
                f"{self.after:.4g} ± {self.se_after:.2g} (step {self.step_after}, N={self.n_after}), change "
                f"{self.after - self.before:+.4g} ± {self.se:.2g}, z = {self.z:+.1f}")


def mean_change(rows: Sequence[dict], prefix: str = "rollout/reward") -> Optional[MeanChange]:
    """The first and last logged ``<prefix>_mean`` of :func:`read_metrics` rows, with standard errors
    from ``<prefix>_std`` (population) and ``rollout/num_trajectories`` (:func:`mean_se`); ``None`` when
    fewer than two rows hold all three."""
    need = (f"{prefix}_mean", f"{prefix}_std", "rollout/num_trajectories")
    have = [r for r in rows if all(k in r for k in need)]
    if len(have) < 2:
        return None
    first, last = have[0], have[-1]
    n0, n1 = int(first[need[2]]), int(last[need[2]])
    return MeanChange(prefix, float(first[need[0]]), mean_se(float(first[need[1]]), n0), n0, int(first["step"]),
                      float(last[need[0]]), mean_se(float(last[need[1]]), n1), n1, int(last["step"]))


@dataclass(frozen=True)
class Change:
    """One rate measured twice: ``before`` over ``n_before`` samples at ``step_before``, ``after``
    over ``n_after`` at ``step_after``; ``z = (after - before) / diff_se`` (``nan`` when the
    standard error is 0)."""

    source: str  # "validation" or "rollout"
    key: str
    before: float
    n_before: int
    step_before: int
    after: float
    n_after: int
    step_after: int

    @property
    def se(self) -> float:
        return diff_se(self.before, self.n_before, self.after, self.n_after)

    @property
    def z(self) -> float:
        se = self.se
        return (self.after - self.before) / se if se > 0 else float("nan")


def _first_last(rows: Sequence[dict], source: str) -> Optional[tuple]:
    have = [r for r in rows if f"{source}/format_error_rate" in r]
    return (have[0], have[-1]) if len(have) >= 2 else None


def changes(rows: Sequence[dict], num_trajectories: Optional[Dict[str, int]] = None) -> List[Change]:
    """The first and last measurement of each rate in :data:`RATES`, for validation and rollout.

    Args:
        rows: :func:`read_metrics` output.
        num_trajectories: samples per measurement by source, for logs written before
            ``<source>/num_trajectories`` was logged.

    Returns:
        validation changes first; a source measured fewer than twice is left out.
    """
    out = []
    for source in ("validation", "rollout"):
        fl = _first_last(rows, source)
        if fl is None:
            continue
        first, last = fl
        n = lambda r: int(r.get(f"{source}/num_trajectories", (num_trajectories or {}).get(source, 0)))
        for key, _, _ in RATES:
            out.append(Change(source, key, float(first[f"{source}/{key}"]), n(first), int(first["step"]),
                              float(last[f"{source}/{key}"]), n(last), int(last["step"])))
    return out


def before_after_table(chs: Sequence[Change]) -> str:
    """A Markdown table: one row per change, each figure with its source, step and sample count."""
    lines = ["| figure | before | after | change | z (change / SE) |", "|---|---|---|---|---|"]
    labels = {k: label for k, label, _ in RATES}
    for c in chs:
        what = ("held-out validation" if c.source == "validation" else "training rollouts") + f" {labels[c.key]}"
        lines.append(f"| {what} | {c.before:.3f} ± {rate_se(c.before, c.n_before):.3f} (step {c.step_before}, "
                     f"N={c.n_before}) | {c.after:.3f} ± {rate_se(c.after, c.n_after):.3f} (step {c.step_after}, "
                     f"N={c.n_after}) | {c.after - c.before:+.3f} ± {c.se:.3f} | {c.z:+.1f} |")
    return "\n".join(lines)


def save_curves_png(rows: Sequence[dict], path: str | Path, title: str = "GRPO run") -> Path:
    """Plot the per-step rollout curves (reward mean; format-error rate and accuracy) with the
    validation points on top; returns ``path``. Matplotlib's Agg backend, 100 dpi."""
    import matplotlib  # lazy: heavy, only needed on this path

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: heavy, only needed on this path

    fig, (ax_r, ax_p) = plt.subplots(1, 2, figsize=(11, 4))
    roll = [r for r in rows if "rollout/reward_mean" in r]
    val = [r for r in rows if "validation/format_error_rate" in r]
    ax_r.plot([r["step"] for r in roll], [r["rollout/reward_mean"] for r in roll], marker=".", label="rollout reward mean")
    if val and "validation/reward_mean" in val[0]:
        ax_r.plot([r["step"] for r in val], [r["validation/reward_mean"] for r in val], marker="o", linestyle="--",
                  label="validation reward mean")
    ax_r.set_xlabel("GRPO step")
    ax_r.set_ylabel("reward")
    ax_r.grid(alpha=0.3)
    ax_r.legend(fontsize=8)
    for key, label, _ in RATES:
        line, = ax_p.plot([r["step"] for r in roll], [r[f"rollout/{key}"] for r in roll], marker=".", alpha=0.6,
                          label=f"rollout {label}")
        if val:
            ax_p.plot([r["step"] for r in val], [r[f"validation/{key}"] for r in val], marker="o", linestyle="--",
                      linewidth=2, color=line.get_color(), label=f"validation {label}")
    ax_p.set_xlabel("GRPO step")
    ax_p.set_ylim(-0.02, 1.02)
    ax_p.grid(alpha=0.3)
    ax_p.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
