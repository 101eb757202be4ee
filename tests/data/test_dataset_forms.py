"""The shared dataset form (megatron_brrm/data/sets.py): every layout of NeMo-RL / verl / this project
loads into the same pairs, named validation sets, hub names with splits, custom classes by path,
and one-line errors naming the file / key / field."""
from __future__ import annotations

import json

import pytest

from bt_forms import CUSTOM_FILE, canon, write_binary, write_helpsteer3_nested, write_nemo_rl, write_verl_parquet
from megatron_brrm.config import DataConfig
from megatron_brrm.data import DataError
from megatron_brrm.data.sets import dataset_specs, load_pairs, load_preference_data

TRIPLES = [
    ([{"role": "user", "content": "Name a prime."}], "7 is prime.", "9 is prime."),
    ([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
      {"role": "user", "content": "And 3+3?"}], "6", "7"),
    ([{"role": "user", "content": "Capital of France?"}], "Paris.", "Lyon."),
]


def _cfg(**kw) -> DataConfig:
    cfg = DataConfig()
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture
def files(tmp_path):
    return {"nemo_rl": write_nemo_rl(tmp_path / "nemo.jsonl", TRIPLES),
            "binary": write_binary(tmp_path / "binary.jsonl", TRIPLES),
            "verl": write_verl_parquet(tmp_path / "verl.parquet", TRIPLES),
            "helpsteer3_nested": write_helpsteer3_nested(tmp_path / "hs3.jsonl", TRIPLES)}


def test_every_form_loads_the_same_pairs(files):
    cfg = _cfg(train_data_path=str(files["nemo_rl"]), prompt_key="question", chosen_key="good", rejected_key="bad",
               val_data_paths={"bin": {"path": str(files["binary"]), "format": "BinaryPreferenceDataset"},
                               "verl": {"path": str(files["verl"]), "chosen_key": "chosen", "rejected_key": "rejected"},
                               "hs3": str(files["helpsteer3_nested"])})
    data = load_preference_data(cfg)
    assert list(data.validation) == ["bin", "verl", "hs3"]
    assert [canon(p) for p in data.train] == TRIPLES  # NeMo-RL: rank 0 wins though listed second
    assert [canon(p) for p in data.validation["verl"]] == TRIPLES  # shared turns -> context
    assert [canon(p) for p in data.validation["hs3"]] == TRIPLES  # is_preferred decides, either position
    single_turn = [(c[-1:], a, b) for c, a, b in TRIPLES]  # the binary form carries the user text only
    assert [(p.context[-1:], *canon(p)[1:]) for p in data.validation["bin"]] == single_turn
    assert data.train[0].id == "nemo_rl:nemo:1" and data.validation["bin"][0].source == "binary"
    # auto-detection picks the same layouts
    for fmt, path in files.items():
        spec = dataset_specs(_cfg(train_data_path=str(path), prompt_key="question", chosen_key="good",
                                  rejected_key="bad") if fmt == "binary" else _cfg(train_data_path=str(path)))[0]
        assert [canon(p)[1:] for p in load_pairs(spec)] == [t[1:] for t in TRIPLES], fmt


def test_nemo_rl_ranks_ties_and_more_completions(tmp_path):
    rows = [{"context": "q", "completions": [{"rank": 2, "completion": "worst"}, {"rank": 0, "completion": "best"},
                                              {"rank": 1, "completion": [{"role": "assistant", "content": "mid"}]}]},
            {"context": [{"role": "user", "content": "q2"}], "completions": [{"rank": 0, "completion": "a"},
                                                                             {"rank": 0, "completion": "b"}]}]
    path = tmp_path / "n.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = dataset_specs(_cfg(train_data_path=str(path), format="PreferenceDataset"))[0]
    from megatron_brrm.data.summary import SourceSummary

    summary = SourceSummary("train")
    pairs = load_pairs(spec, summary=summary)
    assert [canon(p)[1:] for p in pairs] == [("best", "mid"), ("best", "worst")]
    assert [p.id for p in pairs] == ["nemo_rl:n:1#0", "nemo_rl:n:1#1"] and summary.filtered["tie"] == 1


def test_verl_transcripts_folder_split_and_hub(tmp_path, monkeypatch):
    folder = tmp_path / "ds"
    folder.mkdir()
    row = {"chosen": "\n\nHuman: hi\n\nAssistant: hello there", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
    (folder / "train-00000.jsonl").write_text(json.dumps(row) + "\n")
    (folder / "validation.jsonl").write_text(json.dumps({**row, "chosen": row["chosen"] + "!"}) + "\n")
    train = load_pairs(dataset_specs(_cfg(train_data_path=str(folder), train_split="train"))[0])
    assert [canon(p) for p in train] == [([{"role": "user", "content": "hi"}], "hello there", "go away")]
    val = load_preference_data(_cfg(train_data_path=str(folder), train_split="train",
                                    val_data_paths={"v": {"path": str(folder), "split": "validation"}})).validation["v"]
    assert canon(val[0])[1] == "hello there!"
    # a hub name: read with datasets.load_dataset(name, subset, split=...); no download here
    import datasets

    calls = []

    def fake_load(name, subset=None, split=None):
        calls.append((name, subset, split))
        return datasets.Dataset.from_list([{"prompt": "p", "chosen": "c", "rejected": "r"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    hub = load_pairs(dataset_specs(_cfg(train_data_path="org/prefs", train_split="train", subset="en"))[0])
    assert calls == [("org/prefs", "en", "train")] and canon(hub[0]) == ([{"role": "user", "content": "p"}], "c", "r")
    with pytest.raises(DataError, match=r"data.train_data_path=org/prefs: .*set the split"):
        load_pairs(dataset_specs(_cfg(train_data_path="org/prefs"))[0])


def test_custom_class_by_path_and_its_contract():
    cfg = _cfg(custom_cls=type(DataConfig().custom_cls)(path=str(CUSTOM_FILE), name="MarkerPairs",
                                                         kwargs={"num_pairs": 5}),
               val_data_paths={"heldout": {"split": "val"}})
    data = load_preference_data(cfg)
    assert len(data.train) == 5 and len(data.validation["heldout"]) == 5
    for p in data.train + data.validation["heldout"]:
        assert "correct" in canon(p)[1].split() and "correct" not in canon(p)[2].split()
    assert data.train[0].id == "custom:MarkerPairs:synthetic_marker:train:0"
    bad = _cfg(custom_cls=type(cfg.custom_cls)(path=str(CUSTOM_FILE), name="MissingRejected"))
    with pytest.raises(DataError, match=r"bt_custom_dataset.py:MissingRejected record 1: missing field 'rejected'"):
        load_preference_data(bad)
    with pytest.raises(DataError, match=r"data.custom_cls.name=Nope: .* defines no class 'Nope' \(classes there: "
                                        r"\['MarkerPairs', 'MissingRejected'\]\)"):
        load_preference_data(_cfg(custom_cls=type(cfg.custom_cls)(path=str(CUSTOM_FILE), name="Nope")))
    with pytest.raises(DataError, match=r"data.custom_cls.path=/no/such.py: no such file"):
        load_preference_data(_cfg(custom_cls=type(cfg.custom_cls)(path="/no/such.py", name="X")))


def test_errors_name_the_key_file_and_field(tmp_path, files):
    with pytest.raises(DataError, match=r"data.format: unknown format 'parquetish'"):
        dataset_specs(_cfg(format="parquetish", train_data_path="x"))
    with pytest.raises(DataError, match=r"data.val_data_paths.v: unknown key\(s\) \['pth'\]"):
        dataset_specs(_cfg(val_data_paths={"v": {"pth": "x"}}))
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(DataError, match=r"odd.jsonl:1: cannot tell the data format .*\['answer', 'question'\]"):
        load_pairs(dataset_specs(_cfg(train_data_path=str(odd)))[0])
    broken = tmp_path / "broken.jsonl"
    broken.write_text(files["helpsteer3_nested"].read_text().replace('"is_preferred', '"is_prefered', 1) + "\n"
                      + json.dumps({"input": "[]", "output": "[]"}) + "\n")
    spec = dataset_specs(_cfg(train_data_path=str(broken)))[0]
    with pytest.raises(DataError, match=r"broken.jsonl:5: field 'input' is an empty list"):
        load_pairs(spec)  # row 1: neither candidate preferred and no scores -> a tie, filtered (not an error)
    with pytest.raises(DataError, match="no training data"):
        load_preference_data(_cfg())
