"""Benchmark loaders on the shipped samples (counts recomputed with plain json) and on
hand-made malformed / alternative-format data."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from megatron_brrm.evaluation.benchmarks import load_benchmark, select_items
from megatron_brrm.evaluation.orders import presentations, seeded_swap
from megatron_brrm.data.schema import DataError


def test_rewardbench_sample_rows_and_subsets(all_comparisons, samples_dir):
    rows = [json.loads(line) for line in (samples_dir / "rewardbench" / "filtered_sample.jsonl").open()]
    data = all_comparisons["rewardbench"]
    assert len(data.comparisons) == len(rows)
    assert Counter(c.meta["subset"] for c in data.comparisons) == Counter(r["subset"] for r in rows)
    assert data.missing == []  # all 23 subsets present in samples/
    first = data.comparisons[0]
    assert first.context == [{"role": "user", "content": rows[0]["prompt"]}]
    assert (first.chosen, first.rejected) == (rows[0]["chosen"], rows[0]["rejected"])
    assert data.subsampled  # 184 of 2985 rows


def test_rmbench_nine_comparisons_per_item_and_missing_math(all_comparisons, samples_dir):
    data = all_comparisons["rmbench"]
    items = {f: json.loads((samples_dir / "rmbench" / f"{f}_filtered.json").read_text())
             for f in ("chat", "code", "safety-refuse", "safety-response")}
    assert len(data.comparisons) == 9 * sum(len(v) for v in items.values())
    assert data.missing == ["math"]
    assert any("'math' is absent" in n for n in data.notes)
    item = items["code"][0]
    comps = [c for c in data.comparisons if c.item_id == f"rmbench:code:{item['id']}"]
    assert len(comps) == 9
    for c in comps:
        i, j = c.meta["chosen_style"], c.meta["rejected_style"]
        assert (c.chosen, c.rejected) == (item["chosen"][i], item["rejected"][j])
        assert c.meta["domain"] == "code"
    assert {c.meta["domain"] for c in data.comparisons if c.meta["domain_file"].startswith("safety")} == {"safety"}


def test_rmb_pairwise_and_bon_expansion(all_comparisons, samples_dir):
    data = all_comparisons["rmb"]
    root = samples_dir / "rmb" / "RMB_dataset"
    n_pairs = sum(len(json.loads(p.read_text())) for p in (root / "Pairwise_set").rglob("*.json"))
    bon = [r for p in (root / "BoN_set").rglob("*.json") for r in json.loads(p.read_text())]
    pair_comps = [c for c in data.comparisons if c.meta["set"] == "pairwise"]
    bon_comps = [c for c in data.comparisons if c.meta["set"] == "bon"]
    assert len(pair_comps) == n_pairs
    assert len(bon_comps) == sum(len(r["loser_list"]) for r in bon)  # one comparison per loser
    assert len({c.item_id for c in bon_comps}) == len(bon)
    big = max(bon, key=lambda r: len(r["loser_list"]))
    mine = [c for c in bon_comps if c.item_id == f"rmb:bon:{big['bon_uid']}"]
    assert [c.rejected for c in mine] == [x["answer"] for x in big["loser_list"]]
    assert all(c.chosen == big["bon_best"]["answer"] for c in mine)
    # multi-turn contexts are kept whole
    multi = [c for c in data.comparisons if len(c.context) > 1]
    assert multi and all(c.context[-1]["role"] == "user" for c in multi)
    assert {m["role"] for c in multi for m in c.context} == {"user", "assistant"}
    assert sorted(data.missing) == ["Pairwise_set/Harmlessness/S11",
                                    "Pairwise_set/Helpfulness/Brainstorming/Idea Development",
                                    "Pairwise_set/Helpfulness/Generation/Creative Writing"]


def test_limit_spreads_over_sections_and_order_ignores_limit(all_comparisons):
    rb = all_comparisons["rewardbench"].comparisons
    picked = select_items(rb, 4)
    assert sorted(c.meta["section"] for c in picked) == ["Chat", "Chat Hard", "Reasoning", "Safety"]
    rmb = select_items(all_comparisons["rmb"].comparisons, 4)
    assert {(c.meta["set"], c.meta["goal"]) for c in rmb} == {("pairwise", "Helpfulness"), ("pairwise", "Harmlessness"),
                                                             ("bon", "Helpfulness"), ("bon", "Harmlessness")}
    rm = select_items(all_comparisons["rmbench"].comparisons, 2)
    assert len(rm) == 18 and len({c.item_id for c in rm}) == 2  # items are never split
    # the order of a comparison is a function of (seed, id) only
    every = [c for d in all_comparisons.values() for c in d.comparisons]
    full = {p.comparison.comparison_id: p.swapped for p in presentations(every, "single", 7)}
    small = presentations(select_items(all_comparisons["rmbench"].comparisons, 3), "single", 7)
    assert all(full[p.comparison.comparison_id] == p.swapped for p in small)
    share = sum(full.values()) / len(full)
    assert 0.4 < share < 0.6, share  # fair coin over 935 comparisons (sd ~1.6%)
    assert [seeded_swap(1, c.comparison_id) for c in every[:64]] != [seeded_swap(2, c.comparison_id) for c in every[:64]]
    both = presentations(every[:3], "both", 7)
    assert [(p.comparison.comparison_id, p.primary) for p in both][:2] == [(every[0].comparison_id, True),
                                                                         (every[0].comparison_id, False)]
    assert both[0].swapped != both[1].swapped and both[0].to_pair().preference == both[0].label


def _copy_samples(samples_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    for name in ("rewardbench", "rmbench", "rmb"):
        shutil.copytree(samples_dir / name, dst / name)
    return dst


def test_malformed_data_errors_name_file_and_key(samples_dir, tmp_path):
    data = _copy_samples(samples_dir, tmp_path)
    rb = data / "rewardbench" / "filtered_sample.jsonl"
    lines = rb.read_text().splitlines()
    row = json.loads(lines[2])
    del row["chosen"]
    lines[2] = json.dumps(row)
    rb.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"filtered_sample\.jsonl:3: missing key\(s\) \['chosen'\]"):
        load_benchmark("rewardbench", data)
    lines[2] = "{not json"
    rb.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"filtered_sample\.jsonl:3: invalid JSON"):
        load_benchmark("rewardbench", data)

    chat = data / "rmbench" / "chat_filtered.json"
    items = json.loads(chat.read_text())
    items[1]["rejected"] = items[1]["rejected"][:2]
    chat.write_text(json.dumps(items))
    with pytest.raises(DataError, match=r"chat_filtered\.json\[1\]: 'rejected' must be a list of 3 strings"):
        load_benchmark("rmbench", data)

    f = data / "rmb" / "RMB_dataset" / "Pairwise_set" / "Harmlessness" / "S1.json"
    recs = json.loads(f.read_text())
    recs[0]["conversation_input"].append({"role": "assistant", "content": "x"})
    f.write_text(json.dumps(recs))
    with pytest.raises(DataError, match=r"S1\.json\[0\]\.conversation_input: the conversation must end with a user turn"):
        load_benchmark("rmb", data)
    with pytest.raises(DataError, match="no RM-Bench data"):
        load_benchmark("rmbench", tmp_path / "nowhere")


def test_parquet_and_combined_rmbench_formats(samples_dir, tmp_path, all_comparisons):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "alt"
    (data / "rewardbench").mkdir(parents=True)
    rows = [json.loads(line) for line in (samples_dir / "rewardbench" / "filtered_sample.jsonl").open()]
    pq.write_table(pa.Table.from_pylist(rows), data / "rewardbench" / "filtered.parquet")
    got = load_benchmark("rewardbench", data).comparisons
    want = all_comparisons["rewardbench"].comparisons
    assert [(c.comparison_id, c.chosen, c.rejected, c.meta["subset"]) for c in got] == \
           [(c.comparison_id, c.chosen, c.rejected, c.meta["subset"]) for c in want]

    (data / "rmbench").mkdir()
    total = []
    for dom in ("chat", "safety-refuse"):
        for item in json.loads((samples_dir / "rmbench" / f"{dom}_filtered.json").read_text()):
            total.append(dict(item, domain=dom))
    (data / "rmbench" / "total_dataset.json").write_text(json.dumps(total))
    combined = load_benchmark("rmbench", data)
    assert len(combined.comparisons) == 9 * len(total)
    assert set(combined.missing) == {"code", "math", "safety-response"}
    per_domain = [c for c in all_comparisons["rmbench"].comparisons if c.meta["domain_file"] in ("chat", "safety-refuse")]
    assert sorted(c.comparison_id for c in combined.comparisons) == sorted(c.comparison_id for c in per_domain)
