"""The GRPO driver on the distributed runtime: engine fleet, Policy facade, refit, colocated lifecycle.

* Two runs of 2 GRPO steps on the tiny Qwen3 (TP=2 policy, colocated fleet): one engine with the
  policy offloading everything while the engine generates, two engines with no offload. They must
  produce the same trajectories (tokens) and the same losses, and leave bit-identical weights: the
  fleet's split does not change samples (per-sample seeds), and an offload/onload round trip does
  not change training (raw byte copies). Every step and the validation go through the lifecycle in
  order; the offload frees >= 90% of the parameters', gradients' and optimizer state's bytes.
* An engine that raises in turn 2 of step 2: the step fails with a WorkerError naming the engine,
  its node and the method, and a new run resumes from the checkpoint of step 1 and finishes.
"""
from __future__ import annotations

import functools
import json
import sys

import pytest
import torch
from ray import cloudpickle

from megatron_brrm.rollout.hf_engine import HFEngine

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(900)]
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules

STEP = ["offload", "wake", "generate", "sleep", "onload", "logprobs", "train", "refit"]
GENERATION = ["offload", "wake", "generate", "sleep", "onload"]


class FailsOnSecondTurn2(HFEngine):
    """Generates normally, except that its second turn-2 call raises (step 2 of a run without validation)."""

    calls = 0

    def generate(self, prompts, params, group_ids=None):
        if any(self.tokenizer.decode(p).count("<|im_start|>assistant") > 1 for p in prompts):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("engine broke in turn 2 (injected)")
        return super().generate(prompts, params, group_ids)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from megatron_brrm.data import write_pairs
    from megatron_brrm.data.synthetic import marker_task

    d = tmp_path_factory.mktemp("grpo_data")
    write_pairs(d / "train.jsonl", marker_task(4, seed=1, split="train"))
    write_pairs(d / "val.jsonl", marker_task(2, seed=1, split="val"))
    return d


def _cfg(tiny_qwen3_dir, data_dir, out, *extra):
    from megatron_brrm.config import load_config

    return load_config(None, [
        f"model.hf_path={tiny_qwen3_dir}", "model.transformer_impl=local", "parallel.tensor_model_parallel_size=2",
        "parallel.backend=gloo", f"data.train_path={data_dir / 'train.jsonl'}", "grpo.num_prompts_per_step=2",
        "grpo.num_generations=2", "grpo.global_batch_size=4", "grpo.max_num_steps=2", "grpo.optimizer.lr=1e-3",
        "grpo.optimizer.lr_warmup_steps=0", "grpo.kl_coef=0.01", "rollout.max_new_tokens_turn1=12",
        "rollout.max_new_tokens_turn2=12", "rollout.temperature=1.0", "rollout.colocated=true",
        f"logging.output_dir={out}", "logging.tensorboard=false", *extra])


def _run(cfg):
    from megatron_brrm.train import GRPOTrainer

    trainer = GRPOTrainer(cfg, resume=False)
    try:
        phases = {"validation": (trainer.validate(), list(trainer.lifecycle))[1]}
        losses, freed = [], None
        for step in (1, 2):
            m = trainer.train_step()
            trainer.step = step
            phases[step] = list(trainer.lifecycle)
            losses.append(m["train/loss"])
            assert m["train/token_mult_prob_error"] < 1.001 and m["train/gen_kl_error"] < 1e-4, m  # refit is right
        if cfg.rollout.colocated_offload == "all":  # optimizer state exists now: measure on the actors
            before = trainer.policy.memory_bytes()
            freed = trainer.policy.offload("all")
            during = trainer.policy.memory_bytes()
            trainer.policy.onload()
            freed.update(before=before, during=during, after=trainer.policy.memory_bytes())
        weights = trainer.policy.hf_state_dict()
        rollouts = [json.loads(line) for s in (1, 2)
                    for line in (trainer.out / "rollouts" / f"step_{s}.jsonl").read_text().splitlines()]
        metrics = m
    finally:
        trainer.close()
    return {"phases": phases, "losses": losses, "weights": weights, "rollouts": rollouts, "freed": freed,
            "metrics": metrics}


def test_fleet_split_and_offload_leave_training_unchanged(tiny_qwen3_dir, data_dir, tmp_path):
    one = _run(_cfg(tiny_qwen3_dir, data_dir, tmp_path / "one", "rollout.num_engines=1", "rollout.colocated_offload=all",
                    f"data.val_path={data_dir / 'val.jsonl'}", "grpo.val_num_pairs=2"))
    two = _run(_cfg(tiny_qwen3_dir, data_dir, tmp_path / "two", "rollout.num_engines=2", "rollout.colocated_offload=none",
                    f"data.val_path={data_dir / 'val.jsonl'}", "grpo.val_num_pairs=2"))
    for run in (one, two):
        assert run["phases"] == {"validation": GENERATION, 1: STEP, 2: STEP}
    assert [r["turn_texts"] for r in one["rollouts"]] == [r["turn_texts"] for r in two["rollouts"]]
    assert one["losses"] == two["losses"]
    assert set(one["weights"]) == set(two["weights"])
    assert all(torch.equal(one["weights"][n], t) for n, t in two["weights"].items())
    m = two["metrics"]
    assert m["rollout/engine0/generated_tokens"] > 0 and m["rollout/engine1/generated_tokens"] > 0
    assert m["rollout/engine_imbalance"] >= 1.0
    freed = one["freed"]
    for rank, (before, during, after) in enumerate(zip(freed["before"], freed["during"], freed["after"])):
        total = sum(before.values())
        assert before["optimizer"] > 0 and before["grads"] > 0 and before["params"] > 0, rank
        assert sum(during.values()) <= 0.1 * total, (rank, during, before)  # >= 90% released
        assert after == before, rank
    assert freed["bytes_freed"] >= 0.9 * freed["bytes_before"]


def test_failing_engine_is_named_and_the_run_resumes(tiny_qwen3_dir, data_dir, tmp_path):
    from megatron_brrm.train import GRPOTrainer
    from megatron_brrm.workers.worker_group import WorkerError

    cfg = _cfg(tiny_qwen3_dir, data_dir, tmp_path / "run", "rollout.num_engines=1",
               f"checkpoint.save_dir={tmp_path / 'ckpt'}", "checkpoint.save_every_n_steps=1")
    trainer = GRPOTrainer(cfg, resume=True,
                          engine_factory=functools.partial(FailsOnSecondTurn2, str(tiny_qwen3_dir)))
    node = trainer.fleet.engines[0].node
    try:
        with pytest.raises(WorkerError) as err:
            trainer.fit()
        failed_at = trainer.step
    finally:
        trainer.close()
    assert failed_at == 1 and err.value.group == "generation" and err.value.rank == 0
    assert err.value.method == "generate" and err.value.node == node and "injected" in str(err.value)
    resumed = GRPOTrainer(cfg, resume=True)
    try:
        assert resumed.step == 1  # from the checkpoint of step 1
        resumed.fit()
        assert resumed.step == 2
    finally:
        resumed.close()
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2] and (tmp_path / "ckpt" / "latest").read_text().strip() == "step_00000002"
