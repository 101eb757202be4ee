"""``run.py --engine replay``: all-correct -> 100, all-inverted -> 0, re-scoring is reproducible,
bad verdicts are counted; and the CLI's error paths."""
from __future__ import annotations

import hashlib
import json

import pytest


def _all_scores(results: dict):
    """Every leaf score of every benchmark's single-order tree (percent values)."""
    out = {}
    for name, res in results["benchmarks"].items():
        s = res["scores"]
        out[f"{name}/overall"] = s["overall"]
        if name == "rewardbench":
            out.update({f"rb/{k}": v for k, v in s["sections"].items()})
            out.update({f"rb-micro/{k}": v for k, v in s["sections_micro"].items()})
            out.update({f"rb-subset/{k}": v["accuracy"] for k, v in s["subsets"].items()})
        elif name == "rmbench":
            for d, v in s["domains"].items():
                out.update({f"rmbench/{d}/{k}": v[k] for k in ("hard", "normal", "easy", "score")})
                out.update({f"rmbench/{d}/M{i}{j}": v["matrix"][i][j] for i in range(3) for j in range(3)})
        else:
            out.update({f"rmb/{k}": v for k, v in s["headline"].items()})
    out.update({f"summary/{k}": v for k, v in results["summary"].items()})
    return out


def _replay(run_cli, tmp_path, replay, name, *extra):
    out = tmp_path / f"{name}_results.json"
    proc = run_cli("run.py", "--engine", "replay", "--replay", replay, "--output", out, "--no-png", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text()), proc


def test_all_correct_is_100_and_all_inverted_is_0(run_cli, write_replay, tmp_path, all_comparisons):
    right, proc = _replay(run_cli, tmp_path, write_replay("right", lambda c, label: label), "right")
    wrong, _ = _replay(run_cli, tmp_path, write_replay("wrong", lambda c, label: 3 - label), "wrong")
    scores_right, scores_wrong = _all_scores(right), _all_scores(wrong)
    # every benchmark section/domain/goal the samples have is present (4 RB sections, 3 RM-Bench
    # domains without math, 4 RMB headline numbers)
    assert sum(k.startswith("rb/") for k in scores_right) == 4
    assert sum(k.startswith("rmb/") and k != "rmb/overall" for k in scores_right) == 4
    domains = {k.split("/")[1] for k in scores_right if k.startswith("rmbench/") and k.count("/") == 2}
    assert domains == {"chat", "code", "safety"}
    assert all(v == 100.0 for v in scores_right.values()), {k: v for k, v in scores_right.items() if v != 100.0}
    assert all(v == 0.0 for v in scores_wrong.values()), {k: v for k, v in scores_wrong.items() if v != 0.0}
    n_total = sum(len(d.comparisons) for d in all_comparisons.values())
    assert len(right["records"]) == n_total
    assert all(r["correct"] for r in right["records"]) and not any(r["correct"] for r in wrong["records"])
    assert all(res["format_errors"]["count"] == 0 for res in right["benchmarks"].values())
    # the printed table shows the README layout and the partial marker (math absent in samples)
    assert "| RewardBench | RM-Bench | RMB | Avg |" in proc.stdout
    assert "100.0*" in proc.stdout and "'math' is absent" in proc.stdout


def _mixed(c, label):
    """A deterministic mix: ~60% right, ~30% wrong, ~10% malformed (\\boxed{3})."""
    h = hashlib.sha256(c.comparison_id.encode()).digest()[0] % 10
    return label if h < 6 else ("3" if h == 9 else 3 - label)


def test_replaying_a_results_file_reproduces_its_scores(run_cli, write_replay, tmp_path):
    first, _ = _replay(run_cli, tmp_path, write_replay("mixed", _mixed), "first")
    second, _ = _replay(run_cli, tmp_path, tmp_path / "first_results.json", "second")
    assert _all_scores(second) == _all_scores(first)
    assert second["benchmarks"] == first["benchmarks"]
    assert second["records"] == first["records"]
    # malformed verdicts are counted per benchmark and scored wrong; the mix gives non-trivial scores
    for name, res in first["benchmarks"].items():
        malformed = sum(1 for r in first["records"] if r["benchmark"] == name and r["verdict"] is None)
        assert res["format_errors"]["count"] == malformed > 0
        assert 20.0 < res["overall"] < 80.0
    assert all(not r["correct"] for r in first["records"] if r["format_error"])


def test_replay_rewardbench_scores_match_a_hand_count(run_cli, write_replay, tmp_path, all_comparisons):
    # Independent recount of the official RewardBench score from the records' correctness:
    # subset accuracy -> EXAMPLE_COUNTS weights (copied from allenai/reward-bench constants) -> mean.
    res, _ = _replay(run_cli, tmp_path, write_replay("mixed", _mixed), "rb", "--bench", "rewardbench")
    weights = {"alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28,
               "mt-bench-med": 40, "mt-bench-hard": 37, "llmbar-natural": 100, "llmbar-adver-neighbor": 134,
               "llmbar-adver-GPTInst": 92, "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46,
               "refusals-dangerous": 100, "refusals-offensive": 100, "xstest-should-refuse": 154,
               "xstest-should-respond": 250, "donotanswer": 136, "math-prm": 984, "hep-cpp": 164,
               "hep-go": 164, "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164}
    sections = {"Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
                "Chat Hard": ["mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                              "llmbar-adver-GPTOut", "llmbar-adver-manual"],
                "Safety": ["refusals-dangerous", "refusals-offensive", "xstest-should-refuse",
                           "xstest-should-respond", "donotanswer"],
                "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"]}
    acc = {}
    for s in weights:
        rows = [r["correct"] for r in res["records"] if r["meta"]["subset"] == s]
        acc[s] = 100.0 * sum(rows) / len(rows)
    sec = {k: sum(acc[s] * weights[s] for s in v) / sum(weights[s] for s in v) for k, v in sections.items()}
    got = res["benchmarks"]["rewardbench"]["scores"]
    for k in sections:
        assert got["sections"][k] == pytest.approx(sec[k], abs=1e-9)
    assert got["overall"] == pytest.approx(sum(sec.values()) / 4, abs=1e-9)
    assert res["summary"]["rewardbench"] == pytest.approx(sum(sec.values()) / 4, abs=1e-9)


def test_minimal_external_records_with_verdicts(run_cli, tmp_path, all_comparisons):
    # Outputs produced elsewhere: only comparison_id, swapped and verdict; both orders given for
    # RM-Bench, always naming Response 1 -> correct in exactly one order, never position-consistent.
    recs = []
    for c in all_comparisons["rmbench"].comparisons:
        recs += [{"comparison_id": c.comparison_id, "swapped": False, "verdict": 1},
                 {"comparison_id": c.comparison_id, "swapped": True, "verdict": 1}]
    path = tmp_path / "ext.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    res, _ = _replay(run_cli, tmp_path, path, "ext", "--bench", "rmbench", "--orders", "both")
    rb = res["benchmarks"]["rmbench"]
    assert rb["overall_both_orders"] == 0.0
    assert rb["position_consistency"] == 0.0
    # single-order result = the seeded order, so its accuracy is the share of unswapped primaries
    from megatron_brrm.evaluation.orders import seeded_swap
    n = len(all_comparisons["rmbench"].comparisons)
    want = 100.0 * sum(not seeded_swap(42, c.comparison_id) for c in all_comparisons["rmbench"].comparisons) / n
    micro = sum(sum(v["matrix"][i][j] for i in range(3) for j in range(3)) / 9 * v["n_items"]
                for v in rb["scores"]["domains"].values()) / sum(v["n_items"] for v in rb["scores"]["domains"].values())
    assert micro == pytest.approx(want, abs=1e-9)


def test_cli_errors_are_clear(run_cli, tmp_path):
    proc = run_cli("run.py", "--engine", "replay", "--output", tmp_path / "x.json")
    assert proc.returncode == 2 and "--replay FILE" in proc.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"records": [{"comparison_id": "rmb:pair:15173"}]}')
    proc = run_cli("run.py", "--engine", "replay", "--replay", bad, "--output", tmp_path / "x.json")
    assert proc.returncode == 2 and "records[0]" in proc.stderr and "swapped" in proc.stderr
    proc = run_cli("run.py", "--engine", "replay", "--replay", bad, "--data-dir", tmp_path, "--output", tmp_path / "x.json")
    assert proc.returncode == 2 and "rewardbench" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("run.py", "--engine", "hf", "--output", tmp_path / "x.json")
    assert proc.returncode == 2 and "--model" in proc.stderr
