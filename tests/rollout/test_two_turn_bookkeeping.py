"""Two-turn rollout token bookkeeping on a scripted engine (no model).

Expected sequences are written out by hand from the ChatML format of the tiny tokenizer
(``<|im_start|>role\\n...<|im_end|>\\n``), independently of ``rollout/chat.py``.
"""
from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from megatron_brrm.judge import DIMENSIONS, RewardRule, get_protocol
from megatron_brrm.rollout.trajectory import rollout_metrics
from megatron_brrm.rollout.two_turn import RolloutParams, rollout

from .fakes import ScriptedEngine, fake_logprob

IM_START, IM_END = "<|im_start|>", "<|im_end|>"


@pytest.fixture(scope="module")
def tok(tiny_qwen3_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen3_dir)


def enc(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def make_pairs(k=2):
    return [SimpleNamespace(id=f"pair-{i}", context=[{"role": "user", "content": f"Question number {i}: what is {i}+{i}?"}],
                            response1=f"It is {2 * i}.", response2=f"It is {2 * i + 1}.", preference=1 + i % 2)
            for i in range(k)]


def chatml_prompt(tok, content):
    return enc(tok, f"{IM_START}user\n{content}{IM_END}\n{IM_START}assistant\n")


def chatml_user_after_eos(tok, content):
    return enc(tok, f"\n{IM_START}user\n{content}{IM_END}\n{IM_START}assistant\n")


TAG = re.compile(r"pair (\d+) sample (\d+)")


def brrm_script(tok, proto, pairs, turn1_len=None, turn2_tail=" trailing words", turn1_eos=True):
    """Turn 1: a well-formed analysis tagged 'pair i sample j' (+ EOS); turn 2: sample 0 votes the
    label, others the opposite, followed by text after the stop string (must be cut)."""
    def turn1(c, i, j, prompt):
        text = proto.format_turn_output(0, preference=1, dimensions=[DIMENSIONS[j]], analysis1=f"pair {i} sample {j}")
        ids = enc(tok, text)
        if turn1_len is not None:
            ids = (ids * 10)[:turn1_len]
        return ids + ([tok.eos_token_id] if turn1_eos else [])

    def turn2(c, k, j, prompt):
        m = TAG.search(tok.decode(prompt))  # absent when turn 1 was cut before its tag: single-pair tests
        i, sj = map(int, m.groups()) if m else (0, 0)
        label = pairs[i].preference
        pref = label if sj == 0 else 3 - label
        return enc(tok, proto.format_turn_output(1, preference=pref) + turn2_tail) + [tok.eos_token_id]

    return [turn1, turn2]


def test_tokens_masks_logprobs_and_rewards(tok):
    proto = get_protocol("brrm")
    pairs = make_pairs(2)
    engine = ScriptedEngine(tok, brrm_script(tok, proto, pairs))
    params = RolloutParams(n=2, temperature=1.0, top_p=1.0, max_new_tokens=(400, 400), max_total_length=4096, seed=7)
    trajs = rollout(engine, proto, pairs, params, RewardRule.preset("reference"), group_offset=10)

    assert len(trajs) == 4 and len(engine.calls) == 2
    c0, c1 = engine.calls
    assert c0["params"].n == 2 and c1["params"].n == 1
    assert c0["params"].stop == [] and c1["params"].stop == ["[The End of Ranking Score]"]
    assert c0["params"].seed == 7 and c1["params"].seed == 8
    turn2_msg = proto.followup_message(1)["content"]
    for k, t in enumerate(trajs):
        i, j = divmod(k, 2)
        assert (t.group_id, t.sample_index, t.pair_id, t.label) == (10 + i, j, f"pair-{i}", pairs[i].preference)
        prompt = chatml_prompt(tok, proto.turn1_messages(pairs[i].context, pairs[i].response1, pairs[i].response2)[0]["content"])
        gen1 = enc(tok, proto.format_turn_output(0, preference=1, dimensions=[DIMENSIONS[j]],
                                                 analysis1=f"pair {i} sample {j}")) + [tok.eos_token_id]
        user2 = chatml_user_after_eos(tok, turn2_msg)
        pref = pairs[i].preference if j == 0 else 3 - pairs[i].preference
        gen2 = enc(tok, proto.format_turn_output(1, preference=pref))  # cut at the stop string: no tail, no EOS
        assert c0["prompts"][i] == prompt
        assert c1["prompts"][k] == prompt + gen1 + user2  # turn-2 input = prompt1 + gen1 + user2, no re-tokenization
        assert t.token_ids == prompt + gen1 + user2 + gen2
        assert t.loss_mask == [0] * len(prompt) + [1] * len(gen1) + [0] * len(user2) + [1] * len(gen2)
        expected_lp = ([0.0] * len(prompt) + [fake_logprob(0, q) for q in range(len(gen1))] + [0.0] * len(user2)
                       + [fake_logprob(1, q) for q in range(len(gen2))])
        assert t.rollout_logprobs == expected_lp
        assert t.prompt_length == len(prompt)
        assert t.turn_lengths == [len(gen1), len(gen2)]
        s1 = len(prompt)
        s2 = s1 + len(gen1) + len(user2)
        assert t.turn_spans == [(s1, s1 + len(gen1)), (s2, s2 + len(gen2))]
        assert t.finish_reasons == ["stop", "stop"]
        assert t.turn_texts[1].endswith("[The End of Ranking Score]")
        assert t.verdict.preference == pref and t.verdict.format_error is None
        assert t.reward == (0.0 if j == 0 else -10.0)
        assert t.turn1.dimensions == [DIMENSIONS[j]]
        assert not t.truncated
        row = json.loads(json.dumps(t.to_dict()))
        assert row["token_ids"] == t.token_ids and row["verdict"]["preference"] == pref
        assert row["turn1"]["dimensions"] == [DIMENSIONS[j]] and row["turn_spans"][1] == [s2, s2 + len(gen2)]
    m = rollout_metrics(trajs)
    assert m["accuracy"] == 0.5 and m["reward_mean"] == -5.0 and m["format_error_rate"] == 0.0
    assert m["truncation_rate"] == 0.0 and m[f"dimension/{DIMENSIONS[0]}"] == 0.5 == m[f"dimension/{DIMENSIONS[1]}"]
    assert m["turn1_length_mean"] == sum(t.turn_lengths[0] for t in trajs) / 4


def test_params_from_config():
    from megatron_brrm.config import RolloutConfig

    p = RolloutParams.from_config(RolloutConfig(max_new_tokens_turn1=11, max_new_tokens_turn2=22, seed=5), n=8)
    assert (p.n, p.max_new_tokens, p.max_total_length, p.seed) == (8, (11, 22), 16384, 5)
    assert p.turn_cap(1, 2) == 22 and RolloutParams(max_new_tokens=7).turn_cap(1, 2) == 7


def test_turn1_ended_by_length_gets_template_close(tok):
    """No EOS after turn 1: the template's <|im_end|> is inserted as a masked token; turn 2 still runs."""
    proto = get_protocol("brrm")
    pairs = make_pairs(1)
    engine = ScriptedEngine(tok, brrm_script(tok, proto, pairs, turn1_len=30, turn1_eos=False))
    params = RolloutParams(n=1, max_new_tokens=(20, 400), max_total_length=4096, seed=0)
    (t,) = rollout(engine, proto, pairs, params, RewardRule())
    prompt_len = t.prompt_length
    gen1 = t.token_ids[prompt_len:prompt_len + 20]
    assert t.finish_reasons == ["length", "stop"] and t.turn_lengths[0] == 20
    user2 = enc(tok, f"{IM_END}\n{IM_START}user\n{proto.followup_message(1)['content']}{IM_END}\n{IM_START}assistant\n")
    assert engine.calls[1]["prompts"][0] == t.token_ids[:prompt_len] + gen1 + user2
    assert user2[0] == tok.convert_tokens_to_ids(IM_END)
    assert t.loss_mask[prompt_len + 20: prompt_len + 20 + len(user2)] == [0] * len(user2)
    assert not t.truncated and t.verdict.preference == pairs[0].preference and t.reward == 0.0


def test_final_turn_hits_max_new_tokens_is_truncated_and_penalised(tok):
    proto = get_protocol("brrm")
    pairs = make_pairs(1)
    engine = ScriptedEngine(tok, brrm_script(tok, proto, pairs))
    rule = RewardRule(correct=1.0, wrong=-1.0, malformed=-7.0)
    (t,) = rollout(engine, proto, pairs, RolloutParams(n=1, max_new_tokens=(400, 15), max_total_length=4096), rule)
    assert t.truncated and t.reward == -7.0
    assert t.finish_reasons == ["stop", "length"] and t.turn_lengths[1] == 15
    assert t.verdict.preference is None and t.verdict.format_error.startswith("truncated: the final turn hit max_new_tokens")
    assert sum(t.loss_mask) == t.turn_lengths[0] + 15


def test_total_length_cap_cuts_turn2_and_penalises(tok):
    proto = get_protocol("brrm")
    pairs = make_pairs(1)
    probe = rollout(ScriptedEngine(tok, brrm_script(tok, proto, pairs)), proto, pairs,
                    RolloutParams(n=1, max_new_tokens=(400, 400), max_total_length=4096), RewardRule())[0]
    turn2_start = probe.turn_spans[1][0]
    # (a) room for 5 turn-2 tokens only
    engine = ScriptedEngine(tok, brrm_script(tok, proto, pairs))
    (t,) = rollout(engine, proto, pairs, RolloutParams(n=1, max_new_tokens=(400, 400), max_total_length=turn2_start + 5),
                   RewardRule())
    assert engine.calls[1]["params"].max_new_tokens == 5
    assert len(t.token_ids) == turn2_start + 5 == len(t.loss_mask) == len(t.rollout_logprobs)
    assert t.truncated and t.reward == -100.0 and t.turn_lengths == [probe.turn_lengths[0], 5]
    assert "max_total_length" in t.verdict.format_error
    # (b) no room for turn 2 at all: the user message is cut, turn 2 is not run, one engine call only
    limit = probe.turn_spans[0][1] + 3
    engine = ScriptedEngine(tok, brrm_script(tok, proto, pairs))
    (t,) = rollout(engine, proto, pairs, RolloutParams(n=1, max_new_tokens=(400, 400), max_total_length=limit),
                   RewardRule())
    assert len(engine.calls) == 1
    assert t.token_ids == probe.token_ids[:limit] and t.loss_mask == probe.loss_mask[:limit]
    assert t.finish_reasons == ["stop", "not_run"] and t.turn_lengths[1] == 0
    assert t.truncated and t.reward == -100.0 and "no room" in t.verdict.format_error


def test_per_pair_budget_cut_in_a_shared_call(tok):
    """Pairs of different prompt lengths share one call; each sample is cut to its own budget."""
    proto = get_protocol("brrm")
    pairs = make_pairs(2)
    pairs[1].context = [{"role": "user", "content": "a much longer question " * 20}]
    lens = [len(chatml_prompt(tok, proto.turn1_messages(p.context, p.response1, p.response2)[0]["content"])) for p in pairs]
    limit = lens[1] + 10  # pair 1 may generate 10 tokens in turn 1, pair 0 many more
    engine = ScriptedEngine(tok, brrm_script(tok, proto, pairs, turn1_len=200, turn1_eos=False))
    trajs = rollout(engine, proto, pairs, RolloutParams(n=1, max_new_tokens=(30, 400), max_total_length=limit),
                    RewardRule())
    assert engine.calls[0]["params"].max_new_tokens == 30
    assert trajs[0].turn_lengths[0] == 30 and trajs[1].turn_lengths[0] == 10
    assert trajs[1].finish_reasons == ["length", "not_run"] and trajs[1].truncated
    assert trajs[1].turn_texts[0] == tok.decode(trajs[1].token_ids[lens[1]:lens[1] + 10])
    assert len(trajs[1].token_ids) == limit


def test_single_turn_protocol_uses_same_path(tok):
    proto = get_protocol("rmr1")
    pairs = make_pairs(2)

    def turn(c, i, j, prompt):
        pref = pairs[i].preference if j == 0 else 3 - pairs[i].preference
        return enc(tok, proto.format_turn_output(0, preference=pref) + " more") + [tok.eos_token_id]

    engine = ScriptedEngine(tok, [turn])
    trajs = rollout(engine, proto, pairs, RolloutParams(n=2, max_new_tokens=500, max_total_length=4096), RewardRule())
    assert len(engine.calls) == 1 and engine.calls[0]["params"].stop == ["</answer>"]
    for k, t in enumerate(trajs):
        i, j = divmod(k, 2)
        prompt = t.token_ids[:t.prompt_length]
        assert prompt == engine.calls[0]["prompts"][i]
        gen = t.token_ids[t.prompt_length:]
        assert gen == enc(tok, proto.format_turn_output(0, preference=1 if (j == 0) == (pairs[i].preference == 1) else 2))
        assert t.loss_mask == [0] * t.prompt_length + [1] * len(gen)
        assert t.reward == (0.0 if j == 0 else -1.0) and t.turn1 is None and t.finish_reasons == ["stop"]


def test_bad_inputs_raise_clear_errors(tok):
    proto = get_protocol("brrm")
    engine = ScriptedEngine(tok, [])
    with pytest.raises(TypeError, match=r"pair 0 .*lacks attribute\(s\) \['preference'\]"):
        rollout(engine, proto, [SimpleNamespace(id="x", context=[], response1="a", response2="b")],
                RolloutParams(n=1), RewardRule())
    with pytest.raises(ValueError, match="RolloutParams.n"):
        rollout(engine, proto, make_pairs(1), RolloutParams(n=0), RewardRule())
    with pytest.raises(ValueError, match="one cap per turn"):
        rollout(ScriptedEngine(tok, brrm_script(tok, proto, make_pairs(1))), proto, make_pairs(1),
                RolloutParams(n=1, max_new_tokens=[100]), RewardRule())


def test_engine_contract_violations_are_reported(tok):
    proto = get_protocol("brrm")
    pairs = make_pairs(1)

    class DropsASample(ScriptedEngine):
        def generate(self, prompts, params, group_ids=None):
            return [r[:-1] for r in super().generate(prompts, params)]

    class NoLogprobs(ScriptedEngine):
        def generate(self, prompts, params, group_ids=None):
            out = super().generate(prompts, params)
            for r in out:
                for s in r:
                    s.logprobs = []
            return out

    with pytest.raises(RuntimeError, match=r"x n=2"):
        rollout(DropsASample(tok, brrm_script(tok, proto, pairs)), proto, pairs, RolloutParams(n=2), RewardRule())
    with pytest.raises(RuntimeError, match="logprobs"):
        rollout(NoLogprobs(tok, brrm_script(tok, proto, pairs)), proto, pairs, RolloutParams(n=1), RewardRule())


def test_identical_turn1_outputs_still_get_independent_turn2_samples(tok):
    """A group whose turn-1 outputs coincide must not get one repeated turn-2 sample (zero advantages):
    equal turn-2 inputs are sent once as n samples, distinct inputs as their own prompts."""
    proto = get_protocol("brrm")
    pairs = make_pairs(3)

    def turn1(c, i, j, prompt):  # pairs 0 and 1: both samples identical; pair 2: samples differ
        k = j if "number 2" in tok.decode(prompt) else 0
        return enc(tok, proto.format_turn_output(0, preference=1, dimensions=[DIMENSIONS[k]])) + [tok.eos_token_id]

    def turn2(c, i, j, prompt):  # the verdict is the sample index within the call: j=0 -> 1, j=1 -> 2
        return enc(tok, proto.format_turn_output(1, preference=1 + j)) + [tok.eos_token_id]

    engine = ScriptedEngine(tok, [turn1, turn2, turn2])
    trajs = rollout(engine, proto, pairs, RolloutParams(n=2, max_new_tokens=(400, 400), max_total_length=4096, seed=3),
                    RewardRule.preset("reference"))
    assert len(engine.calls) == 3
    singles, doubles = engine.calls[1], engine.calls[2]  # one call per multiplicity, ascending
    assert singles["params"].n == 1 and len(singles["prompts"]) == 2  # pair 2's two distinct inputs
    assert doubles["params"].n == 2 and len(doubles["prompts"]) == 2  # pairs 0 and 1, once each
    assert [t.verdict.preference for t in trajs[:4]] == [1, 2, 1, 2]  # independent draws inside each group
    assert [t.verdict.preference for t in trajs[4:]] == [1, 1]
    a, b = trajs[0], trajs[1]
    start = a.turn_spans[1][0]
    assert a.token_ids[:start] == b.token_ids[:start] and a.token_ids[start:] != b.token_ids[start:]
