"""format_turn_output produces outputs that parse back to what was asked for."""
import re

import pytest

from megatron_brrm.judge import get_protocol


@pytest.fixture(scope="module")
def proto():
    return get_protocol("brrm")


@pytest.mark.parametrize("dims, expected", [
    (None, ["Information Accuracy"]),
    (["logical reasoning"], ["Logical Reasoning"]),
    (["Safety Awareness", "COMMUNICATION CLARITY", "Instruction Adherence"],
     ["Safety Awareness", "Communication Clarity", "Instruction Adherence"]),
])
def test_turn1_round_trip(proto, dims, expected):
    out = proto.format_turn_output(0, preference=1, dimensions=dims,
                                   analysis1="- Critical Issues: uses {x} and $y\nsecond line",
                                   analysis2="")
    r = proto.parse_turn1(out)
    assert r.format_error is None
    assert r.dimensions == expected
    assert r.analysis1 == "- Critical Issues: uses {x} and $y\nsecond line"
    assert r.analysis2 == "- Critical Issues: None identified."


@pytest.mark.parametrize("pref", [1, 2])
def test_turn2_round_trip(proto, pref):
    out = proto.format_turn_output(1, preference=pref, analysis1="R1: \\boxed{9} is wrong", analysis2="R2 fine")
    assert out.endswith("[The Begin of Ranking Score]\n\\boxed{%d}\n[The End of Ranking Score]" % pref)
    v = proto.parse_verdict(out)
    assert (v.preference, v.format_error) == (pref, None)
    assert (v.analysis1, v.analysis2) == ("R1: \\boxed{9} is wrong", "R2 fine")


def test_full_episode_from_formatted_outputs(proto):
    ep = proto.new_episode(1)
    ep.step(proto.format_turn_output(0, preference=1, dimensions=["Logical Reasoning"]))
    step = ep.step(proto.format_turn_output(1, preference=1))
    assert step.done and step.reward == 0.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(turn=2, preference=1), "turns 0..1"),
    (dict(turn=1, preference=3), "preference must be 1 or 2"),
    (dict(turn=0, preference=1, dimensions=["Creativity"]), "unknown dimension 'Creativity'"),
    (dict(turn=0, preference=1, dimensions=[]), "choose 1-3"),
    (dict(turn=0, preference=1, dimensions=["Logical Reasoning", "Safety Awareness", "Response Completeness",
                                             "Instruction Adherence"]), "choose 1-3"),
    (dict(turn=0, preference=1, dimensions="Logical Reasoning"), "list of names"),
    (dict(turn=1, preference=1, analysis2="see [the end of ranking score]"), "format marker"),
])
def test_format_turn_output_errors(proto, kwargs, match):
    turn = kwargs.pop("turn")
    with pytest.raises(ValueError, match=re.escape(match)):
        proto.format_turn_output(turn, **kwargs)
