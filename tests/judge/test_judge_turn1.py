"""BR-RM turn-1 parsing (focus dimensions + two quality analyses); expected values by hand."""
import pytest

from megatron_brrm.judge import DIMENSIONS, get_protocol

ANALYSES = (
    "[Quality Analysis for Response 1]\n- Critical Issues: wrong total.\n[End of Quality Analysis for Response 1]\n"
    "[Quality Analysis for Response 2]\n- Critical Issues: None identified.\n[End of Quality Analysis for Response 2]"
)


def focus(body: str) -> str:
    return f"[Quality Assessment Focus]\n{body}\n[End of Quality Assessment Focus]\n" + ANALYSES


@pytest.fixture(scope="module")
def parse():
    return get_protocol("brrm").parse_turn1


def test_dimensions_constant_is_exact():
    assert DIMENSIONS == (
        "Information Accuracy", "Computational Precision", "Logical Reasoning", "Implementation Capability",
        "Safety Awareness", "Response Completeness", "Instruction Adherence", "Communication Clarity",
    )


def test_well_formed(parse):
    r = parse(focus("Computational Precision, Logical Reasoning"))
    assert r.format_error is None
    assert r.dimensions == ["Computational Precision", "Logical Reasoning"]
    assert r.analysis1 == "- Critical Issues: wrong total."
    assert r.analysis2 == "- Critical Issues: None identified."


@pytest.mark.parametrize("body, expected", [
    ("logical reasoning", ["Logical Reasoning"]),
    ("SAFETY   AWARENESS; instruction adherence", ["Safety Awareness", "Instruction Adherence"]),
    ("- **Implementation Capability**: the code must run\n- Logical Reasoning",
     ["Implementation Capability", "Logical Reasoning"]),
    ("1. Information Accuracy (facts)\n2) Response Completeness.", ["Information Accuracy", "Response Completeness"]),
    ("Selected abilities: Communication Clarity and Logical Reasoning", ["Communication Clarity", "Logical Reasoning"]),
    ("Logical Reasoning, logical reasoning", ["Logical Reasoning"]),  # duplicates count once
])
def test_dimension_list_layouts(parse, body, expected):
    r = parse(focus(body))
    assert r.format_error is None, r.format_error
    assert r.dimensions == expected


@pytest.mark.parametrize("text, reason", [
    (ANALYSES, "missing '[Quality Assessment Focus]' block"),
    ("[Quality Assessment Focus]\nLogical Reasoning\n" + ANALYSES, "block not closed"),
    (focus(""), "no focus dimension named"),
    (focus("Information Accuracy, Computational Precision, Logical Reasoning, Safety Awareness"),
     "too many focus dimensions (4; choose 1-3)"),
    (focus("Logical Reasoning, Creativity"), "unknown dimension name(s) 'Creativity'"),
    ("[Quality Assessment Focus]\nLogical Reasoning\n[End of Quality Assessment Focus]",
     "missing '[Quality Analysis for Response 1]' block"),
    ("[Quality Assessment Focus]\nLogical Reasoning\n[End of Quality Assessment Focus]\n"
     "[Quality Analysis for Response 1]\nx\n[End of Quality Analysis for Response 1]",
     "missing '[Quality Analysis for Response 2]' block"),
    ("[Quality Assessment Focus]\nLogical Reasoning\n[End of Quality Assessment Focus]\n"
     "[Quality Analysis for Response 1]\n  \n[End of Quality Analysis for Response 1]\n"
     "[Quality Analysis for Response 2]\ny\n[End of Quality Analysis for Response 2]",
     "empty quality analysis for Response 1"),
])
def test_malformed_turn1(parse, text, reason):
    r = parse(text)
    assert r.format_error is not None and reason in r.format_error, r.format_error


def test_unknown_names_keep_known_ones(parse):
    r = parse(focus("Logical Reasoning, Creativity"))
    assert r.dimensions == ["Logical Reasoning"]


def test_case_insensitive_markers_crlf_and_think(parse):
    text = ("<think>[Quality Assessment Focus]\nCreativity\n[End of Quality Assessment Focus]</think>\r\n"
            "[QUALITY ASSESSMENT FOCUS]\r\nSafety Awareness\r\n[end of quality assessment focus]\r\n"
            + ANALYSES.replace("\n", "\r\n"))
    r = parse(text)
    assert r.format_error is None
    assert r.dimensions == ["Safety Awareness"]
    assert r.analysis2 == "- Critical Issues: None identified."


def test_several_errors_are_all_reported(parse):
    r = parse("[Quality Assessment Focus]\nFoo\n[End of Quality Assessment Focus]")
    assert "unknown dimension name(s) 'Foo'" in r.format_error
    assert "no focus dimension named" in r.format_error
    assert "missing '[Quality Analysis for Response 1]' block" in r.format_error
    assert "missing '[Quality Analysis for Response 2]' block" in r.format_error
