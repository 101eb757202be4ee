"""The GRPO learning check (issue 5): the synthetic task's labels, and the reduced end-to-end run.

The end-to-end test runs ``tools/learning_check.py --quick`` (tiny Qwen3, SFT with random
verdicts, GRPO at TP=2 over 2 Ray/gloo ranks, HF-engine rollouts, refit every step) as a
subprocess and re-derives its pass criterion from the raw numbers of the JSON summary.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_brrm.data import DataError
from megatron_brrm.data.synthetic import HINT_WORDS, MARKER, marker_task, word_pool

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("signal", ["marker", "hint"])
def test_labels_follow_the_signal_in_both_orders(signal):
    pairs = marker_task(50, seed=3, split="train", signal=signal, num_filler_words=1)
    assert len(pairs) == 100
    # rows 2i and 2i+1 are one pair in both orders, labels flipped
    for a, b in zip(pairs[0::2], pairs[1::2]):
        assert (a.response1, a.response2) == (b.response2, b.response1)
        assert a.preference == 3 - b.preference
    for p in pairs:
        better = p.response1 if p.preference == 1 else p.response2
        worse = p.response2 if p.preference == 1 else p.response1
        assert MARKER in better.split() and MARKER not in worse.split()
        text = p.context[-1]["content"]
        if signal == "hint":
            assert HINT_WORDS[p.preference] in text and HINT_WORDS[3 - p.preference] not in text
        else:
            assert not any(w in text.split() for w in HINT_WORDS.values())
    assert sum(p.preference == 1 for p in pairs) == 50  # a position-only judge scores exactly 50%


def test_splits_use_disjoint_words_and_are_deterministic():
    assert not set(word_pool("train")) & set(word_pool("val"))
    val = marker_task(20, seed=3, split="val")
    vocab = {w for p in val for r in (p.response1, p.response2) for w in r.split()} - {MARKER}
    assert vocab <= set(word_pool("val"))
    assert [p.to_dict() for p in val] == [p.to_dict() for p in marker_task(20, seed=3, split="val")]
    assert [p.to_dict() for p in val] != [p.to_dict() for p in marker_task(20, seed=4, split="val")]


def test_cue_pairs_carry_only_the_hint():
    """The warm start's cue pairs: other hint words, no marker, label = the hinted position."""
    cue = {1: "left", 2: "right"}
    pairs = marker_task(40, seed=5, split="train", marker=None, signal="hint", hint_words=cue, num_filler_words=0)
    assert len(pairs) == 80 and sum(p.preference == 1 for p in pairs) == 40
    for a, b in zip(pairs[0::2], pairs[1::2]):
        assert (a.response1, a.response2) == (b.response2, b.response1) and a.preference == 3 - b.preference
    for p in pairs:
        words = p.context[-1]["content"].split()
        assert words.count(cue[p.preference]) == 16 and cue[3 - p.preference] not in words
        assert not set(words) & set(HINT_WORDS.values())
        assert MARKER not in (p.response1 + " " + p.response2).split()
        assert {p.response1, p.response2} <= set(word_pool("train"))


def test_warm_start_traces_verdicts():
    """Task traces get seeded coin flips (about half right, no better), cue traces their labels."""
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import learning_check as lc
    from megatron_brrm.judge import get_protocol

    protocol = get_protocol("brrm", str(REPO_ROOT / "model_configs" / "templates" / "brrm_short"))
    train = marker_task(100, seed=7, split="train", signal="hint", num_filler_words=0)
    cue = marker_task(50, seed=8, split="train", marker=None, signal="hint", hint_words={1: "left", 2: "right"},
                      num_filler_words=0)
    traces = lc.warm_start_traces(protocol, train, cue, seed=7)
    assert len(traces) == len(train) + len(cue)
    verdicts = [protocol.parse_verdict(t[-1]["content"]).preference for t in traces]
    task_right = sum(v == p.preference for v, p in zip(verdicts, train))
    # 200 fair coin flips: 100 +- 3 sigma (sigma = sqrt(200 / 4) ~ 7.1)
    assert abs(task_right - 100) <= 21
    assert verdicts[len(train):] == [p.preference for p in cue]
    assert traces != lc.warm_start_traces(protocol, train, cue, seed=8)
    with pytest.raises(ValueError, match="verdicts"):
        lc.short_traces(protocol, train, [1])


def test_teacher_forced_verdicts_match_full_sequence_logprobs(tiny_qwen3_dir):
    """The prefix-logit difference equals the difference of the two verdict tokens' log-probs read
    from a forward pass over the whole verdict-1 trace (causal: same logits at that position).
    Tolerance 1e-4: fp32, different sequence lengths give different reduction orders (~1e-6)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import learning_check as lc
    from megatron_brrm.judge import get_protocol
    from megatron_brrm.rollout.traces import tokenize_trace

    protocol = get_protocol("brrm", str(REPO_ROOT / "model_configs" / "templates" / "brrm_short"))
    pairs = marker_task(3, seed=2, split="val", signal="hint", num_filler_words=0)
    got = lc.teacher_forced_verdicts(tiny_qwen3_dir, protocol, pairs)
    tok = AutoTokenizer.from_pretrained(tiny_qwen3_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, dtype=torch.float32).eval()
    one, two = (tok(f"\\boxed{{{v}}}", add_special_tokens=False)["input_ids"] for v in (1, 2))
    diffs = []
    for p in pairs:
        ids = tokenize_trace(tok, lc.short_traces(protocol, [p], [1])[0], tok.eos_token_id)[0]
        # the verdict token: the first token where "\boxed{1}" and "\boxed{2}" differ, at its last occurrence
        k = next(i for i, (a, b) in enumerate(zip(one, two)) if a != b)
        pos = max(i for i in range(len(ids) - len(one) + 1) if ids[i:i + len(one)] == one) + k
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, pos - 1], -1)
        diffs.append(float(lp[one[k]] - lp[two[k]]))
    mean = sum(diffs) / len(diffs)
    assert got["logit_diff_std"] == pytest.approx(math.sqrt(sum((d - mean) ** 2 for d in diffs) / len(diffs)), abs=1e-4)
    assert got["accuracy"] == sum((d > 0) == (p.preference == 1) for d, p in zip(diffs, pairs)) / len(pairs)
    with pytest.raises(ValueError, match="no pairs"):
        lc.teacher_forced_verdicts(tiny_qwen3_dir, protocol, [])


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_pairs=0), "num_pairs"), (dict(num_pairs=2, split="test"), "split"),
    (dict(num_pairs=2, signal="length"), "signal"), (dict(num_pairs=2, num_filler_words=-1), "num_filler_words"),
    (dict(num_pairs=2, marker=None), "marker=None"),
    (dict(num_pairs=2, signal="hint", hint_words={1: "same", 2: "same"}), "hint_words"),
    (dict(num_pairs=2, signal="hint", hint_words={1: "first"}), "hint_words"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(DataError, match=match):
        marker_task(seed=0, **kwargs)


@pytest.mark.multiprocess
# ~3 minutes alone on 2 cores; 11 minutes while the other pytest-xdist worker runs the rest of the
# suite on the same 2 cores (measured 665 s), hence the generous limits
@pytest.mark.timeout(1560)
def test_quick_learning_check(tmp_path):
    out = tmp_path / "lc"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "learning_check.py"), "--quick",
                           "--output-dir", str(out)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=1500)
    summary_path = out / "learning_check.json"
    assert summary_path.is_file(), f"no summary written; exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    s = json.loads(summary_path.read_text())
    before, after = s["before"], s["after"]
    n = s["num_val_trajectories"]
    assert n >= 128 and before["step"] == 0 and after["step"] == s["config"]["grpo.max_num_steps"]
    p0, p1 = before["format_error_rate"], after["format_error_rate"]
    sigma = math.sqrt((p0 * (1 - p0) + p1 * (1 - p1)) / n)  # std of a difference of two binomial rates
    # GRPO must remove format errors by far more than sampling noise (a sign or mask bug raises them)
    assert p0 - p1 >= 3 * sigma, s["validation_curve"]
    # and must not push the verdicts of well-formed answers below chance
    assert after["accuracy"] >= 0.5 * (1 - p1) - 3 * math.sqrt(0.25 / n), s["validation_curve"]
    assert proc.returncode == 0 and s["passed"], proc.stdout[-3000:]


@pytest.mark.parametrize("text, ok", [
    ("none", True), ("left,right;up,down", True), ("left,first", False), ("left,right;right,up", False),
    ("left,apple", False), ("left,cats", False), ("left", False), ("left,left", False), ("le ft,right", False),
])
def test_cue_words_argument(text, ok):
    """--sft-cue-words: pairs of distinct words, each once, none of the task's hint, filler or topic words."""
    import argparse

    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import learning_check as lc

    if ok:
        got = lc._cue_words(text)
        assert got == ([] if text == "none" else [dict(zip((1, 2), p.split(","))) for p in text.split(";")])
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="bad pair"):
            lc._cue_words(text)
