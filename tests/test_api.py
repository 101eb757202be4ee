"""megatron_brrm.api.RewardModel: verdicts, both orders and position consistency, batching, the
scalar interface and its errors (scripted judge engine, tests/fake_judge.py), a Bradley-Terry
*ForSequenceClassification folder loaded by from_pretrained (rewards = transformers' own scores of
the chat-template rendering), and the README example on the tiny model through the HF engine."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from fake_judge import TURN1, FakeJudgeEngine
from megatron_brrm.api import CompareResult, RewardModel, ScalarScorer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok(tiny_qwen3_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen3_dir)


def test_compare_verdicts_orders_and_batching(tok):
    engine = FakeJudgeEngine(tok, "brrm")
    rm = RewardModel(engine, batch_size=2, max_new_tokens=400, max_total_length=4096)
    r = rm.compare("Which number is prime?", "GOOD: 7", "9", both_orders=True)
    assert (r.verdict, r.preference, r.consistency) == ("a", 1, True)
    assert [o.order for o in r.orders] == [("a", "b"), ("b", "a")]
    assert [o.verdict for o in r.orders] == ["a", "a"]  # order (b, a) said Response 2 = a
    assert r.reasoning.startswith(TURN1) and r.reasoning.endswith("\\boxed{1}\n[The End of Ranking Score]")
    assert "<|im_end|>" not in r.reasoning
    # a judge that always names Response 1: right in one order only -> no verdict, inconsistent
    biased = rm.compare("ALWAYS1 pick one", "x", "y", both_orders=True)
    assert [o.verdict for o in biased.orders] == ["a", "b"] and biased.verdict is None and biased.consistency is False
    single = rm.compare("ALWAYS1 pick one", "x", "y")
    assert (single.verdict, single.consistency, len(single.orders)) == ("a", None, 1)
    bad = rm.compare("MALFORMED", "x", "y")
    assert bad.verdict is None and "3" in bad.orders[0].format_error
    # batched: 3 items x 2 orders = 6 presentations in batches of 2, results in input order
    calls = engine.calls
    items = [("q1", "GOOD", "no"), ([{"role": "system", "content": "be fair"}, {"role": "user", "content": "q2"}],
                                    "no", "GOOD"), ("q3 MALFORMED", "a", "b")]
    out = rm.compare_batch(items, both_orders=True)
    assert [x.verdict for x in out] == ["a", "b", None] and [x.consistency for x in out] == [True, True, False]
    assert engine.calls - calls == 3 * 2  # 3 rollout calls of 2 presentations, 2 turns each
    rmr1 = RewardModel(FakeJudgeEngine(tok, "rmr1"), protocol="rmr1", max_new_tokens=400, max_total_length=4096)
    assert rmr1.compare("q", "meh", "GOOD", both_orders=True).verdict == "b"


def test_scalar_interface_and_errors(tok, tmp_path):
    rm = RewardModel(FakeJudgeEngine(tok, "brrm"))
    with pytest.raises(TypeError, match=r"needs a scalar \(Bradley-Terry\) reward model.*use compare\("):
        rm.score("q", "r")
    with pytest.raises(ValueError, match=r"items\[0\].context must end with a user turn"):
        rm.compare([{"role": "assistant", "content": "hi"}], "a", "b")
    with pytest.raises(ValueError, match=r"items\[0\].response_b must be a str"):
        rm.compare("q", "a", None)

    class LengthScorer(ScalarScorer):  # a stand-in for a later Bradley-Terry model: longer = better
        def score_batch(self, contexts, responses):
            assert all(c[-1]["role"] == "user" for c in contexts)
            return [float(len(r)) for r in responses]

    scalar = RewardModel(scorer=LengthScorer())
    assert scalar.score("q", "four") == 4.0 and scalar.score_batch([("q", "ab"), ("q", "")]) == [2.0, 0.0]
    r = scalar.compare("q", "short", "much longer")
    assert isinstance(r, CompareResult) and (r.verdict, r.scores) == ("b", (5.0, 11.0))
    assert scalar.compare("q", "same", "size").verdict is None  # equal rewards: no preference
    with pytest.raises(ValueError, match="exactly one of engine="):
        RewardModel()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        RewardModel.from_pretrained(tmp_path / "nowhere")


def test_readme_example_runs_on_the_tiny_model(tiny_qwen3_dir, tmp_path, monkeypatch, capsys):
    # The README's Python API example, run as written; only the tiny model it builds is swapped
    # for the session's copy of the same tiny model (saves training a tokenizer again).
    import megatron_brrm.model.tiny as tiny

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", readme, re.S)
    assert block, "README.md lost its <!-- api-example --> block"
    built = []
    monkeypatch.setattr(tiny, "build_tiny_hf_model", lambda out_dir, **kw: built.append(out_dir) or tiny_qwen3_dir)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block.group(1), "README.md:api-example", "exec"), namespace)
    assert built, "the example should build (here: reuse) the tiny model"
    result, batch = namespace["result"], namespace["batch"]
    assert isinstance(result, CompareResult) and len(result.orders) == 2 and len(batch) == 2
    assert result.verdict in ("a", "b", None) and result.consistency in (True, False)
    out = capsys.readouterr().out
    assert "needs a scalar (Bradley-Terry) reward model" in out


def test_scalar_reward_model_from_pretrained(tiny_reward_dir):
    """from_pretrained on a *ForSequenceClassification folder: score() is transformers' score of
    context + response rendered by the chat template (computed here independently, one sequence at
    a time, so no padding is involved), and compare() prefers the higher reward."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm = RewardModel.from_pretrained(tiny_reward_dir, device="cpu", batch_size=2)
    tok = AutoTokenizer.from_pretrained(tiny_reward_dir)
    hf = AutoModelForSequenceClassification.from_pretrained(tiny_reward_dir, dtype=torch.float32)
    context = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]
    replies = ["4", "The answer is five.", "Four, because two plus two is four."]

    def reference(reply):
        text = tok.apply_chat_template(context + [{"role": "assistant", "content": reply}], tokenize=False)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            return float(hf(input_ids=ids).logits[0, 0])

    want = [reference(r) for r in replies]
    got = rm.score_batch([(context, r) for r in replies])  # batched with right padding
    assert got == pytest.approx(want, abs=1e-5)
    assert rm.score(context, replies[1]) == pytest.approx(want[1], abs=1e-5)
    assert len(set(round(w, 4) for w in want)) == 3  # distinct rewards, so compare() has a winner
    for a, b in ((0, 1), (1, 2), (2, 0)):
        r = rm.compare(context, replies[a], replies[b])
        assert r.verdict == ("a" if want[a] > want[b] else "b") and r.scores == pytest.approx((want[a], want[b]), abs=1e-5)
