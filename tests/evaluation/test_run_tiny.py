"""run.py end to end with a tiny random Qwen3 on CPU (HF engine): all three benchmarks, all
outputs, and resumption of an interrupted run from the generation cache."""
from __future__ import annotations

import json

from megatron_brrm.evaluation.benchmarks import select_items


def test_tiny_model_runs_all_benchmarks_and_resumes(tiny_qwen3_dir, run_cli, tmp_path, all_comparisons):
    out = tmp_path / "eval" / "results.json"
    args = ["--bench", "all", "--model", tiny_qwen3_dir, "--engine", "hf", "--limit", "1",
            "--max-new-tokens", "16", "--batch-size", "4", "--seed", "3", "--output", out, "--no-progress"]
    proc = run_cli("run.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    expected = {name: [c.comparison_id for c in select_items(d.comparisons, 1)] for name, d in all_comparisons.items()}
    assert set(res["benchmarks"]) == {"rewardbench", "rmbench", "rmb"}
    assert [r["comparison_id"] for r in res["records"]] == [cid for name in ("rewardbench", "rmbench", "rmb")
                                                          for cid in expected[name]]
    assert len(expected["rmbench"]) == 9
    for r in res["records"]:
        assert len(r["turn_texts"]) == 2 and all(isinstance(t, str) for t in r["turn_texts"])
        assert r["correct"] == (r["verdict"] is not None and r["verdict"] == r["label"])
        assert r["label"] == (2 if r["swapped"] else 1)
    for name, b in res["benchmarks"].items():
        bad = sum(1 for r in res["records"] if r["benchmark"] == name and r["verdict"] is None)
        assert b["format_errors"]["count"] == bad
        assert b["n_records"] == len(expected[name])
        assert b["coverage"]["partial"] is True  # --limit and samples/
        assert res["summary"][name] is not None and 0.0 <= res["summary"][name] <= 100.0
    # table and PNG
    table = (out.parent / "results.table.md").read_text()
    assert "| RewardBench | RM-Bench | RMB | Avg |" in table and table.strip() in proc.stdout
    png = (out.parent / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    cache = out.parent / "results.cache.jsonl"
    lines = cache.read_text().splitlines()
    assert len(lines) == len(res["records"])

    # Interrupt: keep 5 cached generations and half a line, then rerun the same command.
    cache.write_text("\n".join(lines[:5]) + "\n" + lines[5][: len(lines[5]) // 2])
    proc2 = run_cli("run.py", *args)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    res2 = json.loads(out.read_text())
    assert any(n.startswith("resumed: 5 judged orders reused") for n in res2["notes"]), res2["notes"]
    # per-comparison seeding: regenerated comparisons (other batches) give the same texts
    assert res2["records"] == res["records"]
    assert res2["benchmarks"] == res["benchmarks"]

    # re-scoring the saved generations without a model reproduces every score and record
    proc3 = run_cli("run.py", "--engine", "replay", "--replay", out, "--output", tmp_path / "replayed.json", "--no-png")
    assert proc3.returncode == 0, proc3.stderr[-3000:]
    res3 = json.loads((tmp_path / "replayed.json").read_text())
    assert res3["records"] == res["records"]
    assert res3["benchmarks"] == res["benchmarks"] and res3["summary"] == res["summary"]


def test_vllm_engine_fails_clearly_without_vllm(tiny_qwen3_dir, run_cli, tmp_path):
    """A venv without vLLM (simulated by a ``vllm`` package that fails to import): one line saying how
    to install it on GPU and on CPU, no traceback, exit 2."""
    shim = tmp_path / "shim" / "vllm"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named vllm')\n")
    proc = run_cli("run.py", "--engine", "vllm", "--model", tiny_qwen3_dir, "--output", tmp_path / "r.json",
                   env={"PYTHONPATH": str(shim.parent)})
    assert proc.returncode == 2
    assert "--engine vllm: VLLMEngine needs vLLM" in proc.stderr and "tools/install_vllm_cpu.sh" in proc.stderr
    assert "--engine hf" in proc.stderr and "Traceback" not in proc.stderr
