"""The Bradley-Terry environment: its rewards are the HF sequence classifier's, and the constructed
word-start reward model of the CPU recipe computes what its docstring says.

* BT environment (scorer in its own Ray actor, batched by length, groups of different sizes) vs
  ``AutoModelForSequenceClassification`` run here one text at a time on the chat-template rendering of
  context + response: equal within 1e-5 (fp32; padding and batching change the summation order only,
  measured worst difference 1.7e-6).
* A causal LM given as the environment's model fails to start with a one-line cause.
* The word-start model's reward vs its closed form ``sum_d a_d f(t_{L-1-d})`` (recency weights
  ``a_d ∝ exp(s (cos(theta d) - 1))``) computed here from the tokenizer: within 3%, and a word-rich
  response scores higher than a word-poor one.
"""
from __future__ import annotations

import random

import pytest
import torch

from megatron_brrm.envs import BTEnvironment, Sample

CONTEXTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."},
     {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Again, longer this time please."}],
    [{"role": "user", "content": "Count to three."}],
]
RESPONSES = [["Paris.", "It is Paris, a city on the Seine.", "Lyon", ""],
             ["Hello there, how are you doing today?", "Hey"],
             ["1 2 3", "one, two, three", "3 2 1 ... wait, 1 2 3"]]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ctx = ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=128 * 1024 * 1024)
    try:
        yield ctx
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory, tiny_qwen3_dir):
    from megatron_brrm.model.tiny import build_tiny_reward_model

    return build_tiny_reward_model(tmp_path_factory.mktemp("rm") / "tiny-rm", tiny_qwen3_dir, seed=3)


def _hf_rewards(path, contexts, responses):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for ctx, group in zip(contexts, responses):
            row = []
            for resp in group:
                text = tok.apply_chat_template(ctx + [{"role": "assistant", "content": resp}], tokenize=False)
                ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
                row.append(float(model(input_ids=ids).logits[0, 0]))
            out.append(row)
    return out


@pytest.mark.multiprocess
@pytest.mark.timeout(240)
def test_bt_environment_in_its_actor_scores_like_transformers(ray_local, reward_dir, tiny_qwen3_dir):
    from megatron_brrm.envs.actors import start_scorer
    from megatron_brrm.workers.errors import WorkerError

    env = BTEnvironment(start_scorer(str(reward_dir), "cpu", "fp32", batch_size=3, max_length=None, timeout_s=120))
    try:
        groups = [[Sample(c, r) for r in rs] for c, rs in zip(CONTEXTS, RESPONSES)]
        got = env.rewards(groups)
        m = env.metrics()
    finally:
        env.shutdown()
    want = _hf_rewards(reward_dir, CONTEXTS, RESPONSES)
    assert [len(g) for g in got] == [4, 2, 3]
    worst = max(abs(a - b) for ga, gb in zip(got, want) for a, b in zip(ga, gb))
    assert worst <= 1e-5, (got, want)
    assert len({round(x, 4) for g in want for x in g}) == 9  # the texts get different rewards: the check can fail
    assert m["responses"] == 9 and m["truncated"] == 0 and m["seconds"] > 0
    env.shutdown()  # idempotent

    with pytest.raises(WorkerError) as err:  # a causal LM is not a reward model: one named cause
        start_scorer(str(tiny_qwen3_dir), "cpu", "fp32", 4, None, timeout_s=120)
    assert err.value.group == "reward_env" and "not a scalar reward model" in str(err.value)


def test_word_start_reward_model_follows_its_closed_form(tmp_path, tiny_qwen3_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from megatron_brrm.model.tiny import build_word_start_reward_model

    path = build_word_start_reward_model(tmp_path / "ws", tiny_qwen3_dir, window_tokens=8.0)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
    special = set(tok.all_special_ids)
    f = torch.tensor([1.0 if t.startswith("\u0120") and i not in special else 0.0 for i, t in enumerate(vocab)])
    assert 0.3 < f.mean() < 0.6  # a large class: a random policy samples it often
    theta = 1e6 ** (-6 / 16)  # rotary pair 3 of a 16-dimensional head, rope theta 1e6
    s = 1 / (theta * 8.0) ** 2
    rng = random.Random(0)
    with torch.no_grad():
        for length in (3, 20, 64, 200, 500):
            ids = [rng.randrange(len(tok)) for _ in range(length)]
            d = torch.arange(length - 1, -1, -1, dtype=torch.float64)
            a = torch.softmax(s * (torch.cos(theta * d) - 1), 0)
            want = float((a * f[ids].double()).sum())
            got = float(model(input_ids=torch.tensor([ids])).logits[0, 0])
            assert abs(got - want) <= 0.03 * want + 1e-6, (length, got, want)
        ctx = [{"role": "user", "content": "Describe the sea."}]
        r = []
        for reply in (" the sea is wide and blue and deep", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"):  # word-rich, word-poor
            text = tok.apply_chat_template(ctx + [{"role": "assistant", "content": reply}], tokenize=False)
            r.append(float(model(input_ids=tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]).logits[0, 0]))
    assert r[0] > 0.4 > 0.05 > r[1]
    with pytest.raises(ValueError, match="window_tokens"):
        build_word_start_reward_model(tmp_path / "bad", tiny_qwen3_dir, window_tokens=0)
