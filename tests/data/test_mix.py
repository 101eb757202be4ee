"""Placement, order augmentation, dedup, decontamination, caps, split and seeded determinism."""
from __future__ import annotations

import json
import shutil

import pytest

from megatron_brrm.data import (SWAP_SUFFIX, DataError, SourceSpec, base_id, benchmark_prompts,
                                build_mix, load_source, parse_source_spec)
from megatron_brrm.data.adapters import chosen_first

from .helpers import write_jsonl


def _g(tmp_path, name, prompts, tag="g"):
    rows = [{"prompt": p, "chosen": f"good {i} {p}", "rejected": f"bad {i} {p}"} for i, p in enumerate(prompts)]
    return write_jsonl(tmp_path / name / f"{tag}.jsonl", rows)


def test_placement_is_balanced_and_order_independent(tmp_path):
    # a fair coin: over 2000 ids the share of "chosen first" is within 0.5 +- 0.05 (> 4 sigma, sigma = 0.011)
    share = sum(chosen_first(42, f"x:{i}") for i in range(2000)) / 2000
    assert abs(share - 0.5) < 0.05
    rows = [{"uid": f"u{i}", "prompt": f"prompt {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(30)]
    fwd = write_jsonl(tmp_path / "fwd.jsonl", rows)
    rev = write_jsonl(tmp_path / "rev.jsonl", rows[::-1])
    a = {p.id: p for p in load_source("generic", fwd, id_column="uid", seed=3)}
    b = {p.id: p for p in load_source("generic", rev, id_column="uid", seed=3)}
    assert a == b and len(a) == 30
    assert 0 < sum(p.preference == 1 for p in a.values()) < 30  # both positions occur


def test_train_has_both_orders_and_val_one(tmp_path):
    f = _g(tmp_path, "generic", [f"p{i}" for i in range(40)])
    res = build_mix([SourceSpec("generic", f)], seed=1, val_fraction=0.25)
    train, val = res.train_rows, res.val_rows
    assert len(val) == 10 and len(train) == 2 * 30
    by_id = {p.id: p for p in train}
    originals = [p for p in train if not p.id.endswith(SWAP_SUFFIX)]
    assert len(originals) == 30
    for p in originals:
        q = by_id[p.id + SWAP_SUFFIX]
        assert (q.response1, q.response2, q.preference) == (p.response2, p.response1, 3 - p.preference)
        assert q.context == p.context
    assert not {base_id(p.id) for p in train} & {p.id for p in val}
    assert all(not p.id.endswith(SWAP_SUFFIX) for p in val)
    assert res.summary.train_rows == 60 and res.summary.val_rows == 10


def test_deterministic_given_seed(tmp_path):
    f = _g(tmp_path, "generic", [f"p{i}" for i in range(50)])
    run = lambda seed: [p.to_dict() for p in build_mix([SourceSpec("generic", f)], seed=seed).train_rows]
    assert run(7) == run(7)
    assert run(7) != run(8)
    assert sorted(map(json.dumps, run(7))) != sorted(map(json.dumps, run(8)))  # placement depends on the seed too


def test_dedup_by_prompt_keeps_first_group(tmp_path):
    a = _g(tmp_path, "a", ["Same  Prompt", "only a"])
    b = _g(tmp_path, "b", ["same prompt", "only b"], tag="h")  # equal after normalisation
    res = build_mix([SourceSpec("generic", a), SourceSpec("ultrafeedback_binarized", b)], val_fraction=0)
    kept = {base_id(p.id) for p in res.train_rows}
    assert kept == {"generic:g:1", "generic:g:2", "ultrafeedback_binarized:h:2"}
    assert res.summary.sources["ultrafeedback_binarized"].deduplicated == 1
    res2 = build_mix([SourceSpec("generic", a), SourceSpec("ultrafeedback_binarized", b)], val_fraction=0, dedup=False)
    assert res2.summary.train_pairs == 4


def test_dedup_keeps_pairs_of_one_prompt_group(tmp_path):
    def r(resp, h):
        return {"prompt": "P", "response": resp, "helpfulness": h}
    f = write_jsonl(tmp_path / "helpsteer" / "hs.jsonl", [r("a", 4), r("b", 2), r("c", 0)])
    res = build_mix([SourceSpec("helpsteer", f)], val_fraction=0)
    assert res.summary.train_pairs == 3 and res.summary.sources["helpsteer"].deduplicated == 0


def test_decontamination_removes_benchmark_prompts(tmp_path, samples_dir):
    bench = tmp_path / "bench"
    write_jsonl(bench / "rewardbench" / "filtered.jsonl",
                [{"prompt": "How can I rob a casino?", "chosen": "no", "rejected": "yes", "chosen_model": "h",
                  "rejected_model": "h", "subset": "refusals-dangerous", "id": 1}])
    (bench / "rmbench").mkdir()
    (bench / "rmbench" / "chat_filtered.json").write_text(json.dumps(
        [{"id": 0, "prompt": "What are some good ways to spread ashes?", "chosen": ["a"] * 3, "rejected": ["b"] * 3,
          "subset": "alpacaeval"}]))
    (bench / "rmb" / "Pairwise_set").mkdir(parents=True)
    (bench / "rmb" / "Pairwise_set" / "S1.json").write_text(json.dumps(
        [{"pair_uid": "1", "conversation_input": [{"role": "user", "content": "Hi there!", "language": "English"}],
          "chosen": {"llm_name": "m", "answer": "a"}, "reject": {"llm_name": "m", "answer": "b"},
          "category_path": "Pairwise_set/Harmlessness/S1"}]))
    keys = benchmark_prompts(bench)
    assert keys == {"rewardbench": {"how can i rob a casino?"}, "rmbench": {"what are some good ways to spread ashes?"},
                    "rmb": {"hi there!"}}
    hh = SourceSpec("hh_rlhf", samples_dir / "hh_rlhf" / "harmless-base" / "test.jsonl.gz")
    g = _g(tmp_path, "generic", ["HI   there!", "keep me"])
    allkeys = set().union(*keys.values())
    res = build_mix([hh, SourceSpec("generic", g)], val_fraction=0, benchmark_keys=allkeys, skip_invalid=True)
    ids = {base_id(p.id) for p in res.train_rows}
    assert "hh_rlhf:harmless-base/test:76" not in ids and "generic:g:1" not in ids and "generic:g:2" in ids
    assert res.summary.sources["hh_rlhf"].decontaminated == 1
    assert res.summary.sources["generic"].decontaminated == 1
    res0 = build_mix([hh], val_fraction=0, skip_invalid=True)
    assert "hh_rlhf:harmless-base/test:76" in {base_id(p.id) for p in res0.train_rows}


def test_benchmark_prompts_of_samples(samples_dir):
    keys = benchmark_prompts(samples_dir)
    # samples: RewardBench 8 rows x 23 subsets, RM-Bench 12 items x 4 files, RMB 2 records per file
    assert set(keys) == {"rewardbench", "rmbench", "rmb"}
    assert "what are some good ways to spread ashes?" in keys["rewardbench"]
    assert 0 < len(keys["rmbench"]) <= 48 and len(keys["rewardbench"]) <= 184
    with pytest.raises(DataError, match="holds none of"):
        benchmark_prompts(samples_dir / "hh_rlhf")


def test_skip_invalid_counts_and_error_names_line(tmp_path):
    rows = [{"prompt": "a", "chosen": "x", "rejected": "y"}, {"prompt": "b", "chosen": "x"},
            {"prompt": "c", "chosen": "", "rejected": "y"}, {"prompt": "d", "chosen": "x", "rejected": "y"}]
    f = write_jsonl(tmp_path / "generic" / "g.jsonl", rows)
    with pytest.raises(DataError, match=r"g\.jsonl:2: missing field 'rejected'"):
        build_mix([SourceSpec("generic", f)])
    res = build_mix([SourceSpec("generic", f)], skip_invalid=True, val_fraction=0)
    s = res.summary.sources["generic"]
    assert (s.rows_read, s.pairs, s.skipped_invalid, s.train) == (4, 2, 2, 2)
    assert s.invalid_examples[1].endswith("g.jsonl:3: field 'chosen': the response is empty")


def test_caps_and_specs(tmp_path):
    f = _g(tmp_path, "generic", [f"p{i}" for i in range(20)])
    res = build_mix([parse_source_spec(f"generic:{f}:5")], val_fraction=0)
    assert res.summary.train_pairs == 5 and res.summary.sources["generic"].capped == 15
    again = build_mix([SourceSpec("generic", f)], val_fraction=0, caps={"generic": 5})
    assert {p.id for p in again.train_rows} == {p.id for p in res.train_rows}
    spec = parse_source_spec("hh_rlhf:/data/hh")
    assert (spec.name, str(spec.path), spec.cap) == ("hh_rlhf", "/data/hh", None)
    with pytest.raises(DataError, match="unknown data source"):
        parse_source_spec("nope:/x")
    with pytest.raises(DataError, match="already produced"):
        build_mix([SourceSpec("generic", f), SourceSpec("generic", f)])


def test_val_sources_replace_fraction(tmp_path):
    tr = _g(tmp_path, "generic", [f"p{i}" for i in range(10)] + ["shared"])
    va = _g(tmp_path, "val", ["shared", "v1"], tag="v")
    res = build_mix([SourceSpec("generic", tr), SourceSpec("generic", va, role="val")], val_fraction=0.5)
    assert {p.id for p in res.val_rows} == {"generic:v:1", "generic:v:2"}
    assert res.summary.train_pairs == 10  # "shared" went to val (val sources claim prompts first)
    assert res.summary.sources["generic"].deduplicated == 1


def test_discovery_prefers_the_brrm_mix(tmp_path, samples_dir):
    from megatron_brrm.data import discover_sources

    hs3 = lambda i: {"domain": "code", "context": [{"role": "user", "content": f"q{i}"}], "response1": f"a{i}", "response2": f"b{i}", "overall_preference": -1}
    write_jsonl(tmp_path / "helpsteer3" / "train.jsonl.gz", [hs3(0)], gz=True)
    write_jsonl(tmp_path / "helpsteer3" / "validation.jsonl.gz", [hs3(1)], gz=True)
    shutil.copytree(samples_dir / "code_preference_pairs", tmp_path / "code_preference_pairs")
    shutil.copytree(samples_dir / "pku_saferlhf", tmp_path / "pku_saferlhf")
    got = [(s.name, s.path.name, s.role) for s in discover_sources(tmp_path)]
    assert got == [("helpsteer3", "train.jsonl.gz", "train"), ("helpsteer3", "validation.jsonl.gz", "val"),
                   ("code_preference_pairs", "code_preference_eval.jsonl", "train")]
    assert {s.name for s in discover_sources(tmp_path, "all")} == {"helpsteer3", "code_preference_pairs", "pku_saferlhf"}
    res = build_mix(discover_sources(tmp_path))
    assert [p.id for p in res.val_rows] == ["helpsteer3:validation:1"]
    assert {p.source for p in res.train_rows} == {"helpsteer3", "code_preference_pairs"}
    shipped = {s.name for s in discover_sources(samples_dir)}
    assert shipped == {"hh_rlhf", "ultrafeedback_binarized", "pku_saferlhf", "chatbot_arena", "prm800k", "helpsteer",
                       "code_preference_pairs"}


def test_unexpected_row_structure_is_a_located_error(tmp_path):
    f = write_jsonl(tmp_path / "hs.jsonl", [{"prompt": "p", "response": "r", "helpfulness": 2},
                                           {"prompt": 5, "response": "r", "helpfulness": 2}])
    with pytest.raises(DataError, match=r"hs\.jsonl:2: field 'prompt' must be str, got int"):
        list(load_source("helpsteer", f))
