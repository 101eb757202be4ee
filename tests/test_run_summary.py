"""run_summary: the before/after table, its standard errors (against the binomial formulas) and the PNG."""
from __future__ import annotations

import json
import math

import pytest

from megatron_brrm.run_summary import before_after_table, changes, diff_se, rate_se, read_metrics, save_curves_png


def _rows():
    return [
        {"step": 0, "validation/format_error_rate": 0.5, "validation/accuracy": 0.25, "validation/num_trajectories": 128},
        {"step": 1, "rollout/format_error_rate": 0.75, "rollout/accuracy": 0.125, "rollout/reward_mean": -3.0,
         "rollout/num_trajectories": 16},
        {"step": 2, "rollout/format_error_rate": 0.25, "rollout/accuracy": 0.375, "rollout/reward_mean": -1.0,
         "rollout/num_trajectories": 16, "validation/format_error_rate": 0.2, "validation/accuracy": 0.4,
         "validation/num_trajectories": 128},
    ]


def test_standard_errors_follow_the_binomial_formulas():
    assert rate_se(0.5, 100) == pytest.approx(0.05)
    assert rate_se(0.2, 64) == pytest.approx(math.sqrt(0.2 * 0.8 / 64))
    assert diff_se(0.5, 128, 0.2, 128) == pytest.approx(math.sqrt(0.25 / 128 + 0.16 / 128))
    assert math.isnan(rate_se(0.5, 0))


def test_changes_pair_the_first_and_last_measurement_of_each_source():
    chs = changes(_rows())
    assert [(c.source, c.key) for c in chs] == [("validation", "format_error_rate"), ("validation", "accuracy"),
                                                ("rollout", "format_error_rate"), ("rollout", "accuracy")]
    fmt = chs[0]
    assert (fmt.before, fmt.after, fmt.n_before, fmt.n_after, fmt.step_before, fmt.step_after) == (0.5, 0.2, 128, 128, 0, 2)
    assert fmt.z == pytest.approx((0.2 - 0.5) / math.sqrt(0.25 / 128 + 0.16 / 128))  # -5.2: significant
    assert chs[2].n_before == 16 and chs[2].step_before == 1
    # a log without counts takes them from the caller; a source measured once is left out
    old = [{k: v for k, v in r.items() if "num_trajectories" not in k} for r in _rows()[:2]]
    assert changes(old, {"validation": 8}) == []


def test_table_labels_every_figure_with_source_step_and_count():
    table = before_after_table(changes(_rows()))
    lines = table.splitlines()
    assert lines[2].startswith("| held-out validation format-error rate | 0.500 ± 0.044 (step 0, N=128) | "
                               "0.200 ± 0.035 (step 2, N=128) | -0.300 ± 0.057 | -5.3 |")
    assert lines[4].startswith("| training rollouts format-error rate | 0.750 ± 0.108 (step 1, N=16)")


def test_read_metrics_names_a_broken_line_and_the_png_is_written(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _rows()) + "\n")
    assert read_metrics(path) == _rows() and read_metrics(tmp_path / "absent.jsonl") == []
    png = save_curves_png(read_metrics(path), tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    path.write_text(path.read_text() + "{broken\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:4: not JSON"):
        read_metrics(path)


def test_mean_change_takes_standard_errors_from_the_logged_population_std():
    from megatron_brrm.run_summary import mean_change, mean_se

    # 5 samples with population std 2 have sample std 2 * sqrt(5/4); SE = that / sqrt(5) = 2 / sqrt(4) = 1
    assert mean_se(2.0, 5) == pytest.approx(1.0) and math.isnan(mean_se(1.0, 1))
    rows = [{"step": 0, "validation/reward_mean": 0.1},
            {"step": 1, "rollout/reward_mean": 0.25, "rollout/reward_std": 0.3, "rollout/num_trajectories": 10},
            {"step": 2, "rollout/reward_mean": 0.5, "rollout/reward_std": 0.4, "rollout/num_trajectories": 17}]
    c = mean_change(rows)
    assert (c.before, c.after, c.n_before, c.n_after, c.step_before, c.step_after) == (0.25, 0.5, 10, 17, 1, 2)
    se = math.sqrt(0.3 ** 2 / 9 + 0.4 ** 2 / 16)  # 0.1 and 0.1: SE of the difference sqrt(0.02)
    assert c.se == pytest.approx(se) and c.z == pytest.approx(0.25 / se)
    assert "z = +1.8" in c.line()
    assert mean_change(rows[:2]) is None  # one measurement: no change
