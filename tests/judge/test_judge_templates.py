"""Template rendering, the context renderer and template_dir overrides."""
import os
import re
import shutil

import pytest

from megatron_brrm.judge import DIMENSIONS, TemplateError, get_protocol, render_context
from megatron_brrm.judge.templates import SHIPPED_DIR as SHIPPED

TURN1_MARKERS = [
    "[The Begin of Context]", "[The End of Context]",
    "[The Begin of Response 1]", "[The End of Response 1]", "[The Begin of Response 2]", "[The End of Response 2]",
    "[Quality Assessment Focus]", "[End of Quality Assessment Focus]",
    "[Quality Analysis for Response 1]", "[End of Quality Analysis for Response 1]",
    "[Quality Analysis for Response 2]", "[End of Quality Analysis for Response 2]",
]
TURN2_MARKERS = [
    "[The Begin of Analysis on Response 1]", "[The End of Analysis on Response 1]",
    "[The Begin of Analysis on Response 2]", "[The End of Analysis on Response 2]",
    "[The Begin of Ranking Score]", "\\boxed{1}", "\\boxed{2}", "[The End of Ranking Score]",
]
TRICKY = "Solve {x}: f(x) = {{response2}} costs $5 and \\1 \\g<0> {{context}} %s {0}"


def test_render_context_hand_written():
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi {there}"},
        {"role": "assistant", "content": "Hello!\nHow can I help?"},
        {"role": "user", "content": "Add 2+2."},
    ]
    assert render_context(msgs) == (
        "System: Be brief.\nUser: Hi {there}\nAssistant: Hello!\nHow can I help?\nUser: Add 2+2."
    )


@pytest.mark.parametrize("bad, where", [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    ([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}], "context[1]"),
    ([{"role": "user"}], "context[0]"),
    ([{"role": "user", "content": 3}], "context[0]"),
])
def test_render_context_errors(bad, where):
    with pytest.raises(ValueError, match=re.escape(where)):
        render_context(bad)


def test_turn1_message_markers_once_and_text_verbatim():
    proto = get_protocol("brrm")
    ctx = [{"role": "user", "content": TRICKY}]
    msgs = proto.turn1_messages(ctx, "R1 says \\boxed{42} {}", "R2 {{response1}} $$")
    assert [m["role"] for m in msgs] == ["user"]
    content = msgs[0]["content"]
    for marker in TURN1_MARKERS:
        assert content.count(marker) == 1, marker
    for marker in TURN2_MARKERS[:5] + TURN2_MARKERS[-1:]:
        assert marker not in content
    assert "[The Begin of Context]\nUser: " + TRICKY + "\n[The End of Context]" in content
    assert "[The Begin of Response 1]\nR1 says \\boxed{42} {}\n[The End of Response 1]" in content
    assert "[The Begin of Response 2]\nR2 {{response1}} $$\n[The End of Response 2]" in content
    for name in DIMENSIONS:
        assert name in content
    assert "1 to 3" in content


def test_turn2_message_markers_once_hierarchies_and_no_context():
    proto = get_protocol("brrm")
    msg = proto.followup_message(1)
    assert msg["role"] == "user"
    content = msg["content"]
    for marker in TURN2_MARKERS:
        assert content.count(marker) == 1, marker
    assert "[The Begin of Context]" not in content and "[The Begin of Response 1]" not in content
    lowered = content.lower()
    for phrase in ("accuracy-critical", "correctness first, then the soundness of the process, then presentation",
                   "creative or open-ended", "user's intent is served first, then the quality of the content, then creativity",
                   "instruction-following", "adherence to the instructions first, then content, then clarity"):
        assert phrase in lowered, phrase
    assert proto.followup_message(0) is None and proto.followup_message(2) is None


def test_rmr1_messages_markers_once():
    proto = get_protocol("rmr1")
    msgs = proto.turn1_messages([{"role": "user", "content": TRICKY}], "A text {x}", "B text $1")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[0]["content"].count("<answer>[[A]]</answer>") == 1
    assert msgs[0]["content"].count("<answer>[[B]]</answer>") == 1
    user = msgs[1]["content"]
    assert user == (
        "[Client Question]\n" + TRICKY + "\n\n"
        "[The Start of Chatbot A's Response]\nA text {x}\n[The End of Chatbot A's Response]\n\n"
        "[The Start of Chatbot B's Response]\nB text $1\n[The End of Chatbot B's Response]"
    )
    multi = proto.turn1_messages(
        [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}],
        "x", "y")
    assert multi[1]["content"].startswith("[Client Question]\nUser: q1\nAssistant: a1\nUser: q2\n\n")


def _copy_shipped(tmp_path, protocol):
    d = tmp_path / protocol
    shutil.copytree(os.path.join(SHIPPED, protocol), d)
    return d


def test_template_dir_override(tmp_path):
    d = _copy_shipped(tmp_path, "brrm")
    text = (d / "turn1.txt").read_text()
    (d / "turn1.txt").write_text("MY OWN WORDING {{ context }}\r\n" + text.split("\n", 1)[1] + "\n\n\n")
    proto = get_protocol("brrm", template_dir=str(d))
    content = proto.turn1_messages([{"role": "user", "content": "q"}], "a", "b")[0]["content"]
    assert content.startswith("MY OWN WORDING User: q\n")  # CRLF normalised, spaces in {{ context }} allowed
    assert content.endswith("[End of Quality Analysis for Response 2]")  # trailing blank lines dropped
    assert proto.template_dir == str(d)


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace("{{response2}}", "RESPONSE"), "lacks the required placeholder {{response2}}"),
    (lambda t: t.replace("[The End of Context]", "[End Context]"), "lacks the required format marker '[The End of Context]'"),
    (lambda t: t + "\n{{judge_name}}", "uses unknown placeholder {{judge_name}}"),
])
def test_template_errors_name_file_and_placeholder(tmp_path, edit, expected):
    d = _copy_shipped(tmp_path, "brrm")
    p = d / "turn1.txt"
    p.write_text(edit(p.read_text()))
    with pytest.raises(TemplateError) as err:
        get_protocol("brrm", template_dir=str(d))
    assert expected in str(err.value)
    assert str(p) in str(err.value)


def test_template_dir_with_protocol_subfolders(tmp_path):
    d = _copy_shipped(tmp_path, "rmr1")
    (d / "system.txt").write_text("Judge. End with <answer>[[A]]</answer> or <answer>[[B]]</answer>.\n")
    proto = get_protocol("rmr1", template_dir=str(tmp_path))  # the parent holding rmr1/
    msgs = proto.turn1_messages([{"role": "user", "content": "q"}], "a", "b")
    assert msgs[0]["content"] == "Judge. End with <answer>[[A]]</answer> or <answer>[[B]]</answer>."
    with pytest.raises(TemplateError, match=r"holds none of turn1.txt, turn2.txt \(nor a brrm/ sub-folder"):
        get_protocol("brrm", template_dir=str(tmp_path))  # no brrm files, no brrm/ sub-folder


def test_template_dir_missing_file_and_not_a_folder(tmp_path):
    d = _copy_shipped(tmp_path, "rmr1")
    (d / "user.txt").unlink()
    with pytest.raises(TemplateError, match="user.txt not found"):
        get_protocol("rmr1", template_dir=str(d))
    with pytest.raises(TemplateError, match="is not a folder"):
        get_protocol("brrm", template_dir=str(tmp_path / "nope"))
    assert issubclass(TemplateError, ValueError)


def test_bad_responses_raise_clear_error():
    with pytest.raises(ValueError, match="response2 must be a str"):
        get_protocol("brrm").turn1_messages([{"role": "user", "content": "q"}], "a", None)
