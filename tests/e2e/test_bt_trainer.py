"""Bradley-Terry training end to end on CPU (Ray + gloo ranks, tiny Qwen3).

* Learning: the synthetic marker task (megatron_brrm/data/synthetic.py: the better reply holds the
  word "correct"; held-out pairs use filler words never seen in training), served by a custom
  dataset class loaded by path, trained at TP=1 x DP=2 with the distributed optimizer. Its held-out
  split is also written by hand in four other layouts (NeMo-RL context + completions JSONL, a
  BinaryPreferenceDataset with renamed keys, verl parquet, nested HelpSteer3) and validated as five
  named sets; every set must end at pairwise accuracy >= 0.9. The run is interrupted after 2 steps
  and resumed (step, data position, LR schedule). The last checkpoint goes through
  tools/convert_megatron_to_hf.py (which must detect the reward model) and
  AutoModelForSequenceClassification must give the trainer's rewards to 1e-4 (fp32).
* Every layout trains: one optimizer step of the reward worker on each layout's pairs.
* The recipe model_configs/bt_tiny_cpu.yaml through the command line on samples/ (TP=2), its HF
  export scored by evaluation/run.py --engine scalar on the three benchmarks, and compare.py with a
  generative judge's results side by side.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bt_forms import CUSTOM_FILE, write_binary, write_helpsteer3_nested, write_nemo_rl, write_verl_parquet

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
pytestmark = pytest.mark.multiprocess

LR, MIN_LR, STEPS = 3e-3, 3e-4, 8


FILLER = 3  # filler words per reply: the untrained model's held-out accuracy is then near chance (~0.6)


def _triples(split, n):
    from megatron_brrm.data.synthetic import marker_task

    out = []
    for p in marker_task(n, 0, split=split, both_orders=False, num_filler_words=FILLER):
        c, r = (p.response1, p.response2) if p.preference == 1 else (p.response2, p.response1)
        out.append((p.context, c, r))
    return out


def _marker_config(tmp_path, model_dir):
    from megatron_brrm.config import RunConfig

    held = _triples("val", 48)
    cfg = RunConfig(name="bt_marker")
    cfg.model.hf_path, cfg.model.transformer_impl = str(model_dir), "local"
    cfg.parallel.backend = "gloo"
    cfg.bt.world_size = 2  # TP=1 -> DP=2 (distributed optimizer on by default)
    d = cfg.data
    d.custom_cls.path, d.custom_cls.name = str(CUSTOM_FILE), "MarkerPairs"
    d.custom_cls.kwargs = {"num_pairs": 256, "num_filler_words": FILLER}
    d.val_data_paths = {
        "heldout": {"split": "val", "max_pairs": 48},
        "nemo": {"path": str(write_nemo_rl(tmp_path / "nemo.jsonl", held)), "format": "PreferenceDataset"},
        "binary": {"path": str(write_binary(tmp_path / "bin.jsonl", held)), "format": "BinaryPreferenceDataset",
                   "prompt_key": "question", "chosen_key": "good", "rejected_key": "bad"},
        "verl": {"path": str(write_verl_parquet(tmp_path / "verl.parquet", held)), "format": "verl"},
        "hs3": {"path": str(write_helpsteer3_nested(tmp_path / "hs3.jsonl", held)), "format": "helpsteer3_nested"},
    }
    b = cfg.bt
    b.global_batch_size, b.micro_batch_size, b.max_num_steps, b.max_length = 16, 4, STEPS, 128
    b.val_every_n_steps, b.val_batch_size = 4, 48
    b.optimizer.lr, b.optimizer.min_lr, b.optimizer.lr_decay_style, b.optimizer.lr_warmup_steps = LR, MIN_LR, "cosine", 0
    cfg.checkpoint.save_every_n_steps, cfg.checkpoint.keep_last_k = 2, 2
    cfg.logging.output_dir, cfg.logging.tensorboard = str(tmp_path / "run"), True
    return cfg


def test_bt_learns_marker_task_resumes_and_exports(tmp_path, tiny_qwen3_dir):
    from megatron_brrm.rollout.scalar import SequenceClassifierScorer
    from megatron_brrm.train_bt import BTTrainer

    cfg = _marker_config(tmp_path, tiny_qwen3_dir)
    first = BTTrainer(cfg, resume=True)
    try:  # two steps and a checkpoint, then the run "stops"
        assert sorted(first.val_data) == ["binary", "heldout", "hs3", "nemo", "verl"]
        assert all(len(v) == 48 for v in first.val_data.values())
        for name in first.val_data:  # the five layouts hold the very same token sequences
            assert first.val_data[name] == first.val_data["heldout"], name
        start = first.validate()
        for _ in range(2):
            first.train_step()
            first.step += 1
        first.save()
        position = first.loader.state_dict()
    finally:
        first.close()
    second = BTTrainer(cfg, resume=True)
    try:
        assert second.step == 2 and second.loader.state_dict() == position
        last = second.fit()
        rewards = second.rewards(second.val_data["heldout"])
    finally:
        second.close()
    rows = [json.loads(line) for line in (Path(cfg.logging.output_dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "train/loss" in r]
    assert steps == list(range(3, STEPS + 1))  # resumed: no step repeated
    lr3 = next(r["train/lr"] for r in rows if r["step"] == 3)  # cosine from LR to MIN_LR over STEPS, step index 2
    assert lr3 == pytest.approx(MIN_LR + (LR - MIN_LR) * (1 + math.cos(math.pi * 2 / STEPS)) / 2, rel=1e-6)
    for key in ("train/loss", "train/accuracy", "train/reward_margin", "train/reward_mean", "train/reward_std",
                "train/grad_norm"):
        assert math.isfinite(last[key]), key
    curve = {r["step"]: r["validation-heldout/accuracy"] for r in rows if "validation-heldout/accuracy" in r}
    print("held-out accuracy by step:", {0: start["validation-heldout/accuracy"], **curve})
    for name in ("heldout", "nemo", "binary", "verl", "hs3"):
        assert start[f"validation-{name}/accuracy"] == start["validation-heldout/accuracy"]
        assert last[f"validation-{name}/accuracy"] >= 0.9, (name, last[f"validation-{name}/accuracy"])
        assert last[f"validation-{name}/loss"] < start[f"validation-{name}/loss"]
    assert list((Path(cfg.logging.output_dir) / "tensorboard").glob("events.out.tfevents.*"))

    hf = tmp_path / "hf"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "convert_megatron_to_hf.py"), "--megatron-path",
                           str(Path(cfg.logging.output_dir) / "checkpoints"), "--hf-path", str(hf), "--hf-reference",
                           str(tiny_qwen3_dir), "--no-progress"], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((hf / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForSequenceClassification"] and config["id2label"] == {"0": "LABEL_0"}
    scorer = SequenceClassifierScorer(hf, device="cpu", batch_size=16)
    ids = [seq for pair in second.val_data["heldout"] for seq in pair]
    got = torch.tensor(scorer.score_ids(ids))
    err = float((got - rewards).abs().max())
    print(f"export: max |HF - Megatron| reward = {err:.2e} over {len(ids)} sequences")
    assert err <= 1e-4


def _train_each_form(rank, world, model_dir, forms):
    from transformers import AutoTokenizer

    from megatron_brrm.config import RunConfig
    from megatron_brrm.data.sets import DatasetSpec, load_pairs
    from megatron_brrm.parallel import destroy_parallel
    from megatron_brrm.train_bt import tokenize_pairs
    from megatron_brrm.workers.reward_worker import BTLoss, RewardWorker, bt_batch

    cfg = RunConfig()
    cfg.model.hf_path, cfg.parallel.backend = model_dir, "gloo"
    cfg.bt.micro_batch_size, cfg.bt.optimizer.lr = 2, 1e-3
    tok = AutoTokenizer.from_pretrained(model_dir)
    out = {}
    try:
        worker = RewardWorker(cfg)
        for name, spec_kwargs in forms:
            pairs, _ = tokenize_pairs(tok, load_pairs(DatasetSpec(name=name, where=name, **spec_kwargs)), 256)
            before = [p.detach().clone() for p in worker._params]
            res = worker.train(bt_batch([c for c, _ in pairs], [r for _, r in pairs], tok.pad_token_id), BTLoss())
            moved = sum(float((p.detach() - b).abs().sum()) for p, b in zip(worker._params, before))
            out[name] = (len(pairs), res.skipped, res.metrics["loss"], res.metrics["num_pairs"], moved)
    finally:
        destroy_parallel()
    return out


def test_every_layout_trains(tmp_path, tiny_reward_dir):
    from megatron_brrm.parallel.launch import run_on_ranks

    triples = _triples("train", 6)
    forms = [
        ("nemo_rl", {"path": str(write_nemo_rl(tmp_path / "n.jsonl", triples)), "format": "nemo_rl"}),
        ("binary", {"path": str(write_binary(tmp_path / "b.jsonl", triples)), "format": "binary",
                    "prompt_key": "question", "chosen_key": "good", "rejected_key": "bad"}),
        ("verl", {"path": str(write_verl_parquet(tmp_path / "v.parquet", triples)), "format": "verl"}),
        ("helpsteer3_nested", {"path": str(write_helpsteer3_nested(tmp_path / "h.jsonl", triples)), "format": "auto"}),
        ("custom", {"path": None, "format": "custom", "split": "train",
                    "custom_cls": (str(CUSTOM_FILE), "MarkerPairs", {"num_pairs": 6})}),
    ]
    out = run_on_ranks(_train_each_form, 1, args=(str(tiny_reward_dir), forms), timeout_s=300)[0]
    for name, _ in forms:
        n, skipped, loss, num_pairs, moved = out[name]
        assert n == 6 and not skipped and num_pairs == 6 and math.isfinite(loss) and moved > 0, (name, out[name])


def test_recipe_on_samples_then_scalar_evaluation_and_compare(tmp_path, tiny_qwen3_dir, capsys, monkeypatch):
    """The command lines, run through their main() in this process (same code, no interpreter start-ups)."""
    from megatron_brrm.evaluation.compare import main as compare_main
    from megatron_brrm.evaluation.run import main as run_main
    from megatron_brrm.train_bt import main as train_main

    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    assert train_main(["--config", "model_configs/bt_tiny_cpu.yaml", f"model.hf_path={tiny_qwen3_dir}",
                       f"logging.output_dir={out}", "bt.max_num_steps=2", "bt.val_every_n_steps=2",
                       "data.max_val_pairs=8"]) == 0
    assert "HF reward model (AutoModelForSequenceClassification)" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = rows[-1]
    assert final["step"] == 2 and {"validation-ultrafeedback/accuracy", "validation-hh_helpful/accuracy",
                                   "train/reward_std"} <= set(final)
    results = tmp_path / "eval" / "results.json"
    assert run_main(["--bench", "all", "--model", str(out / "hf"), "--engine", "scalar", "--limit", "2",
                     "--max-total-length", "256", "--output", str(results), "--no-png", "--no-progress",
                     "--name", "bt-tiny"]) == 0
    assert "tied rewards" in capsys.readouterr().out
    assert run_main(["--model", str(out / "hf"), "--engine", "hf", "--output", str(tmp_path / "x.json")]) == 2
    assert "is a Qwen3ForSequenceClassification (a scalar reward model); use --engine scalar" in capsys.readouterr().err
    res = json.loads(results.read_text())
    assert set(res["summary"]) == {"rewardbench", "rmbench", "rmb", "avg"}
    assert all(v is not None for v in res["summary"].values())
    records = res["records"]
    assert records and all(r["turn_texts"] == [] and len(r["extra"]["rewards"]) == 2 for r in records)
    for r in records:  # the verdict is the position of the higher reward
        r1, r2 = r["extra"]["rewards"]
        assert r["verdict"] == (1 if r1 > r2 else 2 if r2 > r1 else None)
    # RM-Bench: an item's 9 comparisons come from 6 scores (3 chosen x 3 rejected styles)
    item = [r for r in records if r["benchmark"] == "rmbench"][:9]
    chosen = {(r["meta"]["chosen_style"], r["extra"]["rewards"][1 if r["swapped"] else 0]) for r in item}
    rejected = {(r["meta"]["rejected_style"], r["extra"]["rewards"][0 if r["swapped"] else 1]) for r in item}
    assert len(item) == 9 and len(chosen) == 3 and len(rejected) == 3
    assert any(n.startswith("scalar: ") for n in res["notes"])
    # a generative judge's results on the same comparisons (replayed verdicts: always the chosen one)
    verdicts = tmp_path / "judge.jsonl"
    verdicts.write_text("".join(json.dumps({"comparison_id": r["comparison_id"], "swapped": r["swapped"],
                                            "verdict": 2 if r["swapped"] else 1}) + "\n" for r in records))
    judge = tmp_path / "judge.json"
    assert run_main(["--engine", "replay", "--replay", str(verdicts), "--limit", "2", "--output", str(judge),
                     "--no-png", "--name", "oracle-judge"]) == 0
    capsys.readouterr()
    assert compare_main([str(results), str(judge), "--reference", "none"]) == 0
    table = capsys.readouterr().out
    assert "| bt-tiny | scalar (BT) |" in table and "| oracle-judge | generative (brrm) |" in table
    n = len([r for r in records if r["primary"]])
    accuracy = 100.0 * sum(r["correct"] for r in records if r["primary"]) / n
    assert f"| bt-tiny | oracle-judge | {n} | {accuracy:.1f} | {accuracy:.1f} | 100.0 |" in table
