"""The four BR-RM sources, on hand-written rows in their documented schemas (SOURCES.md 4-5;
BR-RM ``dataset/preprocess_data.py`` rules), with the expected pairs written by hand."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from megatron_brrm.data import DataError, SourceSummary, load_source
from megatron_brrm.data.adapters.brrm_sources import hf_shuffle_indices

from .helpers import assistant, canon, expected_first, user, write_jsonl


def _hs3(pref, ctx=None, domain="stem"):
    return {"domain": domain, "language": "english", "context": ctx or [user("What is 2+2?")],
            "response1": "It is 4.", "response2": "It is 5.", "overall_preference": pref,
            "individual_preference": [{"score": pref, "reasoning": "r"}]}


def test_helpsteer3_ties_labels_context_domain(tmp_path):
    multi = [user("Hi"), assistant("Hello! How can I help?"), user("What is 2+2?")]
    path = write_jsonl(tmp_path / "train.jsonl", [_hs3(-2), _hs3(0), _hs3(3, multi, "general"), _hs3(1)])
    s = SourceSummary("helpsteer3")
    got = [canon(p) for p in load_source("helpsteer3", path, summary=s)]
    assert got == [
        ("helpsteer3:train:1", [user("What is 2+2?")], "It is 4.", "It is 5.", "stem", "helpsteer3"),
        ("helpsteer3:train:3", multi, "It is 5.", "It is 4.", "general", "helpsteer3"),
        ("helpsteer3:train:4", [user("What is 2+2?")], "It is 5.", "It is 4.", "stem", "helpsteer3"),
    ]
    assert s.filtered == {"tie": 1} and s.rows_read == 4 and s.pairs == 3 and s.skipped_invalid == 0


def test_helpsteer3_bad_label_names_file_line_field(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [_hs3(-1), _hs3(7)])
    with pytest.raises(DataError, match=r"train\.jsonl:2: .*'overall_preference'.*7"):
        list(load_source("helpsteer3", path))


def _sky(source, chosen_last="Paris.", rejected_last="Lyon.", prefix=None):
    prefix = prefix or [user("Capital of France?")]
    return {"chosen": prefix + [assistant(chosen_last)], "rejected": prefix + [assistant(rejected_last)],
            "source": source}


def test_skywork_drops_magpie_ultra_and_splits_last_turn(tmp_path):
    multi = [user("Hi"), assistant("Hello."), user("Capital of France?")]
    rows = [_sky("magpie_ultra"), _sky("offsetbias"), _sky("helpsteer2", prefix=multi), _sky("wildguard", "No.", "Sure.")]
    # parquet, as the dataset ships on the Hub
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    s = SourceSummary("skywork80k")
    got = [canon(p) for p in load_source("skywork80k", path, summary=s)]
    assert got == [
        ("skywork80k:train:2", [user("Capital of France?")], "Paris.", "Lyon.", "general", "skywork80k"),
        ("skywork80k:train:3", multi, "Paris.", "Lyon.", "general", "skywork80k"),
        ("skywork80k:train:4", [user("Capital of France?")], "No.", "Sure.", "safety", "skywork80k"),
    ]
    assert s.filtered == {"source=magpie_ultra": 1}


def test_skywork_diverging_prefix_is_invalid(tmp_path):
    row = _sky("offsetbias")
    row["rejected"][0] = user("Capital of Spain?")
    path = write_jsonl(tmp_path / "sky.jsonl", [row])
    with pytest.raises(DataError, match=r"sky\.jsonl:1: .*differ before their last turn"):
        list(load_source("skywork80k", path))


def test_code_preference_original_schema_input_is_user_turn(tmp_path):
    instr = "You are an AI-Coding assistant. User will you give you a task."
    rows = [{"instruction": instr, "input": f"Write f{i}", "accepted": f"def f{i}(): return {i}",
             "rejected": f"def f{i}(): return -{i}", "ID": f"id-{i}"} for i in range(3)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    got = sorted(canon(p) for p in load_source("code_preference_pairs", path, subset_size=None))
    assert got == [(f"code_preference_pairs:id-{i}", [user(f"Write f{i}")], f"def f{i}(): return {i}",
                    f"def f{i}(): return -{i}", "code", "code_preference_pairs") for i in range(3)]
    with_sys = next(iter(load_source("code_preference_pairs", path, subset_size=None, instruction_as_system=True)))
    assert with_sys.context == [{"role": "system", "content": instr}, user("Write f0")]


def test_code_preference_reduced_schema(tmp_path):
    rows = [{"prompt": "You are an AI-Coding assistant.", "chosen": "good code", "rejected": "bad code"}]
    path = write_jsonl(tmp_path / "code_preference_eval.jsonl", rows)
    got = [canon(p) for p in load_source("code_preference_pairs", path)]
    assert got == [("code_preference_pairs:code_preference_eval#1", [user("You are an AI-Coding assistant.")],
                    "good code", "bad code", "code", "code_preference_pairs")]


def test_code_preference_subset_matches_hf_datasets_shuffle(tmp_path):
    """The 8K subset = first rows of HF ``Dataset.shuffle(seed=42)``; checked against ``datasets`` itself."""
    import datasets

    n, k = 50, 8
    ref = datasets.Dataset.from_dict({"i": list(range(n))}).shuffle(seed=42)["i"][:k]
    assert hf_shuffle_indices(n, 42)[:k] == ref
    rows = [{"input": f"task {i}", "accepted": f"a{i}", "rejected": f"r{i}", "ID": str(i), "instruction": "x"}
            for i in range(n)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    s = SourceSummary("code_preference_pairs")
    got = [p.id for p in load_source("code_preference_pairs", path, subset_size=k, subset_seed=42, summary=s)]
    assert got == [f"code_preference_pairs:{i}" for i in ref]
    assert s.filtered == {"outside_subset": n - k}


def test_math_step_dpo_prefix_plus_full(tmp_path):
    row = {"dataset": "MATH", "prompt": "Compute 3*4+1.", "initial_reason_steps": "Step 1: 3*4 = 12.\n",
           "chosen": "Step 2: 12+1 = 13.", "rejected": "Step 2: 12+1 = 14.",
           "full_chosen": "Step 2: 12+1 = 13.\nThe answer is 13.", "full_rejected": "Step 2: 12+1 = 14.\nThe answer is 14.",
           "answer": "13"}
    path = write_jsonl(tmp_path / "train.jsonl", [row])
    got = [canon(p) for p in load_source("math_step_dpo", path)]
    assert got == [("math_step_dpo:train:1", [user("Compute 3*4+1.")],
                    "Step 1: 3*4 = 12.\nStep 2: 12+1 = 13.\nThe answer is 13.",
                    "Step 1: 3*4 = 12.\nStep 2: 12+1 = 14.\nThe answer is 14.", "math", "math_step_dpo")]


def test_math_step_dpo_missing_field(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "p", "initial_reason_steps": "", "full_chosen": "a"}])
    with pytest.raises(DataError, match=r"train\.jsonl:1: missing field 'full_rejected'"):
        list(load_source("math_step_dpo", path))


def test_placement_follows_the_documented_rule(tmp_path):
    rows = [_hs3(-1 if i % 2 else 1) for i in range(40)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    for seed in (0, 42):
        for p in load_source("helpsteer3", path, seed=seed):
            # row i (1-based line i+1): odd i -> pref -1 -> response1 "It is 4." better
            line = int(p.id.rsplit(":", 1)[1])
            chosen = "It is 4." if (line - 1) % 2 else "It is 5."
            assert (p.response1 == chosen) == expected_first(seed, p.id)
            assert p.preference == (1 if expected_first(seed, p.id) else 2)


def test_skywork_exclude_sources_option(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [_sky("magpie_ultra"), _sky("offsetbias"), _sky("wildguard")])
    s = SourceSummary("skywork80k")
    got = [p.id for p in load_source("skywork80k", path, exclude_sources="offsetbias,wildguard", summary=s)]
    assert got == ["skywork80k:s:1"] and s.filtered == {"source=offsetbias": 1, "source=wildguard": 1}
