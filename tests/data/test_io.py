"""JSONL io: per-line error reporting, atomic writes, and the generic raw reader's formats."""
from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from megatron_brrm.data import DataError, PreferencePair, iter_records, read_pairs, write_pairs

from .helpers import user


def _pair(i, pref=1):
    return PreferencePair(id=f"t:{i}", context=[user(f"q{i}")], response1=f"a{i}", response2=f"b{i}",
                          preference=pref, domain="general", source="t")


def test_write_then_read_roundtrip(tmp_path):
    pairs = [_pair(0), _pair(1, 2)]
    path = tmp_path / "out" / "pairs.jsonl"
    assert write_pairs(path, pairs) == 2
    assert read_pairs(path) == pairs
    assert sorted(p.name for p in path.parent.iterdir()) == ["pairs.jsonl"]  # no temp file left behind


def test_write_is_atomic_on_invalid_pair(tmp_path):
    path = tmp_path / "pairs.jsonl"
    write_pairs(path, [_pair(0)])
    bad = _pair(1)
    bad.response2 = "   "
    with pytest.raises(DataError, match="response2"):
        write_pairs(path, [_pair(2), bad])
    assert read_pairs(path) == [_pair(0)]  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"]


@pytest.mark.parametrize("line, message", [
    ('{"id": "t:1", "context": [{"role": "user", "content": "q"}], "response1": "a", "preference": 1}',
     "missing field(s) ['response2']"),
    ('{"id": "t:1", "context": [{"role": "user", "content": "q"}], "response1": "a", "response2": "b", "preference": 3}',
     "'preference' must be 1 or 2"),
    ('{"id": "t:1", "context": [{"role": "assistant", "content": "q"}], "response1": "a", "response2": "b", "preference": 1}',
     "must end with a user turn"),
    ('{"id": "t:1", "context": [], "response1": "a"', "invalid JSON"),
])
def test_read_pairs_reports_file_and_line(tmp_path, line, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(_pair(0).to_dict()) + "\n\n" + line + "\n")
    with pytest.raises(DataError) as err:
        read_pairs(path)
    assert str(err.value).startswith(f"{path}:3: ") and message in str(err.value)


def test_iter_records_formats(tmp_path):
    rows = [{"a": 1}, {"a": 2}]
    (tmp_path / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "x.json").write_text(json.dumps(rows, indent=2))
    (tmp_path / "y.json").write_text("".join(json.dumps(r) + "\n" for r in rows))  # JSONL named .json
    with gzip.open(tmp_path / "x.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    with gzip.open(tmp_path / "x.json.gz", "wt") as f:
        f.write(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "x.parquet")
    for name, wheres in [("x.jsonl", ["1", "2"]), ("x.json", ["row 1", "row 2"]), ("y.json", ["1", "2"]),
                         ("x.jsonl.gz", ["1", "2"]), ("x.json.gz", ["row 1", "row 2"]),
                         ("x.parquet", ["row 1", "row 2"])]:
        recs = list(iter_records(tmp_path / name))
        assert [r.value for r in recs] == rows, name
        assert [r.where for r in recs] == [f"{tmp_path / name}:{w}" for w in wheres], name


def test_iter_records_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        list(iter_records(tmp_path / "missing.jsonl"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown data file type"):
        list(iter_records(tmp_path / "x.csv"))
    (tmp_path / "bad.json").write_text('[{"a": 1},\n {"a": ]')
    with pytest.raises(DataError, match=r"bad\.json:2:\d+: invalid JSON"):
        list(iter_records(tmp_path / "bad.json"))
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
    recs = list(iter_records(tmp_path / "bad.jsonl"))
    assert recs[0].error is None and recs[1].error.startswith("invalid JSON") and recs[1].index == 2
