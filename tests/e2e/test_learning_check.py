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


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_pairs=0), "num_pairs"), (dict(num_pairs=2, split="test"), "split"),
    (dict(num_pairs=2, signal="length"), "signal"), (dict(num_pairs=2, num_filler_words=-1), "num_filler_words"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(DataError, match=match):
        marker_task(seed=0, **kwargs)


@pytest.mark.multiprocess
@pytest.mark.timeout(720)
def test_quick_learning_check(tmp_path):
    out = tmp_path / "lc"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "learning_check.py"), "--quick",
                           "--output-dir", str(out)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=700)
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
