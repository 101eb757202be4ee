"""Single-turn policy rollouts (megatron_brrm.rollout.single_turn) on the scripted engine: token
bookkeeping, the per-prompt budget, the text an environment scores, and the batch metrics."""
from __future__ import annotations

import pytest

from megatron_brrm.data.prompts import Prompt
from megatron_brrm.rollout.chat import render_prompt_ids
from megatron_brrm.rollout.single_turn import response_metrics, sample_responses
from megatron_brrm.rollout.two_turn import RolloutParams

from .fakes import ScriptedEngine, fake_logprob


@pytest.fixture(scope="module")
def tok(tiny_qwen3_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen3_dir)


def test_responses_budget_text_and_masks(tok):
    word = tok(" sea", add_special_tokens=False)["input_ids"]
    eos = tok.eos_token_id

    def script(c, i, j, prompt):  # prompt 0: sample 0 stops at EOS after one word, sample 1 never stops
        return word + [eos] if (i, j) == (0, 0) else word * 40

    engine = ScriptedEngine(tok, [script])
    prompts = [Prompt("a", [{"role": "user", "content": "Hi?"}]),
               Prompt("b", [{"role": "user", "content": "A much longer question, with many more words in it?"}])]
    lengths = [len(render_prompt_ids(tok, p.context)) for p in prompts]
    assert lengths[1] > lengths[0] + 6
    cap = lengths[1] + 4  # prompt "a" may generate its max_new_tokens (10), "b" only what is left of cap (4)
    params = RolloutParams(n=2, max_new_tokens=(10, 99), max_total_length=cap, seed=7)
    out = sample_responses(engine, prompts, params, group_offset=5)
    assert [(r.group_id, r.sample_index, r.prompt_id) for r in out] == [(5, 0, "a"), (5, 1, "a"), (6, 0, "b"), (6, 1, "b")]
    first = out[0]
    assert first.finish_reason == "stop" and first.token_ids[first.prompt_length:] == word + [eos]
    assert first.text == " sea" and first.num_generated == len(word) + 1  # EOS trained on, not scored
    budget_b = 4
    assert [r.num_generated for r in out[1:]] == [10, budget_b, budget_b]
    assert max(r.total_length for r in out) == cap
    assert all(r.finish_reason == "length" and r.truncated for r in out[1:])
    for r in out:
        n = r.prompt_length
        assert r.loss_mask == [0] * n + [1] * r.num_generated
        assert r.rollout_logprobs[:n] == [0.0] * n
        assert r.rollout_logprobs[n:] == [fake_logprob(0, k) for k in range(r.num_generated)]
    assert engine.calls[0]["params"].n == 2 and engine.calls[0]["params"].stop == []  # one call, n per prompt
    m = response_metrics(out)
    assert m["num_trajectories"] == 4 and m["truncation_rate"] == 0.75
    assert m["response_length_mean"] == (len(word) + 1 + 10 + 2 * budget_b) / 4


def test_a_prompt_without_room_is_named(tok):
    engine = ScriptedEngine(tok, [lambda *a: [tok.eos_token_id]])
    prompt = Prompt("long-one", [{"role": "user", "content": "word " * 50}])
    with pytest.raises(ValueError, match="prompt 'long-one': .* leave no room under max_total_length=20"):
        sample_responses(engine, [prompt], RolloutParams(n=1, max_new_tokens=4, max_total_length=20))
