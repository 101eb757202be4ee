"""Streaming safetensors io: the sharded writer's files are what ``safetensors`` itself reads.

Reference: ``safetensors.torch.load_file`` (the library's own parser) and transformers'
``from_pretrained``; tensors are compared with ``torch.equal`` (pure byte copies, so exact).
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_brrm.checkpoint.hf_io import (
    HFCheckpointError,
    HFSafetensorsReader,
    ShardedSafetensorsWriter,
    atomic_output_dir,
    copy_hf_side_files,
    parse_size,
    read_hf_config,
    write_hf_config,
)


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(64, 32, generator=g),
        "b.weight": torch.randn(100, generator=g).to(torch.bfloat16),
        "c.bias": torch.randn(3, 5, 7, generator=g).to(torch.float16),
        "d.index": torch.arange(10, dtype=torch.int64),
        "e.scalar": torch.tensor(2.5),
    }


def test_sharded_writer_roundtrip_any_order(tmp_path):
    ts = _tensors()
    plan = [(n, tuple(t.shape), t.dtype) for n, t in ts.items()]
    with ShardedSafetensorsWriter(tmp_path, plan, max_shard_bytes=4000) as w:
        for name in reversed(list(ts)):  # out of plan order
            w.write(name, ts[name])
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)]
    # "a" (8192 B) exceeds the 4000 B limit and gets its own shard; b, c, d, e (494 B) share the next
    assert [sorted(n for n, f in index["weight_map"].items() if f == name) for name in files] == [
        ["a.weight"], ["b.weight", "c.bias", "d.index", "e.scalar"]]
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in ts.values())
    loaded = {}
    for f in files:
        loaded.update(load_file(tmp_path / f))  # safetensors' own reader validates the layout
    assert set(loaded) == set(ts) and all(torch.equal(loaded[n], ts[n]) and loaded[n].dtype == ts[n].dtype for n in ts)
    reader = HFSafetensorsReader(tmp_path)
    assert reader.names() == sorted(ts) and reader.total_bytes == index["metadata"]["total_size"]
    assert torch.equal(reader.get_tensor("c.bias"), ts["c.bias"]) and reader.info("a.weight").shape == (64, 32)
    assert reader.shapes() == {n: tuple(t.shape) for n, t in ts.items()}
    streamed = list(reader.iter_tensors())  # file by file: a.weight's shard first
    assert [n for n, _ in streamed] == ["a.weight", "b.weight", "c.bias", "d.index", "e.scalar"]
    assert all(torch.equal(t, ts[n]) and t.dtype == ts[n].dtype for n, t in streamed)


def test_single_shard_is_model_safetensors(tmp_path):
    ts = _tensors()
    with ShardedSafetensorsWriter(tmp_path, [(n, t.shape, t.dtype) for n, t in ts.items()]) as w:
        for n, t in ts.items():
            w.write(n, t)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    assert all(torch.equal(v, ts[k]) for k, v in load_file(tmp_path / "model.safetensors").items())


def test_writer_refuses_bad_writes(tmp_path):
    plan = [("x", (2, 3), torch.float32), ("y", (4,), torch.float32)]
    w = ShardedSafetensorsWriter(tmp_path, plan)
    with pytest.raises(HFCheckpointError, match=r"'x': got shape \(3, 2\)"):
        w.write("x", torch.zeros(3, 2))
    with pytest.raises(HFCheckpointError, match=r"'x': got shape \(2, 3\) torch.bfloat16"):
        w.write("x", torch.zeros(2, 3, dtype=torch.bfloat16))
    with pytest.raises(HFCheckpointError, match="unexpected tensor 'z'"):
        w.write("z", torch.zeros(1))
    w.write("x", torch.zeros(2, 3))
    with pytest.raises(HFCheckpointError, match="'x' written twice"):
        w.write("x", torch.zeros(2, 3))
    with pytest.raises(HFCheckpointError, match="tensors never written: y"):
        w.close()


def test_reader_errors_name_file_and_tensor(tmp_path):
    with pytest.raises(HFCheckpointError, match="holds neither model.safetensors"):
        HFSafetensorsReader(tmp_path)
    save_file({"w": torch.zeros(2)}, tmp_path / "model-00001-of-00002.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"w": "model-00001-of-00002.safetensors", "v": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(HFCheckpointError, match="lists shard 'model-00002-of-00002.safetensors', which is missing"):
        HFSafetensorsReader(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"w": "model-00001-of-00002.safetensors", "v": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(HFCheckpointError, match="maps tensor 'v' to model-00001-of-00002.safetensors"):
        HFSafetensorsReader(tmp_path)


def test_atomic_output_dir(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output_dir(target) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # neither target nor the temporary folder
    with atomic_output_dir(target) as tmp:
        (tmp / "f").write_text("1")
    assert (target / "f").read_text() == "1"
    with pytest.raises(FileExistsError, match="--overwrite"):
        with atomic_output_dir(target):
            pass
    with atomic_output_dir(target, overwrite=True) as tmp:
        (tmp / "g").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["g"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_side_files_and_config(tmp_path, tiny_qwen3_dir):
    out = tmp_path / "o"
    out.mkdir()
    copied = copy_hf_side_files(tiny_qwen3_dir, out)
    assert "model.safetensors" not in copied and "config.json" not in copied
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"} <= set(copied)
    cfg = read_hf_config(tiny_qwen3_dir)
    write_hf_config({**cfg, "architectures": None}, out, ["Qwen3ForCausalLM"], torch.bfloat16)
    written = json.loads((out / "config.json").read_text())
    assert written["architectures"] == ["Qwen3ForCausalLM"] and written["dtype"] == "bfloat16"
    assert "torch_dtype" not in written  # the key the source used is kept
    legacy = {k: v for k, v in cfg.items() if k != "dtype"}
    write_hf_config(legacy, out, ["Qwen3ForCausalLM"], torch.float32)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("512MiB") == 512 * 2**20
    assert parse_size("300KB") == 300_000 and parse_size(1000) == 1000 and parse_size("1.5GiB") == 3 * 2**29
    with pytest.raises(ValueError, match="cannot parse size"):
        parse_size("lots")
