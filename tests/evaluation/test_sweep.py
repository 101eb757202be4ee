"""evaluation/sweep.py on a tiny run with two saved steps: conversion, evaluation, the table and
the plot; a rerun skips finished conversions and resumes evaluations; bad --steps / run dirs.

The run is made like the GRPO driver leaves one: ``RUN/config.yaml`` naming ``model.hf_path``
and ``checkpoint.save_dir``, ``RUN/checkpoints/step_00000002`` and ``step_00000004`` (Megatron
dist checkpoints without a stored HF config, as training writes them) and ``latest``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_brrm.evaluation.report import fmt

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
           TRANSFORMERS_OFFLINE="1")


@pytest.fixture(scope="module")
def tiny_run(tiny_qwen3_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("sweep") / "run"
    ckpts = run / "checkpoints"
    first = ckpts / "step_00000002"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "convert_hf_to_megatron.py"), "--hf-path",
                           str(tiny_qwen3_dir), "--megatron-path", str(first), "--no-progress"],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shutil.rmtree(first / "hf")  # training checkpoints carry no HF config: it comes from config.yaml
    (first / "run_config.yaml").unlink()
    shutil.copytree(first, ckpts / "step_00000004")
    for step in (2, 4):
        (ckpts / f"step_{step:08d}" / "train_state.json").write_text(json.dumps({"step": step}))
    (ckpts / "latest").write_text("step_00000004\n")
    (run / "config.yaml").write_text(f"model:\n  hf_path: {tiny_qwen3_dir}\ncheckpoint:\n  save_dir: {ckpts}\n")
    return run


def _sweep(*args):
    return subprocess.run([sys.executable, str(REPO / "evaluation" / "sweep.py"), *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=600)


def test_sweep_two_steps_table_plot_and_resume(tiny_run, tmp_path):
    out = tmp_path / "sweep"
    common = ["--run-dir", tiny_run, "--bench", "rewardbench", "--output-dir", out,
              # passed through to evaluation/run.py:
              "--limit", "1", "--max-new-tokens", "4", "--no-progress", "--unparseable-as", "tie"]
    first = _sweep(*common, "--steps", "2")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert (out / "hf" / "step_00000002" / "config.json").is_file()
    weights = sorted((out / "hf" / "step_00000002").glob("*.safetensors"))
    assert weights
    stamp = weights[0].stat().st_mtime_ns

    second = _sweep(*common, "--steps", "all")
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert "already converted" in second.stdout and weights[0].stat().st_mtime_ns == stamp
    res = {s: json.loads((out / f"step_{s:08d}" / "results.json").read_text()) for s in (2, 4)}
    assert any(n.startswith("resumed: 1 judged orders reused") for n in res[2]["notes"]), res[2]["notes"]
    assert res[4]["config"]["unparseable_as"] == "tie" and res[4]["config"]["limit"] == 1
    assert res[4]["config"]["model"] == str(out / "hf" / "step_00000004")

    table = (out / "sweep.table.md").read_text()
    for s in (2, 4):  # one row per step, the numbers of that step's results.json (partial: --limit)
        score = res[s]["summary"]["rewardbench"]
        assert f"| step {s} | {fmt(score, True)} | - | - | {fmt(score, True)} |" in table
    assert table.index("| step 2 |") < table.index("| step 4 |")
    png = (out / "sweep_rewardbench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert not (out / "sweep_rmb.png").exists()
    summary = json.loads((out / "sweep.json").read_text())
    assert [(r["step"], r["ok"]) for r in summary["steps"]] == [(2, True), (4, True)]
    assert summary["save_dir"] == str(tiny_run / "checkpoints")


def test_step_selection_and_bad_input(tiny_run, tmp_path):
    from megatron_brrm.evaluation.sweep import SweepError, find_save_dir, parse_args, select_steps

    save_dir = find_save_dir(tiny_run)
    assert save_dir == tiny_run / "checkpoints" and find_save_dir(save_dir) == save_dir
    assert [s for s, _ in select_steps(save_dir, "all")] == [2, 4]
    assert [s for s, _ in select_steps(save_dir, "latest")] == [4]
    assert [s for s, _ in select_steps(save_dir, "4,2")] == [2, 4]
    with pytest.raises(SweepError, match=r"step\(s\) \[3\].*saved steps: 2, 4"):
        select_steps(save_dir, "2,3")
    with pytest.raises(SweepError, match="expected latest, all"):
        select_steps(save_dir, "last")
    with pytest.raises(SweepError, match="no step_\\* checkpoint found"):
        find_save_dir(tmp_path)
    with pytest.raises(SweepError, match="--output is set by the sweep"):
        parse_args(["--run-dir", str(tiny_run), "--output", "x.json"])
    args, rest = parse_args(["--run-dir", str(tiny_run), "--limit", "3", "--engine", "vllm", "--tp", "2"])
    assert args.engine == "vllm" and rest == ["--limit", "3", "--tp", "2"]
    proc = _sweep("--run-dir", tmp_path / "nowhere")
    assert proc.returncode == 2 and "no such folder" in proc.stderr and "Traceback" not in proc.stderr


def test_sweep_stops_when_run_py_refuses_its_options(tiny_run, tmp_path):
    # a misspelt run.py option fails the first step's evaluation with exit 2: stop, do not convert the rest
    out = tmp_path / "bad"
    hf = out / "hf" / "step_00000002"
    hf.mkdir(parents=True)  # pretend step 2 is converted already (the conversion is tested above)
    (hf / "config.json").write_text("{}")
    proc = _sweep("--run-dir", tiny_run, "--output-dir", out, "--limt", "1")
    assert proc.returncode == 2 and "unrecognized arguments: --limt" in proc.stderr
    assert "refused the options or data of step 2" in proc.stderr
    assert not (out / "hf" / "step_00000004").exists()
