"""SFT traces: synthetic BR-RM conversations and their token layout (= the rollout's)."""
import random

import pytest
from transformers import AutoTokenizer

from megatron_brrm.data import PreferencePair
from megatron_brrm.judge import get_protocol
from megatron_brrm.rollout.traces import TraceError, read_traces, synthetic_trace, tokenize_trace, write_traces

PAIR = PreferencePair(id="x", context=[{"role": "user", "content": "What is 2+2? {braces} $x"}],
                      response1="4", response2="5", preference=1)


def test_synthetic_trace_is_well_formed_and_verdict_follows_mode():
    proto = get_protocol("brrm")
    msgs = synthetic_trace(proto, PAIR, random.Random(0), verdict="label")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert proto.parse_turn1(msgs[1]["content"]).format_error is None
    assert proto.parse_verdict(msgs[3]["content"]).preference == 1
    verdicts = {proto.parse_verdict(synthetic_trace(proto, PAIR, random.Random(s))[3]["content"]).preference
                for s in range(20)}
    assert verdicts == {1, 2}  # random mode uses both verdicts
    with pytest.raises(ValueError, match="verdict"):
        synthetic_trace(proto, PAIR, random.Random(0), verdict="always")


def test_tokenize_trace_matches_chat_template_and_masks_assistant_turns(tiny_qwen3_dir):
    tok = AutoTokenizer.from_pretrained(tiny_qwen3_dir)
    msgs = synthetic_trace(get_protocol("brrm"), PAIR, random.Random(1))
    ids, mask = tokenize_trace(tok, msgs, tok.eos_token_id)
    assert len(ids) == len(mask)
    rendered = tok.apply_chat_template(msgs, tokenize=False)
    # The trace layout is the template's rendering up to the last EOS (the template adds a newline after it).
    assert tok.decode(ids, skip_special_tokens=False) == rendered.rstrip("\n")
    trained = tok.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)
    assert trained == msgs[1]["content"] + "<|im_end|>" + msgs[3]["content"] + "<|im_end|>"


def test_trace_io_and_errors(tmp_path, tiny_qwen3_dir):
    tok = AutoTokenizer.from_pretrained(tiny_qwen3_dir)
    msgs = synthetic_trace(get_protocol("brrm"), PAIR, random.Random(2))
    path = tmp_path / "t.jsonl"
    assert write_traces(path, [msgs, msgs]) == 2
    assert list(read_traces(path)) == [msgs, msgs]
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    with pytest.raises(TraceError, match=r"t.jsonl:2"):
        list(read_traces(path))
    with pytest.raises(TraceError, match="end with an assistant"):
        tokenize_trace(tok, [{"role": "user", "content": "hi"}], tok.eos_token_id)
