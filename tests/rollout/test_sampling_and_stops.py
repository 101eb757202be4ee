"""Sampler maths (top-p, draw distribution, seeds) and the tail-window stop-string check."""
from __future__ import annotations

import random

import pytest
import torch

from megatron_brrm.rollout.sampling import derive_sample_seed, make_generators, sample_tokens, top_p_keep_mask
from megatron_brrm.rollout.stops import StopStringChecker


def brute_force_nucleus(p, top_p):
    """Keep tokens in descending order while the mass before them is < top_p (plain Python)."""
    order = sorted(range(len(p)), key=lambda i: (-p[i], i))
    keep, mass = set(), 0.0
    for i in order:
        if mass < top_p:
            keep.add(i)
        mass += p[i]
    return keep


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.5, 0.9, 0.999, 1.0])
def test_top_p_mask_matches_brute_force(top_p):
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(5, 11, generator=g) * 2, dim=-1)
    mask = top_p_keep_mask(probs, top_p)
    for row in range(5):
        expected = brute_force_nucleus(probs[row].tolist(), top_p)
        assert set(torch.nonzero(mask[row]).flatten().tolist()) == expected


def test_draws_follow_the_renormalised_nucleus_and_logprobs_are_prefilter():
    """20000 draws of a 5-token distribution: empirical frequencies within 5 sigma of
    softmax(logits / T) restricted to the nucleus and renormalised; logprobs = full log-softmax."""
    logits = torch.tensor([2.0, 1.5, 0.3, -0.5, -3.0])
    T, top_p, N = 0.8, 0.85, 20000
    p = torch.softmax(logits / T, dim=-1)
    keep = brute_force_nucleus(p.tolist(), top_p)
    q = torch.tensor([p[i].item() if i in keep else 0.0 for i in range(5)])
    q = q / q.sum()
    tokens, lps = sample_tokens(logits.expand(N, 5), T, top_p, make_generators(range(N)))
    freq = torch.bincount(tokens, minlength=5).double() / N
    sigma = torch.sqrt(q * (1 - q) / N).double()
    assert torch.all((freq - q.double()).abs() <= 5 * sigma + 1e-12), (freq, q)
    assert all(i in keep for i in tokens.unique().tolist())
    assert torch.allclose(lps, torch.log(p)[tokens], atol=1e-6)


def test_greedy_reports_unscaled_logprob():
    logits = torch.tensor([[0.1, 3.0, 3.0, -1.0]])
    tok, lp = sample_tokens(logits, 0.0, 1.0, None)
    assert tok.tolist() == [1]  # ties -> lowest id
    assert abs(lp.item() - torch.log_softmax(logits, -1)[0, 1].item()) < 1e-7


def test_sample_seeds_separate_prompts_samples_and_calls():
    a = derive_sample_seed(1, [5, 6, 7], 0)
    assert a == derive_sample_seed(1, [5, 6, 7], 0)
    others = {derive_sample_seed(1, [5, 6, 7], 1), derive_sample_seed(2, [5, 6, 7], 0),
              derive_sample_seed(1, [5, 6, 8], 0), derive_sample_seed(1, [5, 6], 0)}
    assert a not in others and len(others) == 4
    assert all(0 <= s < 2**63 for s in others | {a})


def _first_hit_full(tok, ids, stops):
    for k in range(1, len(ids) + 1):
        text = tok.decode(ids[:k], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if any(s in text for s in stops):
            return k
    return None


def byte_token_ids(tok, text):
    """One byte-level token per UTF-8 byte (multi-byte characters split over several tokens)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = bytes_to_unicode()
    return [tok.convert_tokens_to_ids(table[b]) for b in text.encode("utf-8")]


def test_tail_window_equals_full_text_check(tiny_qwen3_dir):
    """The first token at which the tail-window check fires equals the first prefix whose full
    decoded text holds a stop string: on random mixes of vocabulary tokens, and on sequences of
    single-byte tokens where a stop string with multi-byte characters spans the most tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen3_dir)
    rng = random.Random(0)
    base = tok("[The End of Ranking Score] \\boxed{2} déjà vu — ok", add_special_tokens=False)["input_ids"]
    words = ["é", "—", "ü", "[End]", "ok", " ", "\n", "déjà"]
    agree = fired = 0
    for trial in range(200):
        if trial % 2:
            ids = [rng.choice(base) if rng.random() < 0.7 else rng.randrange(len(tok)) for _ in range(25)]
        else:
            ids = byte_token_ids(tok, "".join(rng.choice(words) for _ in range(12)))
        text = tok.decode(ids, skip_special_tokens=False)
        a = rng.randrange(0, max(1, len(text) - 4))
        stops = [text[a:a + rng.randint(1, 6)], "never in here"]
        if not stops[0].strip() or "\ufffd" in stops[0]:
            continue
        checker = StopStringChecker(tok, stops)
        tail_hit = next((k for k in range(1, len(ids) + 1) if checker.hit(ids[:k])), None)
        assert tail_hit == _first_hit_full(tok, ids, stops), (ids, stops)
        agree += 1
        fired += tail_hit is not None
    assert agree > 120 and fired > 60


def test_empty_stop_string_rejected(tiny_qwen3_dir):
    with pytest.raises(ValueError, match="non-empty"):
        StopStringChecker(None, ["ok", ""])
