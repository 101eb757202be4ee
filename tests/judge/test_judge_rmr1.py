"""RM-R1 single-turn protocol: verdict parsing and episode; expected values by hand."""
import pytest

from megatron_brrm.judge import RewardRule, get_protocol


@pytest.fixture(scope="module")
def proto():
    return get_protocol("rmr1")


@pytest.mark.parametrize("text, expected", [
    ("<type>Chat</type>\n<eval>fine</eval>\n<answer>[[A]]</answer>", 1),
    ("<type>Reasoning</type><solution>4</solution><eval>B is right</eval><answer>[[B]]</answer>", 2),
    ("<answer> [[B]] </answer>\r\n", 2),
    ("<eval>...</eval>\n<answer>[[A]]", 1),  # stop string '</answer>' not kept by the engine
    ("<answer>[[A]]</answer> and again <answer>[[A]]</answer>", 1),
    ("<think>maybe [[B]]?</think><answer>[[A]]</answer>", 1),  # drafts in the thinking do not count
])
def test_valid(proto, text, expected):
    v = proto.parse_verdict(text)
    assert (v.preference, v.format_error) == (expected, None)


@pytest.mark.parametrize("text, reason", [
    ("", "missing <answer> block"),
    ("I prefer [[A]].", "missing <answer> block"),
    ("<answer>[[C]]</answer>", "answer '[[C]]' is not [[A]] or [[B]]"),
    ("<answer>A</answer>", "answer 'A' is not [[A]] or [[B]]"),
    ("<answer>tie</answer>", "answer 'tie' is not [[A]] or [[B]]"),
    ("<answer>[[A]]</answer><answer>[[B]]</answer>", "conflicting verdicts A and B"),
    ("<eval>[[B]] looks better at first</eval><answer>[[A]]</answer>", "conflicting verdicts A and B"),
])
def test_malformed(proto, text, reason):
    v = proto.parse_verdict(text)
    assert v.preference is None and reason in v.format_error, v.format_error


def test_single_turn_episode(proto):
    ep = proto.new_episode(1, RewardRule.preset("reference"))
    step = ep.step("<answer>[[B]]</answer>")
    assert step.done and step.reward == -10.0 and step.verdict.preference == 2 and step.turn1 is None
    with pytest.raises(RuntimeError):
        ep.step("<answer>[[B]]</answer>")
    ep = proto.new_episode(2, RewardRule(strict_turn1=True))
    assert ep.step("<answer>[[B]]</answer>").reward == 0.0  # no turn 1 to be strict about
    assert proto.new_episode(2, RewardRule()).step("[[B]]").reward == -100.0


def test_format_turn_output(proto):
    out = proto.format_turn_output(0, preference=2, analysis1="A is vague {x}", analysis2="B is exact $y")
    assert out.endswith("<answer>[[B]]</answer>")
    assert "<summary_A>A is vague {x}</summary_A>" in out
    assert proto.parse_verdict(out).preference == 2
    assert proto.parse_verdict(proto.format_turn_output(0, preference=1)).preference == 1
    with pytest.raises(ValueError, match="format marker"):
        proto.format_turn_output(0, preference=1, analysis1="so [[B]]")
    assert proto.followup_message(0) is None and proto.followup_message(1) is None
    assert proto.parse_turn1("anything").format_error is None
