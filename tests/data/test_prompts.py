"""Policy prompts (megatron_brrm.data.prompts): the JSONL form, errors named by file and line, and
the contexts of preference pairs."""
from __future__ import annotations

import json

import pytest

from megatron_brrm.data import DataError, PreferencePair, prompts_from_pairs, read_prompts


def test_prompt_records_and_defaults(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"prompt": "Hi?"},
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}],
             "reference": "Because.", "id": "q2"},
            {"context": [{"role": "user", "content": "And?"}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = read_prompts(path)
    assert [p.context[-1]["content"] for p in got] == ["Hi?", "Why?", "And?"]
    assert got[0].context == [{"role": "user", "content": "Hi?"}] and got[0].reference is None
    assert got[1].id == "q2" and got[1].reference == "Because." and len(got[1].context) == 2
    assert got[0].id != got[2].id  # default ids: <file>:<line>


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}', "exactly one of"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}', "end with a user turn"),
    ('{"prompt": "a", "reference": 3}', "'reference' must be a str"),
    ('{"prompt": "  "}', "'prompt' is empty"),
    ('{"prompt": "a", "id": "x"}', "duplicate id 'x'"),
    ('not json', ""),
])
def test_bad_records_name_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "fine", "id": "x"}\n' + line + "\n")
    with pytest.raises(DataError, match=rf"bad.jsonl:2.*{message}"):
        read_prompts(path)


def test_contexts_of_pairs_once_each_with_the_chosen_reply_as_reference():
    ctx = [{"role": "user", "content": "Q"}]
    pairs = [PreferencePair("s:1", ctx, "bad", "good", 2), PreferencePair("s:1:swap", ctx, "good", "bad", 1),
             PreferencePair("s:2", [{"role": "user", "content": "R"}], "yes", "no", 1)]
    got = prompts_from_pairs(pairs)
    assert [(p.id, p.context[0]["content"], p.reference) for p in got] == [("s:1", "Q", "good"), ("s:2", "R", "yes")]
