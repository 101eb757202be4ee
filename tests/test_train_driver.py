"""The GRPO driver's loop bookkeeping, fast: a runtime of fakes (no Ray, no Megatron).

The fleet is the scripted judge (``tests/fake_judge.py``: well-formed BR-RM outputs whose verdict
follows the prompt, zero logprobs); the policy records its calls, returns the rollout logprobs as
its own and keeps checkpoints as JSON files. Checked: steps, validation and checkpoint cadence,
the lifecycle order, metrics keys, resume (step and data position), and the preemption stop.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from megatron_brrm.config import load_config
from megatron_brrm.workers.policy_group import TrainStep
from megatron_brrm.workers.runtime import Runtime

from fake_judge import FakeJudgeEngine


class ScriptedFleet(FakeJudgeEngine):
    """The scripted judge with the fleet's extras (per-step metrics, sleep/wake accounting)."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.sleeps, self.wakes = 0, []

    def pop_metrics(self):
        return {"engine0/generated_tokens": 1.0, "engine_imbalance": 1.0}

    def sleep(self):
        self.sleeps += 1

    def wake(self, tags=None):
        self.wakes.append(tags)


class FakePolicy:
    """Records calls; logprobs = the batch's rollout logprobs (so the mismatch is exactly 1.0)."""

    def __init__(self, store: Path):
        self.store, self.calls, self.steps = store, [], 0

    def get_logprobs(self, batch, reference=False, temperature=None):
        self.calls.append("ref_logprobs" if reference else "logprobs")
        return batch["rollout_logprobs"].clone() if "rollout_logprobs" in batch else torch.zeros_like(batch["input_ids"], dtype=torch.float)

    def train(self, batch, loss_fn):
        self.calls.append("train")
        self.steps += 1
        return TrainStep(metrics={"loss": 0.5, "lr": 1e-3, "rows": float(batch["input_ids"].shape[0])}, skipped=False,
                         step=self.steps)

    def offload(self, mode):
        self.calls.append(f"offload:{mode}")
        return {"bytes_before": 100, "bytes_after": 0, "bytes_freed": 100}

    def onload(self):
        self.calls.append("onload")
        return 100

    def save_checkpoint(self, save_dir, step, extra, keep_last_k):
        d = Path(save_dir) / f"step_{step}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "extra.json").write_text(json.dumps(extra))
        (Path(save_dir) / "latest").write_text(d.name)
        return str(d)

    def load_checkpoint(self, save_dir):
        latest = Path(save_dir) / "latest"
        return json.loads((Path(save_dir) / latest.read_text() / "extra.json").read_text()) if latest.exists() else None


def _trainer(tiny_qwen3_dir, tmp_path, *extra):
    from transformers import AutoTokenizer

    from megatron_brrm.data import write_pairs
    from megatron_brrm.data.synthetic import marker_task
    from megatron_brrm.train import GRPOTrainer

    if not (tmp_path / "train.jsonl").exists():
        write_pairs(tmp_path / "train.jsonl", marker_task(6, seed=1, split="train"))
        write_pairs(tmp_path / "val.jsonl", marker_task(2, seed=1, split="val"))
    cfg = load_config(None, [f"model.hf_path={tiny_qwen3_dir}", f"data.train_path={tmp_path / 'train.jsonl'}",
                             f"data.val_path={tmp_path / 'val.jsonl'}", "grpo.num_prompts_per_step=2",
                             "grpo.num_generations=2", "grpo.global_batch_size=2", "grpo.max_num_steps=5",
                             "grpo.val_every_n_steps=2", "grpo.val_num_pairs=2", "parallel.tensor_model_parallel_size=1",
                             f"checkpoint.save_dir={tmp_path / 'ckpt'}", "checkpoint.save_every_n_steps=3",
                             f"logging.output_dir={tmp_path / 'out'}", "logging.tensorboard=false", *extra])
    fleet = ScriptedFleet(AutoTokenizer.from_pretrained(tiny_qwen3_dir))
    policy = FakePolicy(tmp_path / "ckpt")
    refits = []
    runtime = Runtime(policy=policy, fleet=fleet, refit=lambda: refits.append(1) or _Stats())
    return GRPOTrainer(cfg, resume=True, runtime=runtime), policy, fleet, refits


class _Stats:
    num_bytes, num_buckets, gb_per_s, seconds = 10, 1, 1.0, 0.01


@pytest.mark.timeout(60)
def test_loop_cadence_lifecycle_metrics_and_resume(tiny_qwen3_dir, tmp_path):
    trainer, policy, fleet, refits = _trainer(tiny_qwen3_dir, tmp_path)
    phases = []
    real_step = trainer.train_step

    def step_and_record():
        m = real_step()
        phases.append(list(trainer.lifecycle))
        return m

    trainer.train_step = step_and_record
    last = trainer.fit()
    trainer.close()
    assert trainer.step == 5 and len(refits) == 5
    assert phases == [["offload", "wake", "generate", "sleep", "onload", "logprobs", "train", "refit"]] * 5
    # 3 validations + 5 steps generate between a full wake and a sleep; each refit wakes the weights first
    assert fleet.wakes.count(None) == fleet.sleeps == 8 and fleet.wakes.count(["weights"]) == 5
    assert policy.calls.count("offload:all") == policy.calls.count("onload") == 8
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert [r["step"] for r in rows if "validation/accuracy" in r] == [0, 2, 4]  # every 2 steps, and at 0
    assert [r["step"] for r in rows if "timing/checkpoint" in r] == [3, 5]  # every 3 steps and the last
    for r in rows[1:]:
        assert r["train/token_mult_prob_error"] == 1.0 and r["train/gen_kl_error"] == 0.0
        # the scripted judge is always well formed: reward = 0 per right verdict, -1 per wrong one
        assert r["rollout/format_error_rate"] == 0.0 and r["rollout/reward_mean"] == pytest.approx(r["rollout/accuracy"] - 1)
        for key in ("rollout/reward_mean", "rollout/engine_imbalance", "train/loss", "train/lr", "refit/bytes",
                    "memory/policy_bytes_offloaded", "timing/step", "advantages/advantage_mean"):
            assert key in r, key
    assert last["train/rows"] == 2.0  # 2 prompts x 2 samples / global batch 2 = 2 optimizer steps of 2 rows
    assert policy.calls.count("train") == 10 and policy.calls.count("ref_logprobs") == 5
    assert (tmp_path / "ckpt" / "latest").read_text() == "step_5"

    # resume: a new run continues from the checkpoint of step 3 (latest pointer moved back by hand)
    (tmp_path / "ckpt" / "latest").write_text("step_3")
    saved_loader = json.loads((tmp_path / "ckpt" / "step_3" / "extra.json").read_text())["loader"]
    resumed, policy2, _, refits2 = _trainer(tiny_qwen3_dir, tmp_path, "grpo.max_num_steps=4")
    assert resumed.step == 3 and refits2 == [1]  # a resumed run refits the engines first
    assert resumed.loader.state_dict() == saved_loader
    resumed.fit()
    resumed.close()
    assert resumed.step == 4 and policy2.calls.count("train") == 2


@pytest.mark.timeout(60)
def test_stop_request_checkpoints_the_step_and_returns(tiny_qwen3_dir, tmp_path):
    trainer, policy, _, _ = _trainer(tiny_qwen3_dir, tmp_path)
    trainer.fit(should_stop=lambda: trainer.step >= 1)
    trainer.close()
    assert trainer.stopped_early and trainer.step == 1
    assert (tmp_path / "ckpt" / "latest").read_text() == "step_1"  # not a cadence step: saved for the stop


@pytest.mark.timeout(60)
def test_shared_data_form_trains_both_orders_and_validates_each_named_set(tiny_qwen3_dir, tmp_path):
    """GRPO reads data.train_data_path (here a NeMo-RL ``context`` + ``completions`` file) and named
    data.val_data_paths, as the BT trainer does; metrics of each set go under validation-<name>/."""
    from megatron_brrm.data.synthetic import marker_task

    def nemo_rl(path, pairs):
        rows = [{"context": p.context, "completions": [
            {"rank": 0, "completion": p.response1 if p.preference == 1 else p.response2},
            {"rank": 1, "completion": p.response2 if p.preference == 1 else p.response1}]} for p in pairs]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    train = nemo_rl(tmp_path / "nemo_train.jsonl", marker_task(3, seed=2, split="train")[::2])
    a = nemo_rl(tmp_path / "nemo_a.jsonl", marker_task(2, seed=3, split="val")[:2])
    b = nemo_rl(tmp_path / "nemo_b.jsonl", marker_task(2, seed=4, split="val")[:1])
    trainer, _, _, _ = _trainer(tiny_qwen3_dir, tmp_path, "data.train_path=null", "data.val_path=null",
                                f"data.train_data_path={train}", f"data.val_data_paths.a={a}",
                                f"data.val_data_paths.b={b}", "grpo.max_num_steps=2", "checkpoint.save_dir=null")
    assert len(trainer.loader.pairs) == 2 * 3  # both orders of each pair
    assert {p.id.endswith(":swap") for p in trainer.loader.pairs} == {True, False}
    assert {k: len(v) for k, v in trainer.val_sets.items()} == {"a": 2, "b": 1}
    trainer.fit()
    trainer.close()
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["validation-a/num_trajectories"] == 2 and rows[0]["validation-b/num_trajectories"] == 1
    assert not any(k.startswith("validation/") for r in rows for k in r)
