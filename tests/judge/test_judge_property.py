"""Property test: parsers and Episode.step never raise on arbitrary strings (10,000 examples).

Strings are drawn from three sources: arbitrary unicode; sequences of format-marker
fragments (whole and truncated markers, ``\\boxed{``, braces, ``</think>``, CR/LF, digits)
mixed with random text; and a "mutated skeleton": a well-formed turn-1 + turn-2 + RM-R1
output whose pieces are each kept, dropped, replaced by a fragment or followed by random
text. The skeleton reaches the parsers' valid and boundary branches (valid verdicts,
conflicting boxes, bad boxed values, unknown dimensions), not only "missing block".
Every result must also satisfy the Verdict invariant and the reward must be one of the
three constants.
"""
from hypothesis import HealthCheck, given, settings, strategies as st

from megatron_brrm.judge import DIMENSIONS, RewardRule, get_protocol
from megatron_brrm.judge import markers as M

BRRM = get_protocol("brrm")
RMR1 = get_protocol("rmr1")
RULE = RewardRule(strict_turn1=True)

_WHOLE = list(M.BRRM_TURN1_MARKERS + M.BRRM_TURN2_MARKERS + M.RMR1_USER_MARKERS + DIMENSIONS) + [
    "\\boxed{", "\\boxed", "{", "}", "}}", "{{", "</think>", "<think>", "<answer>", "</answer>", "[[A]]", "[[B]]",
    "[[", "]]", "1", "2", " 1 ", "Response 2", "\r\n", "\n", "\r", ":", ",", " and ", "- ", "**", "(", ")",
    "logical reasoning", "Creativity",
]
_FRAGMENTS = _WHOLE + [m[: len(m) // 2] for m in _WHOLE if len(m) > 3] + [m[len(m) // 2:] for m in _WHOLE if len(m) > 3]

_SKELETON = [
    "<think>", "draft", "</think>", "\n",
    M.FOCUS_BEGIN, "\n", "Logical Reasoning", ", ", "Safety Awareness", "\n", M.FOCUS_END, "\n",
    M.quality_begin(1), "\n- Critical Issues: none\n", M.quality_end(1), "\n",
    M.quality_begin(2), "\n- Critical Issues: none\n", M.quality_end(2), "\n",
    M.analysis_begin(1), "\nok\n", M.analysis_end(1), "\n", M.analysis_begin(2), "\nok\n", M.analysis_end(2), "\n",
    M.RANKING_BEGIN, "\n", "\\boxed{", "2", "}", "\n", M.RANKING_END, "\n",
    None, None,  # a second ranking block, usually absent: repeated or conflicting verdict
    "<answer>", "[[A]]", "</answer>",
]


_SECOND = st.sampled_from(["", "", "", "", M.RANKING_BEGIN + "\\boxed{1}" + M.RANKING_END,
                           M.RANKING_BEGIN + "\\boxed{ 2 }" + M.RANKING_END, "\\boxed{1}"])


def _mutate(piece):
    if piece is None:
        return _SECOND
    def pick(draw):
        choice, fragment, noise = draw
        if choice < 8:
            return piece
        return ("", fragment, piece + noise)[choice - 8]
    return st.tuples(st.integers(0, 10), st.sampled_from(_FRAGMENTS), st.text(max_size=4)).map(pick)


skeleton_text = st.tuples(*[_mutate(p) for p in _SKELETON]).map("".join)
fragment_text = st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=6)), max_size=20).map("".join)
any_text = st.one_of(st.text(max_size=120), fragment_text, skeleton_text, skeleton_text)


@settings(max_examples=10000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(text=any_text)
def test_never_raises(text):
    t1 = BRRM.parse_turn1(text)
    assert t1.format_error is None or isinstance(t1.format_error, str)
    assert all(d in DIMENSIONS for d in t1.dimensions)
    for parse in (BRRM.parse_verdict, RMR1.parse_verdict):
        v = parse(text)
        assert (v.preference is None) != (v.format_error is None)
        assert v.preference in (None, 1, 2)
    ep = BRRM.new_episode(1, RULE)
    first = ep.step(text)
    assert not first.done and first.next_message["role"] == "user"
    last = ep.step(text)
    assert last.done and last.reward in (0.0, -1.0, -100.0)
    assert RMR1.new_episode(2, RULE).step(text).reward in (0.0, -1.0, -100.0)
