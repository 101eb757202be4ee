"""The pairwise-judge environment on the scripted BR-RM judge (tests/fake_judge.py): its outputs go
through the project's own two-turn rollout and verdict parser, and the verdicts become scores.

The scripted judge prefers the response that holds ``GOOD`` (Response 2 when ``GOOD`` appears after
the Response-2 marker, else Response 1: with neither holding it, it always names Response 1) and
writes an unparseable verdict when ``MALFORMED`` is in the prompt. Expected scores are worked out by
hand from those rules and the scoring rule of megatron_brrm.envs.pairwise.
"""
from __future__ import annotations

import pytest

from megatron_brrm.envs import EnvError, JudgeEnvironment, Sample
from megatron_brrm.judge import get_protocol
from megatron_brrm.rollout.two_turn import RolloutParams

from fake_judge import FakeJudgeEngine

CTX = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def engine(tiny_qwen3_dir):
    from transformers import AutoTokenizer

    return FakeJudgeEngine(AutoTokenizer.from_pretrained(tiny_qwen3_dir))


def _env(engine, **kw):
    params = RolloutParams(n=1, temperature=0.0, max_new_tokens=[512, 512], max_total_length=8192, seed=0)
    return JudgeEnvironment(engine, get_protocol("brrm"), params, **kw)


def _group(*responses, reference=None):
    return [Sample(CTX, r, reference) for r in responses]


def test_win_rates_from_parsed_verdicts(engine):
    env = _env(engine, batch_size=5)  # 5 does not divide the 8 comparisons: batches of 5 and 3
    scores = env.rewards([_group("blue", "GOOD red", "green"), _group("cyan", "teal")])
    # group 0, both orders: "GOOD red" wins its 4 comparisons; "blue" vs "green": the judge names
    # Response 1 each time, so each wins once -> blue (0 + 0 + 1 + 0) / 4, green the same
    # group 1: no GOOD, Response 1 wins each order -> 0.5 each
    assert scores == [[0.25, 1.0, 0.25], [0.5, 0.5]]
    m = env.metrics()
    assert m["comparisons"] == 8 and m["format_error_rate"] == 0.0 and m["judge_tokens"] > 0
    # position consistency: {blue, GOOD}, {GOOD, green} agree; {blue, green}, {cyan, teal} do not
    assert m["position_consistency"] == pytest.approx(0.5)
    assert env.metrics()["comparisons"] == 0  # metrics reset after each call


def test_reference_mode_and_unparseable_verdicts_are_ties(engine):
    env = _env(engine, mode="reference")
    ref = "GOOD reference"
    scores = env.rewards([_group("plain", "also GOOD", reference=ref), _group("MALFORMED reply", "x", reference=ref)])
    # "plain": (plain, ref) -> 2 (ref has GOOD after the marker), (ref, plain) -> 1: the reference wins both -> 0
    # "also GOOD": (resp, ref) -> 2 (ref wins), (ref, resp) -> 2 (resp wins) -> 0.5
    # group 1: MALFORMED is in both of "MALFORMED reply"'s prompts -> ties, 0.5; "x" loses both -> 0
    assert scores == [[0.0, 0.5], [0.5, 0.0]]
    assert env.metrics()["format_error_rate"] == 2 / 8


def test_single_order_judges_each_pair_once(engine):
    env = _env(engine, both_orders=False)
    # pairs shown as (1, 0), (0, 2), (2, 1): GOOD (index 1) wins (1, 0) and (2, 1); (0, 2) -> Response 1 = 0 wins
    assert env.rewards([_group("a", "GOOD b", "c")]) == [[0.5, 1.0, 0.0]]
    assert "position_consistency" not in env.metrics()


def test_bad_groups_are_named(engine):
    env = _env(engine, mode="reference")
    with pytest.raises(EnvError, match="group 0 has no reference response"):
        env.rewards([_group("a", "b")])
    with pytest.raises(EnvError, match="group 1 is empty"):
        env.rewards([_group("a", reference="r"), []])
    other = [Sample(CTX, "a", "r"), Sample([{"role": "user", "content": "Other?"}], "b", "r")]
    with pytest.raises(EnvError, match="group 0 sample 1 answers another context"):
        env.rewards([other])
    with pytest.raises(ValueError, match="judge mode must be one of"):
        _env(engine, mode="elo")
