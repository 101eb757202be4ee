"""The policy GRPO driver's loop on a runtime of fakes (no Ray, no Megatron): the GRPO driver's
loop with the policy task plugged in.

The fleet answers sample j of every prompt with " yes" (even j) or " no" (odd j) and EOS; the
environment rewards a response 1.0 when its text holds "yes", else 0.0, so every group of two gets
rewards (1, 0) and leave-one-out advantages (+1, -1) (a group of two is not std-scaled). Checked:
the lifecycle with the reward phase, the advantages the policy trains on, the rollout dump, the
environment's metrics, validation per named prompt set, checkpoint / resume of the data position,
and the environment shut down with the trainer.
"""
from __future__ import annotations

import json

import pytest

from megatron_brrm.config import load_config
from megatron_brrm.envs import RewardEnvironment
from megatron_brrm.rollout.engine import EngineAbilities, GenerationEngine, GenerationOutput
from megatron_brrm.workers.runtime import Runtime

from test_train_driver import FakePolicy, _Stats


class YesNoFleet(GenerationEngine):
    def __init__(self, tokenizer):
        self._tok = tokenizer
        self.sleeps = 0

    @property
    def tokenizer(self):
        return self._tok

    @property
    def abilities(self):
        return EngineAbilities(eos_token_ids=frozenset([self._tok.eos_token_id]))

    def generate(self, prompts, params, group_ids=None):
        out = []
        for _ in prompts:
            row = []
            for j in range(params.n):
                ids = self._tok(" yes" if j % 2 == 0 else " no", add_special_tokens=False)["input_ids"]
                ids = ids + [self._tok.eos_token_id]
                row.append(GenerationOutput(ids, self._tok.decode(ids), [-0.5] * len(ids), "stop"))
            out.append(row)
        return out

    def update_weights(self, named_tensors):
        raise NotImplementedError

    def pop_metrics(self):
        return {}

    def sleep(self):
        self.sleeps += 1

    def wake(self, tags=None):
        pass


class YesEnv(RewardEnvironment):
    name = "yes"

    def __init__(self):
        self.calls, self.closed = [], 0

    def rewards(self, groups):
        self.calls.append([[s.response for s in g] for g in groups])
        return [[1.0 if "yes" in s.response else 0.0 for s in g] for g in groups]

    def metrics(self):
        return {"calls": float(len(self.calls))}

    def shutdown(self):
        self.closed += 1


class RecordingPolicy(FakePolicy):
    def __init__(self, store):
        super().__init__(store)
        self.batches = []

    def train(self, batch, loss_fn):
        self.batches.append(batch)
        return super().train(batch, loss_fn)


def _write_prompts(path, n, tag):
    path.write_text("".join(json.dumps({"prompt": f"{tag} question {i}?", "reference": "ok"}) + "\n" for i in range(n)))
    return path


def _trainer(tiny_qwen3_dir, tmp_path, *extra):
    from transformers import AutoTokenizer

    from megatron_brrm.train_policy import PolicyTrainer

    cfg = load_config(None, [
        f"model.hf_path={tiny_qwen3_dir}", f"data.prompts_path={_write_prompts(tmp_path / 'p.jsonl', 5, 'train')}",
        "grpo.num_prompts_per_step=2", "grpo.num_generations=2",
        "grpo.global_batch_size=4", "grpo.max_num_steps=3", "grpo.val_every_n_steps=2",
        "parallel.tensor_model_parallel_size=1", "rollout.max_new_tokens_turn1=8", "env.type=bt",
        f"checkpoint.save_dir={tmp_path / 'ckpt'}", "checkpoint.save_every_n_steps=2",
        f"logging.output_dir={tmp_path / 'out'}", "logging.tensorboard=false", *extra])
    policy, env = RecordingPolicy(tmp_path / "ckpt"), YesEnv()
    runtime = Runtime(policy=policy, fleet=YesNoFleet(AutoTokenizer.from_pretrained(tiny_qwen3_dir)),
                      refit=lambda: _Stats())
    return PolicyTrainer(cfg, resume=True, runtime=runtime, env=env), policy, env


@pytest.mark.timeout(60)
def test_policy_loop_rewards_advantages_validation_and_resume(tiny_qwen3_dir, tmp_path):
    val = _write_prompts(tmp_path / "val.jsonl", 3, "held-out")
    trainer, policy, env = _trainer(tiny_qwen3_dir, tmp_path, f"data.val_prompts_path={val}")
    phases = []
    real_step = trainer.train_step
    trainer.train_step = lambda: (real_step(), phases.append(list(trainer.lifecycle)))[0]
    trainer.fit()
    trainer.close()
    assert phases == [["offload", "wake", "generate", "reward", "sleep", "onload", "logprobs", "train", "refit"]] * 3
    assert env.closed == 1
    # 3 training steps of 2 groups x 2 responses; validation (one response per prompt) at steps 0 and 2
    assert [len(c) for c in env.calls] == [3, 2, 2, 3, 2]
    assert env.calls[1] == [[" yes", " no"], [" yes", " no"]]  # the text the environment scores: no EOS
    for batch in policy.batches:
        assert batch["advantages"].tolist() == [1.0, -1.0, 1.0, -1.0]
        prompt_len = int((batch["loss_mask"][0] == 0).sum() - (batch["input_ids"].shape[1] - batch["input_lengths"][0]))
        assert batch["loss_mask"][0, prompt_len:int(batch["input_lengths"][0])].eq(1).all()  # response + EOS trained
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["validation/reward_mean"] == 1.0 and rows[0]["validation/num_trajectories"] == 3  # sample 0: " yes"
    tok = trainer.tokenizer
    generated = [len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in (" yes", " no")]  # + EOS
    for r in rows[1:]:
        assert r["rollout/reward_mean"] == 0.5 and r["rollout/num_trajectories"] == 4 and r["env/calls"] >= 2
        assert r["rollout/response_length_mean"] == sum(generated) / 2 and r["rollout/truncation_rate"] == 0.0
    dump = [json.loads(line) for line in (tmp_path / "out" / "rollouts" / "step_1.jsonl").read_text().splitlines()]
    assert [d["reward"] for d in dump] == [1.0, 0.0, 1.0, 0.0] and {d["finish_reason"] for d in dump} == {"stop"}
    assert set(dump[0]) == {"group_id", "sample_index", "prompt_id", "text", "finish_reason", "reward", "prompt_length"}

    # resume from step 2's checkpoint: the data position comes back, one more step runs
    (tmp_path / "ckpt" / "latest").write_text("step_2")
    saved = json.loads((tmp_path / "ckpt" / "step_2" / "extra.json").read_text())["loader"]
    resumed, policy2, env2 = _trainer(tiny_qwen3_dir, tmp_path)
    assert resumed.step == 2 and resumed.loader.state_dict() == saved
    resumed.fit()
    resumed.close()
    assert resumed.step == 3 and len(policy2.batches) == 1 and env2.closed == 1


def test_bad_prompts_and_env_stop_before_anything_starts(tiny_qwen3_dir, tmp_path):
    from megatron_brrm.train import TrainError
    from megatron_brrm.train_policy import PolicyTrainer

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"messages": [{"role": "assistant", "content": "no user turn"}]}\n')
    cfg = load_config(None, [f"model.hf_path={tiny_qwen3_dir}", f"data.prompts_path={bad}",
                             f"env.model_path={tiny_qwen3_dir}", f"logging.output_dir={tmp_path / 'o'}"])
    with pytest.raises(TrainError, match="env.model_path=.* holds Qwen3ForCausalLM, not a Bradley-Terry reward model"):
        PolicyTrainer(cfg)  # the env check comes first: it reads one config.json
    cfg = load_config(None, [f"model.hf_path={tiny_qwen3_dir}", f"data.prompts_path={bad}", "env.type=brrm_judge",
                             f"env.model_path={tiny_qwen3_dir}", f"logging.output_dir={tmp_path / 'o'}"])
    with pytest.raises(TrainError, match=r"bad.jsonl:2: the messages must end with a user turn"):
        PolicyTrainer(cfg)
    cfg = load_config(None, [f"model.hf_path={tiny_qwen3_dir}", f"logging.output_dir={tmp_path / 'o'}",
                             "env.type=brrm_judge", f"env.model_path={tiny_qwen3_dir}"])
    with pytest.raises(TrainError, match="no training data"):
        PolicyTrainer(cfg)
    no_ref = _write_prompts(tmp_path / "no_ref.jsonl", 2, "q")
    no_ref.write_text(no_ref.read_text() + json.dumps({"prompt": "bare", "id": "bare"}) + "\n")
    cfg = load_config(None, [f"model.hf_path={tiny_qwen3_dir}", f"data.prompts_path={no_ref}", "env.type=brrm_judge",
                             "env.judge_mode=reference", f"env.model_path={tiny_qwen3_dir}",
                             f"logging.output_dir={tmp_path / 'o'}"])
    with pytest.raises(TrainError, match="train: 1 of 3 prompts have no reference reply \\(first: 'bare'\\)"):
        PolicyTrainer(cfg)


def test_an_environment_error_during_the_run_is_one_named_line(tiny_qwen3_dir, tmp_path):
    from megatron_brrm.envs import EnvError
    from megatron_brrm.train import TrainError

    trainer, _, env = _trainer(tiny_qwen3_dir, tmp_path, "checkpoint.save_dir=null")

    def broken(groups):
        raise EnvError("the reward model returned non-finite rewards for responses [0]")

    env.rewards = broken
    with pytest.raises(TrainError, match=r"^reward environment bt: the reward model returned non-finite"):
        trainer.fit()
    trainer.close()
    assert env.closed == 1
