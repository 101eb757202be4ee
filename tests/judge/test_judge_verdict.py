"""BR-RM turn-2 verdict parsing: every expected value below is written by hand from the rules
in docs/design.md §5 and the ``brrm_parse`` docstring, not produced by the parser."""
import pytest

from megatron_brrm.judge import get_protocol

ANALYSES = (
    "[The Begin of Analysis on Response 1]\nR1 misses the edge case.\n[The End of Analysis on Response 1]\n\n"
    "[The Begin of Analysis on Response 2]\nR2 is correct.\n[The End of Analysis on Response 2]\n\n"
)


@pytest.fixture(scope="module")
def parse():
    return get_protocol("brrm").parse_verdict


@pytest.mark.parametrize("value", [1, 2])
def test_well_formed_both_values(parse, value):
    text = ANALYSES + "[The Begin of Ranking Score]\n\\boxed{%d}\n[The End of Ranking Score]" % value
    v = parse(text)
    assert v.preference == value
    assert v.format_error is None
    assert v.analysis1 == "R1 misses the edge case."
    assert v.analysis2 == "R2 is correct."


@pytest.mark.parametrize("text, reason", [
    ("", "missing ranking block"),
    (ANALYSES, "missing ranking block"),
    ("The answer is \\boxed{1}", "missing ranking block"),  # a box outside the block does not count
    ("[The End of Ranking Score]\n\\boxed{1}", "missing ranking block"),
    ("[The Begin of Ranking Score]\n\\boxed{1}\n", "ranking block not closed"),
    ("[The Begin of Ranking Score]\n1\n[The End of Ranking Score]", "ranking block has no \\boxed{...}"),
    ("[The Begin of Ranking Score]\n\\boxed{Response 2}\n[The End of Ranking Score]",
     "boxed value 'Response 2' is not 1 or 2"),
    ("[The Begin of Ranking Score]\n\\boxed{3}\n[The End of Ranking Score]", "boxed value '3' is not 1 or 2"),
    ("[The Begin of Ranking Score]\n\\boxed{}\n[The End of Ranking Score]", "boxed value '' is not 1 or 2"),
    ("[The Begin of Ranking Score]\n\\boxed{1,2}\n[The End of Ranking Score]", "boxed value '1,2' is not 1 or 2"),
    ("[The Begin of Ranking Score]\n\\boxed{12}\n[The End of Ranking Score]", "boxed value '12' is not 1 or 2"),
    ("[The Begin of Ranking Score]\n\\boxed{\\text{1}}\n[The End of Ranking Score]",
     "boxed value '\\\\text{1}' is not 1 or 2"),
    ("[The Begin of Ranking Score]\n\\boxed{1\n[The End of Ranking Score]", "unterminated \\boxed{"),
    ("[The Begin of Ranking Score]\n\\boxed{1} \\boxed{2}\n[The End of Ranking Score]", "conflicting verdicts 1 and 2"),
    ("[The Begin of Ranking Score]\n\\boxed{1}\n[The End of Ranking Score]\nwait, no:\n"
     "[The Begin of Ranking Score]\n\\boxed{2}\n[The End of Ranking Score]", "conflicting verdicts 1 and 2"),
    ("[the begin of ranking score]\n\\boxed{1}\n[the end of ranking score]", "missing ranking block"),  # case-sensitive
])
def test_malformed_reasons(parse, text, reason):
    v = parse(text)
    assert v.preference is None
    assert v.format_error is not None and reason in v.format_error, v.format_error


def test_extra_text_around_blocks(parse):
    text = ("Let me think about this carefully.\n" + ANALYSES + "Some more musing.\n"
            "[The Begin of Ranking Score]\n\\boxed{1}\n[The End of Ranking Score]\nThanks for reading!")
    assert parse(text).preference == 1


def test_extra_text_inside_block_and_box_elsewhere(parse):
    # math answers boxed inside the analyses are ignored; prose inside the block is tolerated
    text = ("[The Begin of Analysis on Response 1]\nIts result \\boxed{7} is wrong.\n[The End of Analysis on Response 1]\n"
            "[The Begin of Ranking Score]\nFinal: $\\boxed{2}$\n[The End of Ranking Score]")
    v = parse(text)
    assert (v.preference, v.format_error) == (2, None)
    assert v.analysis1 == "Its result \\boxed{7} is wrong."
    assert v.analysis2 is None  # a missing analysis is not a format error


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_windows_and_cr_newlines(parse, newline):
    text = (ANALYSES + "[The Begin of Ranking Score]\n\\boxed{2}\n[The End of Ranking Score]\n").replace("\n", newline)
    v = parse(text)
    assert v.preference == 2
    assert v.analysis1 == "R1 misses the edge case."  # no stray '\r' left in the analysis


def test_repeated_identical_verdict(parse):
    text = ("[The Begin of Ranking Score]\n\\boxed{2}\n[The End of Ranking Score]\n"
            "[The Begin of Ranking Score]\n\\boxed{2} (again \\boxed{ 2 })\n[The End of Ranking Score]")
    assert parse(text).preference == 2


@pytest.mark.parametrize("block, expected", [
    ("[The Begin of Ranking Score]\n\\boxed{ 1 }\n[The End of Ranking Score]", 1),
    ("[The Begin of Ranking Score]\n\\boxed{\t2\n}\n[The End of Ranking Score]", 2),
    ("[The Begin of Ranking Score]\\boxed{2}[The End of Ranking Score]", 2),  # no newlines needed
    ("[The Begin of Ranking Score]   \\boxed {1}   [The End of Ranking Score]", 1),
    ("[The Begin of Ranking Score]\n\\\\boxed{1}\n[The End of Ranking Score]", 1),  # JSON-style double backslash
])
def test_boxed_with_spaces_and_layouts(parse, block, expected):
    v = parse(block)
    assert (v.preference, v.format_error) == (expected, None)


def test_thinking_drafts_are_ignored(parse):
    text = ("<think>Draft: [The Begin of Ranking Score]\n\\boxed{1}\n[The End of Ranking Score] hmm, no.</think>\n"
            "[The Begin of Ranking Score]\n\\boxed{2}\n[The End of Ranking Score]")
    assert parse(text).preference == 2
    only_in_think = "<think>[The Begin of Ranking Score]\\boxed{1}[The End of Ranking Score]</think>\nDone."
    v = parse(only_in_think)
    assert v.preference is None and "after the last '</think>'" in v.format_error


def test_non_string_is_malformed_not_a_crash(parse):
    v = parse(None)
    assert v.preference is None and "not a string" in v.format_error
