"""Reward rule, presets, the Episode environment, stop strings and the protocol registry."""
import subprocess
import sys

import pytest

from megatron_brrm.judge import (EnvStep, RewardRule, Turn1Result, Verdict, compute_reward, get_protocol)

GOOD_TURN1 = (
    "[Quality Assessment Focus]\nLogical Reasoning\n[End of Quality Assessment Focus]\n"
    "[Quality Analysis for Response 1]\nok\n[End of Quality Analysis for Response 1]\n"
    "[Quality Analysis for Response 2]\nbad\n[End of Quality Analysis for Response 2]"
)
BAD_TURN1 = "I think both are fine."


def turn2(value) -> str:
    return "[The Begin of Ranking Score]\n\\boxed{%s}\n[The End of Ranking Score]" % value


def test_presets_and_defaults():
    assert RewardRule() == RewardRule(correct=0.0, wrong=-1.0, malformed=-100.0, strict_turn1=False)
    assert RewardRule.preset("paper") == RewardRule(0.0, -1.0, -100.0, False)
    assert RewardRule.preset("reference") == RewardRule(0.0, -10.0, -100.0, False)
    assert RewardRule.preset("reference", strict_turn1=True).strict_turn1 is True
    with pytest.raises(ValueError, match="valid presets: paper, reference"):
        RewardRule.preset("nemo")
    with pytest.raises(ValueError, match="RewardRule.wrong must be a finite number"):
        RewardRule(wrong=float("nan"))


def test_from_config():
    class Cfg:  # duck-typed RunConfig.judge.reward
        correct, wrong, malformed, strict_turn1 = 1.0, -2.0, -50.0, True
    assert RewardRule.from_config(Cfg()) == RewardRule(1.0, -2.0, -50.0, True)
    assert RewardRule.from_config({"wrong": -10}) == RewardRule(0.0, -10.0, -100.0, False)
    with pytest.raises(ValueError, match="unknown reward key"):
        RewardRule.from_config({"wrng": -10})


@pytest.mark.parametrize("preset, pref, label, expected", [
    ("paper", 1, 1, 0.0), ("paper", 2, 1, -1.0), ("paper", None, 2, -100.0),
    ("reference", 2, 2, 0.0), ("reference", 1, 2, -10.0), ("reference", None, 1, -100.0),
])
def test_compute_reward(preset, pref, label, expected):
    v = Verdict(preference=pref, format_error=None if pref else "missing ranking block")
    assert compute_reward(v, label, RewardRule.preset(preset)) == expected


def test_strict_turn1():
    ok = Verdict(1, None)
    bad_t1 = Turn1Result(format_error="missing '[Quality Assessment Focus]' block")
    good_t1 = Turn1Result(dimensions=["Logical Reasoning"], analysis1="a", analysis2="b")
    assert compute_reward(ok, 1, RewardRule(), bad_t1) == 0.0  # lenient: turn 1 ignored (reference behaviour)
    assert compute_reward(ok, 1, RewardRule(strict_turn1=True), bad_t1) == -100.0
    assert compute_reward(ok, 2, RewardRule(strict_turn1=True), good_t1) == -1.0
    with pytest.raises(ValueError, match="label must be 1 or 2"):
        compute_reward(ok, 0, RewardRule())


def test_verdict_invariant():
    with pytest.raises(ValueError):
        Verdict(preference=1, format_error="x")
    with pytest.raises(ValueError):
        Verdict(preference=None, format_error=None)
    with pytest.raises(ValueError):
        Verdict(preference=3, format_error=None)


def test_brrm_episode_flow():
    proto = get_protocol("brrm")
    ep = proto.new_episode(label=2, rule=RewardRule.preset("paper"))
    assert ep.stop_strings() == []
    s1 = ep.step(GOOD_TURN1)
    assert isinstance(s1, EnvStep) and s1.done is False
    assert s1.next_message == proto.followup_message(1)
    assert s1.reward is None and s1.verdict is None
    assert s1.turn1.dimensions == ["Logical Reasoning"] and s1.turn1.format_error is None
    assert ep.stop_strings() == ["[The End of Ranking Score]"]
    s2 = ep.step(turn2(2))
    assert s2.done is True and s2.next_message is None
    assert s2.reward == 0.0 and s2.verdict.preference == 2
    assert s2.turn1 is s1.turn1
    with pytest.raises(RuntimeError, match="already finished"):
        ep.step(turn2(2))
    with pytest.raises(RuntimeError):
        ep.stop_strings()


@pytest.mark.parametrize("rule, t1, t2, label, expected", [
    (RewardRule(), GOOD_TURN1, turn2(1), 2, -1.0),
    (RewardRule.preset("reference"), GOOD_TURN1, turn2(1), 2, -10.0),
    (RewardRule(), GOOD_TURN1, "no verdict", 1, -100.0),
    (RewardRule(), BAD_TURN1, turn2(1), 1, 0.0),
    (RewardRule(strict_turn1=True), BAD_TURN1, turn2(1), 1, -100.0),
    (RewardRule(malformed=-5.0), GOOD_TURN1, turn2("1 or 2"), 1, -5.0),
])
def test_episode_rewards(rule, t1, t2, label, expected):
    ep = get_protocol("brrm").new_episode(label, rule)
    ep.step(t1)
    assert ep.step(t2).reward == expected
    assert ep.reward == expected and ep.done


def test_episode_input_errors():
    proto = get_protocol("brrm")
    with pytest.raises(ValueError, match="label must be 1 or 2"):
        proto.new_episode(3, RewardRule())
    with pytest.raises(TypeError, match="expects the generated text as str"):
        proto.new_episode(1, RewardRule()).step(None)


def test_stop_strings_and_turns():
    brrm, rmr1 = get_protocol("brrm"), get_protocol("rmr1")
    assert (brrm.name, brrm.num_turns, rmr1.name, rmr1.num_turns) == ("brrm", 2, "rmr1", 1)
    assert brrm.stop_strings(0) == [] and brrm.stop_strings(1) == ["[The End of Ranking Score]"]
    assert rmr1.stop_strings(0) == ["</answer>"]
    with pytest.raises(ValueError, match="turns 0..1"):
        brrm.stop_strings(2)
    with pytest.raises(ValueError, match="turns 0..0"):
        rmr1.stop_strings(1)


def test_get_protocol_unknown_name():
    with pytest.raises(ValueError, match="valid names: brrm, rmr1"):
        get_protocol("genrm")


def test_judge_imports_nothing_of_the_project_nor_torch():
    # the package's __init__ installs megatron_import_hook (torch-free, imports nothing of the project)
    code = ("import sys, megatron_brrm.judge; "
            "bad = [m for m in sys.modules if m == 'torch' or (m.startswith('megatron_brrm.') "
            "and not m.startswith('megatron_brrm.judge') and m != 'megatron_brrm.megatron_import_hook')]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
