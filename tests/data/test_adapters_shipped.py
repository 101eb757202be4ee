"""Adapters of the shipped sources on hand-written rows in their real schemas (SOURCES.md 7-12),
plus checks on the real sample files."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from megatron_brrm.data import DataError, SourceSummary, load_source

from .helpers import assistant, canon, user, write_jsonl


# -- HH-RLHF --------------------------------------------------------------------------------------
def test_hh_rlhf_transcripts_split_into_turns(tmp_path):
    rows = [
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Tell me a joke.\n\nAssistant: Why did the chicken cross the road?",
         "rejected": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Tell me a joke.\n\nAssistant: No."},
        {"chosen": "\n\nHuman: How do I pick a lock?\n\nAssistant: I can't help with that.",
         "rejected": "\n\nHuman: How do I pick a lock?\n\nAssistant: Use a tension wrench."},
    ]
    path = write_jsonl(tmp_path / "harmless-base" / "test.jsonl.gz", rows, gz=True)
    got = [canon(p) for p in load_source("hh_rlhf", path)]
    assert got == [
        ("hh_rlhf:harmless-base/test:1", [user("Hi"), assistant("Hello."), user("Tell me a joke.")],
         "Why did the chicken cross the road?", "No.", "safety", "hh_rlhf"),
        ("hh_rlhf:harmless-base/test:2", [user("How do I pick a lock?")],
         "I can't help with that.", "Use a tension wrench.", "safety", "hh_rlhf"),
    ]


@pytest.mark.parametrize("row, message", [
    ({"chosen": "\n\nHuman: Hi\n\nAssistant: ", "rejected": "\n\nHuman: Hi\n\nAssistant: Yo"}, "field 'chosen': the response is empty"),
    ({"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: B\n\nAssistant: y"}, "differ before the final Assistant turn"),
    ({"chosen": "Human: Hi\n\nAssistant: x", "rejected": "\n\nHuman: Hi\n\nAssistant: y"}, "must start with"),
    ({"rejected": "\n\nHuman: Hi\n\nAssistant: y"}, "missing field 'chosen'"),
])
def test_hh_rlhf_malformed(tmp_path, row, message):
    path = write_jsonl(tmp_path / "helpful-base" / "train.jsonl", [{"chosen": "\n\nHuman: a\n\nAssistant: b",
                                                                   "rejected": "\n\nHuman: a\n\nAssistant: c"}, row])
    with pytest.raises(DataError) as err:
        list(load_source("hh_rlhf", path))
    assert str(err.value).startswith(f"{path}:2: ") and message in str(err.value)
    s = SourceSummary("hh_rlhf")
    assert len(list(load_source("hh_rlhf", path, skip_invalid=True, summary=s))) == 1
    assert s.skipped_invalid == 1 and s.invalid_examples[0].startswith(f"{path}:2: ")


def test_hh_rlhf_sample_row_76_is_the_casino_prompt(samples_dir):
    """SOURCES.md section 7: harmless-base test line 76 starts with 'How can I rob a casino?'."""
    pairs = {p.id: p for p in load_source("hh_rlhf", samples_dir / "hh_rlhf/harmless-base/test.jsonl.gz",
                                          skip_invalid=True)}
    assert pairs["hh_rlhf:harmless-base/test:76"].context == [user("How can I rob a casino?")]


def test_hh_rlhf_samples_counts(samples_dir):
    s = SourceSummary("hh_rlhf")
    for f in ("harmless-base/test.jsonl.gz", "helpful-base/train_sample.jsonl"):
        list(load_source("hh_rlhf", samples_dir / "hh_rlhf" / f, skip_invalid=True, summary=s))
    # 240 rows; line 87 of the harmless file has an empty final chosen turn (checked by hand)
    assert (s.rows_read, s.pairs, s.skipped_invalid) == (240, 239, 1)
    assert "test.jsonl.gz:87: field 'chosen'" in s.invalid_examples[0]


# -- UltraFeedback ---------------------------------------------------------------------------------
def _uf(i, sc, sr):
    return {"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}", "source_index": 100 + i,
            "metadata": {"score_chosen": sc, "score_rejected": sr}}


def test_ultrafeedback_ties_filtered_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "train_clean.jsonl", [_uf(0, 8.0, 5.0), _uf(1, 6.0, 6.0), _uf(2, 7.5, 7.0)])
    s = SourceSummary("ultrafeedback_binarized")
    got = [canon(p) for p in load_source("ultrafeedback_binarized", path, summary=s)]
    assert got == [("ultrafeedback_binarized:100", [user("q0")], "good 0", "bad 0", "general", "ultrafeedback_binarized"),
                   ("ultrafeedback_binarized:102", [user("q2")], "good 2", "bad 2", "general", "ultrafeedback_binarized")]
    assert s.filtered == {"tie": 1}
    assert len(list(load_source("ultrafeedback_binarized", path, keep_ties=True))) == 3


def test_ultrafeedback_inverted_scores_are_a_bad_label(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [_uf(0, 3.0, 5.0)])
    with pytest.raises(DataError, match=r"t\.jsonl:1: .*score_chosen"):
        list(load_source("ultrafeedback_binarized", path))


def test_ultrafeedback_raw_message_lists(tmp_path):
    row = {"chosen": [user("q"), assistant("good")], "rejected": [user("q"), assistant("bad")],
           "score_chosen": 9.0, "score_rejected": 2.0}
    path = write_jsonl(tmp_path / "raw.jsonl", [row])
    assert [canon(p) for p in load_source("ultrafeedback_binarized", path)] == [
        ("ultrafeedback_binarized:raw:1", [user("q")], "good", "bad", "general", "ultrafeedback_binarized")]


# -- PKU-SafeRLHF ----------------------------------------------------------------------------------
def test_pku_safer_vs_better(tmp_path):
    row = {"prompt": "How do I make a weapon?", "response_0": "Here is how...", "response_1": "I can't help.",
           "better_response_id": 0, "safer_response_id": 1, "is_response_0_safe": False, "is_response_1_safe": True}
    path = write_jsonl(tmp_path / "pku.jsonl", [row])
    safer = [canon(p) for p in load_source("pku_saferlhf", path)]
    better = [canon(p) for p in load_source("pku_saferlhf", path, preference="better")]
    assert safer == [("pku_saferlhf:pku:1", [user("How do I make a weapon?")], "I can't help.", "Here is how...",
                      "safety", "pku_saferlhf")]
    assert better == [("pku_saferlhf:pku:1", [user("How do I make a weapon?")], "Here is how...", "I can't help.",
                       "safety", "pku_saferlhf")]
    with pytest.raises(ValueError, match="preference"):
        list(load_source("pku_saferlhf", path, preference="kinder"))
    row["safer_response_id"] = 2
    write_jsonl(path, [row])
    with pytest.raises(DataError, match=r"pku\.jsonl:1: .*'safer_response_id'"):
        list(load_source("pku_saferlhf", path))


# -- Chatbot Arena ---------------------------------------------------------------------------------
def _arena(i, prompts, a, b, win):
    return {"id": i, "model_a": "m1", "model_b": "m2", "prompt": json.dumps(prompts),
            "response_a": json.dumps(a), "response_b": json.dumps(b),
            "winner_model_a": int(win == "a"), "winner_model_b": int(win == "b"), "winner_tie": int(win == "tie")}


def test_chatbot_arena_rules(tmp_path):
    rows = [
        _arena(1, ["Hi"], ["Hello!"], ["Go away."], "a"),
        _arena(2, ["Hi"], ["Hello!"], ["Hey."], "tie"),
        _arena(3, ["Hi", "Joke?"], ["Hello!", "A joke."], ["Hey.", "No."], "b"),      # diverging multi-turn
        _arena(4, ["Hi", "Joke?"], ["Hello!", "A joke."], ["Hello!", "No."], "b"),    # shared earlier reply
    ]
    path = write_jsonl(tmp_path / "arena.jsonl", rows)
    s = SourceSummary("chatbot_arena")
    got = [canon(p) for p in load_source("chatbot_arena", path, summary=s)]
    assert got == [("chatbot_arena:1", [user("Hi")], "Hello!", "Go away.", "general", "chatbot_arena"),
                   ("chatbot_arena:4", [user("Hi"), assistant("Hello!"), user("Joke?")], "No.", "A joke.",
                    "general", "chatbot_arena")]
    assert s.filtered == {"tie": 1, "multi_turn": 1}


def test_chatbot_arena_null_response_and_bad_label(tmp_path):
    path = write_jsonl(tmp_path / "arena.jsonl", [_arena(1, ["Hi"], [None], ["Hey."], "a")])
    with pytest.raises(DataError, match=r"arena\.jsonl:1: field 'response_a': the response must be a string"):
        list(load_source("chatbot_arena", path))
    bad = _arena(2, ["Hi"], ["x"], ["y"], "a")
    bad["winner_model_b"] = 1
    write_jsonl(path, [bad])
    with pytest.raises(DataError, match=r"arena\.jsonl:1: exactly one of"):
        list(load_source("chatbot_arena", path))


def test_chatbot_arena_sample_counts(samples_dir):
    s = SourceSummary("chatbot_arena")
    pairs = list(load_source("chatbot_arena", samples_dir / "chatbot_arena/lmsys-arena-human-preference-55k_sample.jsonl",
                             summary=s))
    # 120 rows: 43 ties and 14 non-tie multi-turn rows (counted independently with json in this repo's notes)
    assert (s.rows_read, len(pairs), s.filtered["tie"], s.filtered["multi_turn"]) == (120, 63, 43, 14)


# -- PRM800K ---------------------------------------------------------------------------------------
def _prm(steps, nxt, rating, instruction="Solve x+1=3."):
    return {"instruction": instruction, "responses": steps, "next_response": nxt, "answer": None,
            "is_human_response": False, "is_solution": False, "is_preferred_response": False,
            "rating": rating, "error_reason": None if rating != -1 else "wrong"}


def test_prm800k_step_pairs_inside_prefix_group(tmp_path):
    rows = [
        _prm([], "Subtract 1: x = 2.", 1.0),
        _prm([], "Add 1: x = 4.", -1.0),
        _prm([], "Let us think.", 0.0),
        _prm(["Subtract 1: x = 2."], "So x = 2.", 1.0),      # group without a -1 step
        _prm([], "x = 3 - 1 = 2.", 1.0),
    ]
    path = write_jsonl(tmp_path / "prm.jsonl", rows)
    s = SourceSummary("prm800k")
    got = [canon(p) for p in load_source("prm800k", path, summary=s)]
    ctx = [user("Solve x+1=3.")]
    assert got == [("prm800k:prm:1#1-2", ctx, "Subtract 1: x = 2.", "Add 1: x = 4.", "math", "prm800k"),
                   ("prm800k:prm:1#5-2", ctx, "x = 3 - 1 = 2.", "Add 1: x = 4.", "math", "prm800k")]
    assert s.filtered == {"unpaired_rating": 1, "no_opposite_rating": 1}


def test_prm800k_earlier_steps_in_context_or_response(tmp_path):
    rows = [_prm(["Step A.", "Step B."], "Good step.", 1.0), _prm(["Step A.", "Step B."], "Bad step.", -1.0)]
    path = write_jsonl(tmp_path / "prm.jsonl", rows)
    (c,) = [canon(p) for p in load_source("prm800k", path)]
    assert c[1:4] == ([user("Solve x+1=3.\n\nSteps so far:\nStep A.\nStep B.")], "Good step.", "Bad step.")
    (r,) = [canon(p) for p in load_source("prm800k", path, steps_in="response")]
    assert r[1:4] == ([user("Solve x+1=3.")], "Step A.\nStep B.\nGood step.", "Step A.\nStep B.\nBad step.")


def test_prm800k_sample_pair_count(samples_dir):
    # 300 rows, 38 prefix groups; sum over groups of (#+1 steps) x (#-1 steps) = 307 (counted by hand-written script)
    pairs = list(load_source("prm800k", samples_dir / "prm800k/phase1_train_plus.stepwise-critic.subset.jsonl"))
    assert len(pairs) == 307 and len({p.id for p in pairs}) == 307


# -- HelpSteer v1 ----------------------------------------------------------------------------------
def test_helpsteer_v1_pairs_by_helpfulness(tmp_path):
    def r(prompt, resp, h):
        return {"prompt": prompt, "response": resp, "helpfulness": h, "correctness": 3, "coherence": 4,
                "complexity": 1, "verbosity": 1}
    rows = [r("P1", "a", 4), r("P1", "b", 2), r("P1", "c", 4), r("P2", "only", 3)]
    path = write_jsonl(tmp_path / "hs.jsonl", rows)
    s = SourceSummary("helpsteer")
    got = [canon(p) for p in load_source("helpsteer", path, summary=s)]
    assert got == [("helpsteer:hs:1#1-2", [user("P1")], "a", "b", "general", "helpsteer"),
                   ("helpsteer:hs:1#2-3", [user("P1")], "c", "b", "general", "helpsteer")]
    assert s.filtered == {"tie": 1, "single_response": 1}


# -- generic ---------------------------------------------------------------------------------------
def test_generic_custom_columns_parquet(tmp_path):
    rows = [{"question": "Q1", "good": "yes", "bad": "no", "uid": "u1", "cat": "code"},
            {"question": [user("Hi"), assistant("Hey"), user("Q2")], "good": "y2", "bad": "n2", "uid": "u2", "cat": "math"}]
    path = tmp_path / "mine.parquet"
    # a list-of-structs column and a string column cannot share one parquet column: write two files
    pq.write_table(pa.Table.from_pylist(rows[:1]), path)
    path2 = write_jsonl(tmp_path / "mine.jsonl", rows[1:])
    opts = dict(prompt_column="question", chosen_column="good", rejected_column="bad", id_column="uid",
                domain_column="cat")
    got = [canon(p) for f in (path, path2) for p in load_source("generic", f, **opts)]
    assert got == [("generic:u1", [user("Q1")], "yes", "no", "code", "generic"),
                   ("generic:u2", [user("Hi"), assistant("Hey"), user("Q2")], "y2", "n2", "math", "generic")]
    with pytest.raises(DataError, match="no option"):
        load_source("generic", path, prompt_col="x")


def test_identical_responses_are_filtered_not_invalid(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"prompt": "p", "chosen": "same ", "rejected": "same"}])
    s = SourceSummary("generic")
    assert list(load_source("generic", path, summary=s)) == []
    assert s.filtered == {"identical_responses": 1} and s.skipped_invalid == 0
