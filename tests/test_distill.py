"""tools/distill_traces.py and megatron_brrm.distill: rejection sampling keeps only right traces,
in both orders, from an engine teacher (a scripted judge engine, and the tiny model through
the CLI) and from an OpenAI-compatible HTTP teacher (a local fake server, through the CLI).

The scripted judge's verdicts are fixed by the pair texts (tests/fake_judge.py), so the
expected counts below are worked out by hand:

* a1 (source A): chosen "GOOD" shown first           -> right in both orders
* a2 (source A): the rejected reply says "GOOD"      -> wrong in both orders
* b1 (source B): context says "MALFORMED"            -> unparseable in both orders
* b2 (source B): chosen "GOOD", context "FLAKY"      -> sample 0 right, sample 1 wrong, per order

With 2 samples per order and 1 trace kept per order:
  A: pairs 2, orders 4, samples 8, kept 4, wrong 4, malformed 0, written 2, pairs_with_trace 1
  B: pairs 2, orders 4, samples 8, kept 2, wrong 2, malformed 4, written 2, pairs_with_trace 1
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fake_judge import FakeChatServer, FakeJudgeEngine
from megatron_brrm.data.io import write_pairs
from megatron_brrm.data.schema import PreferencePair

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
           TRANSFORMERS_OFFLINE="1")
EXPECTED = {
    "A": {"pairs": 2, "orders": 4, "samples": 8, "kept": 4, "wrong": 4, "malformed": 0, "written": 2,
          "pairs_with_trace": 1},
    "B": {"pairs": 2, "orders": 4, "samples": 8, "kept": 2, "wrong": 2, "malformed": 4, "written": 2,
          "pairs_with_trace": 1},
}


def _pairs():
    u = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    return [
        PreferencePair("A:1", u("Name a prime."), "GOOD: 7", "9", 1, source="A"),
        PreferencePair("A:2", u("Capital of France?"), "GOOD guess: Lyon", "Paris", 2, source="A"),
        PreferencePair("B:1", u("MALFORMED question"), "yes", "no", 1, source="B"),
        PreferencePair("B:2", u("FLAKY: 2+2?"), "5", "GOOD: 4", 2, source="B"),
    ]


def _counts(summary: dict, source: str) -> dict:
    return {k: summary["sources"][source][k] for k in EXPECTED[source]}


def _check_traces(traces, protocol: str) -> None:
    """Every kept trace holds the right verdict for its order, and has the protocol's shape."""
    by_id = {p.id: p for p in _pairs()}
    for t in traces:
        meta, msgs = t["meta"], t["messages"]
        base = by_id[meta["pair_id"].replace(":swap", "")]
        swapped = meta["pair_id"].endswith(":swap")
        assert meta["label"] == (3 - base.preference if swapped else base.preference)
        first_shown = base.response2 if swapped else base.response1
        opening = [m for m in msgs if m["role"] != "assistant"][-1 if protocol == "rmr1" else 0]["content"]
        assert opening.index(first_shown) < opening.index(base.response1 if swapped else base.response2)
        final = msgs[-1]["content"]
        if protocol == "brrm":
            assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
            assert final.endswith("\\boxed{%d}\n[The End of Ranking Score]" % meta["label"])
        else:
            assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
            assert final.endswith("<answer>[[%s]]</answer>" % "AB"[meta["label"] - 1])


@pytest.mark.parametrize("protocol", ["brrm", "rmr1"])
def test_engine_teacher_keeps_only_right_traces_in_both_orders(tiny_qwen3_dir, protocol):
    from transformers import AutoTokenizer

    from megatron_brrm.distill.rejection import distill
    from megatron_brrm.distill.teachers import EngineTeacher
    from megatron_brrm.judge import get_protocol
    from megatron_brrm.rollout.traces import tokenize_trace
    from megatron_brrm.rollout.two_turn import RolloutParams

    tok = AutoTokenizer.from_pretrained(tiny_qwen3_dir)
    proto = get_protocol(protocol)
    teacher = EngineTeacher(FakeJudgeEngine(tok, protocol), proto,
                            RolloutParams(n=2, max_new_tokens=[400] * proto.num_turns, max_total_length=4096),
                            batch_size=3)
    res = distill(_pairs(), teacher, proto, orders="both", keep_per_order=1, teacher_name="fake")
    summary = res.summary()
    assert _counts(summary, "A") == EXPECTED["A"] and _counts(summary, "B") == EXPECTED["B"]
    assert summary["total"]["malformed_reasons"] and summary["total"]["written"] == 4
    assert sorted(t["meta"]["pair_id"] for t in res.traces) == ["A:1", "A:1:swap", "B:2", "B:2:swap"]
    assert all(t["meta"]["sample"] == 0 for t in res.traces if t["meta"]["pair_id"].startswith("B:2"))
    _check_traces(res.traces, protocol)
    # the traces are what the SFT driver trains on: they tokenize in the rollout's layout
    for t in res.traces:
        ids, mask = tokenize_trace(tok, t["messages"], tok.eos_token_id)
        assert len(ids) == len(mask) and 0 < sum(mask) < len(mask)
    # keep every right sample instead of one per order: b2 has one right sample per order, a1 two
    res_all = distill(_pairs(), teacher, proto, keep_per_order=0)
    assert res_all.summary()["total"]["written"] == 6


def test_http_teacher_cli_turn_by_turn(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(pairs, _pairs())
    out = tmp_path / "traces.jsonl"
    with FakeChatServer("brrm", fail_first=1) as server:  # the first request gets a 503 and is retried
        proc = subprocess.run(
            [sys.executable, str(REPO / "tools" / "distill_traces.py"), "--pairs", str(pairs), "--output", str(out),
             "--teacher-url", server.url, "--teacher-name", "judge-x", "--samples-per-pair", "2",
             "--concurrency", "4", "--no-progress", "--max-new-tokens", "512"],
            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240)
        requests = list(server.requests)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "traces.summary.json").read_text())
    assert _counts(summary, "A") == EXPECTED["A"] and _counts(summary, "B") == EXPECTED["B"]
    assert "| A | 2 | 4 | 8 | 4 | 4 | 0 | 2 | 1 |" in proc.stdout
    assert len(requests) == 1 + 16 * 2  # one retried, then 16 conversations x 2 turns
    turn2 = [r for r in requests if any(m["role"] == "assistant" for m in r["messages"])]
    assert len(turn2) == 16
    for r in turn2:  # turn 2 = the turn-1 conversation + the teacher's answer + the turn-2 instructions
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["user", "assistant", "user"] and r["model"] == "judge-x"
        assert r["messages"][1]["content"].startswith("[Quality Assessment Focus]")
        assert "[The Begin of Ranking Score]" in r["messages"][2]["content"]
        assert r["max_tokens"] == 512 and r["seed"] in (0, 1)
    from megatron_brrm.rollout.traces import read_traces

    traces = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(traces) == 4 and len(list(read_traces(out))) == 4
    _check_traces(traces, "brrm")  # also: the server's words after the stop string were cut
    assert all(t["meta"]["teacher"].startswith("judge-x @ http://127.0.0.1:") for t in traces)


def test_tiny_model_teacher_cli_and_bad_input(tiny_qwen3_dir, tmp_path):
    # A random tiny model cannot write a verdict in 8 tokens per turn: every sample is malformed
    # (turn 2 hits the token limit) and nothing is written; the plumbing runs end to end.
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(pairs, _pairs())
    out = tmp_path / "t.jsonl"
    cmd = [sys.executable, str(REPO / "tools" / "distill_traces.py"), "--pairs", str(pairs), "--output", str(out)]
    proc = subprocess.run(cmd + ["--teacher-model", str(tiny_qwen3_dir), "--max-new-tokens", "8", "--limit", "2",
                                 "--samples-per-pair", "2", "--no-progress"],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "t.summary.json").read_text())
    assert summary["total"]["samples"] == 8 and summary["total"]["malformed"] == 8 and summary["total"]["written"] == 0
    assert any(k.startswith("turn ") for k in summary["total"]["malformed_reasons"])
    assert out.read_text() == ""
    # bad input: one line naming the problem, no traceback
    bad = pairs.with_name("bad.jsonl")
    bad.write_text('{"id": "x", "context": [], "response1": "a", "response2": "b", "preference": 1}\n')
    for extra, msg in ((["--teacher-url", "http://127.0.0.1:9/v1"], "--teacher-name"),
                       (["--teacher-model", str(tiny_qwen3_dir), "--teacher-url", "http://x/v1"], "exactly one of"),
                       (["--teacher-model", str(tmp_path)], "no config.json")):
        p = subprocess.run(cmd + extra, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr, (extra, p.stderr)
    p = subprocess.run([sys.executable, str(REPO / "tools" / "distill_traces.py"), "--pairs", str(bad), "--output",
                        str(out), "--teacher-url", "http://127.0.0.1:9/v1", "--teacher-name", "m"],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "bad.jsonl:1" in p.stderr and "Traceback" not in p.stderr


def test_openai_client_errors_name_the_url():
    from megatron_brrm.distill.openai_chat import ChatEndpointError, OpenAIChatClient, chat_completions_url
    from megatron_brrm.distill.teachers import normalize_finish_reason

    assert [normalize_finish_reason(r) for r in ("stop", "eos_token", "length", "max_tokens", "content_filter")] == \
        ["stop", "stop", "length", "length", "content_filter"]

    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"
    with pytest.raises(ValueError, match="must start with http"):
        chat_completions_url("localhost:8000")
    with FakeChatServer("brrm", fail_first=5) as server:
        client = OpenAIChatClient(server.url, "m", max_retries=1, backoff_s=0.01)
        with pytest.raises(ChatEndpointError, match=r"127\.0\.0\.1.*giving up after 2 attempt\(s\).*HTTP 503"):
            client.complete([{"role": "user", "content": "q"}])
        wrong_path = OpenAIChatClient(server.url.replace("/v1", "/v2"), "m", max_retries=0)
        server.fail_first = 0
        with pytest.raises(ChatEndpointError, match="HTTP 404"):
            wrong_path.complete([{"role": "user", "content": "q"}])
