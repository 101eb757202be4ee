"""The converters refuse mismatches with a message naming the tensor, and never leave half outputs.

HF-side checks run before any process group exists, so they are tested in this process;
Megatron-side checks need the meta model (a world of one), so they run in one spawned rank
that first converts the tiny Qwen3 and then feeds the broken variants to the exporter.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from convert_ranks import run_jobs
from megatron_brrm.checkpoint.dcp_io import DistCheckpointError, resolve_checkpoint_dir
from megatron_brrm.checkpoint.model_ckpt import ConversionError, convert_hf_to_megatron
from megatron_brrm.model.architectures import UnsupportedArchitectureError
from megatron_brrm.parallel.launch import run_on_ranks

ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _variant(src: Path, dst: Path, drop=None, add=None, config=None) -> Path:
    """Copy an HF folder, removing/adding tensors or overriding config.json keys."""
    shutil.copytree(src, dst)
    if drop or add:
        weights = load_file(dst / "model.safetensors")
        for name in drop or ():
            del weights[name]
        weights.update(add or {})
        save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    if config:
        cfg = json.loads((dst / "config.json").read_text())
        cfg.update(config)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_hf_missing_tensor_is_named(tmp_path, tiny_qwen3_dir):
    bad = _variant(tiny_qwen3_dir, tmp_path / "hf", drop=["model.layers.1.mlp.up_proj.weight"])
    with pytest.raises(ConversionError, match=r"lacks tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        convert_hf_to_megatron(bad, tmp_path / "mg")
    assert not (tmp_path / "mg").exists()


def test_hf_unexpected_tensor_is_named(tmp_path, tiny_qwen3_dir):
    bad = _variant(tiny_qwen3_dir, tmp_path / "hf", add={"model.layers.2.mlp.up_proj.weight": torch.zeros(128, 64)})
    with pytest.raises(ConversionError, match=r"unexpected tensor 'model\.layers\.2\.mlp\.up_proj\.weight'"):
        convert_hf_to_megatron(bad, tmp_path / "mg")


def test_hf_wrong_vocab_names_embedding(tmp_path, tiny_qwen3_dir):
    bad = _variant(tiny_qwen3_dir, tmp_path / "hf", config={"vocab_size": 4096})
    with pytest.raises(ConversionError, match=r"vocab mismatch: HF tensor 'model\.embed_tokens\.weight' has 2048 rows"):
        convert_hf_to_megatron(bad, tmp_path / "mg")


def test_hf_wrong_architecture(tmp_path, tiny_qwen3_dir):
    """A Llama config over Qwen3 weights: the q/k norms are unexpected; an unknown type is refused."""
    llama = _variant(tiny_qwen3_dir, tmp_path / "llama", config={"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    with pytest.raises(ConversionError, match=r"unexpected tensor 'model\.layers\.0\.self_attn\.k_norm\.weight'"):
        convert_hf_to_megatron(llama, tmp_path / "mg")
    mistral = _variant(tiny_qwen3_dir, tmp_path / "mistral", config={"model_type": "mistral"})
    with pytest.raises(UnsupportedArchitectureError, match="model_type='mistral'"):
        convert_hf_to_megatron(mistral, tmp_path / "mg")


def test_bad_layout_for_config(tmp_path, tiny_qwen3_dir):
    with pytest.raises(ConversionError, match="--tp 4 does not divide num_key_value_heads=2"):
        convert_hf_to_megatron(tiny_qwen3_dir, tmp_path / "mg", tp=4)
    with pytest.raises(ConversionError, match="--pp 3 does not divide num_hidden_layers=2"):
        convert_hf_to_megatron(tiny_qwen3_dir, tmp_path / "mg", pp=3)


def test_existing_output_is_kept(tmp_path, tiny_qwen3_dir):
    (tmp_path / "mg").mkdir()
    (tmp_path / "mg" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_hf_to_megatron(tiny_qwen3_dir, tmp_path / "mg")
    assert (tmp_path / "mg" / "keep.txt").read_text() == "x"


def test_checkpoint_folder_resolution(tmp_path):
    """Training save_dir (``latest`` pointer), the pointer file itself, Megatron-LM run folders; clear errors."""
    def ckpt(path: Path) -> Path:
        path.mkdir(parents=True)
        (path / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')
        return path

    step = ckpt(tmp_path / "run" / "step_00000002")
    (tmp_path / "run" / "latest").write_text("step_00000002\n")
    assert resolve_checkpoint_dir(tmp_path / "run") == step == resolve_checkpoint_dir(tmp_path / "run" / "latest")
    assert resolve_checkpoint_dir(step) == step
    it = ckpt(tmp_path / "mlm" / "iter_0000100")
    (tmp_path / "mlm" / "latest_checkpointed_iteration.txt").write_text("100")
    assert resolve_checkpoint_dir(tmp_path / "mlm") == it
    (tmp_path / "run" / "latest").write_text("step_00000003")
    with pytest.raises(DistCheckpointError, match="names 'step_00000003', which is not a finished"):
        resolve_checkpoint_dir(tmp_path / "run")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / ".metadata").write_bytes(b"")
    with pytest.raises(DistCheckpointError, match="the save did not finish"):
        resolve_checkpoint_dir(tmp_path / "half")
    with pytest.raises(DistCheckpointError, match="checkpoints found inside: iter_0000100"):
        (tmp_path / "mlm" / "latest_checkpointed_iteration.txt").unlink()
        resolve_checkpoint_dir(tmp_path / "mlm")


@pytest.mark.multiprocess
def test_megatron_side_mismatches_and_interruptions(tmp_path, tiny_qwen3_dir):
    """Export refuses config/checkpoint mismatches naming the tensor; crashes mid-write leave nothing."""
    ref_vocab = _variant(tiny_qwen3_dir, tmp_path / "ref_vocab4096", config={"vocab_size": 4096})
    ref_llama = _variant(tiny_qwen3_dir, tmp_path / "ref_llama",
                         config={"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    ref_tied = _variant(tiny_qwen3_dir, tmp_path / "ref_tied", config={"tie_word_embeddings": True})
    ck, bare, hole = str(tmp_path / "mg"), str(tmp_path / "mg_bare"), str(tmp_path / "mg_hole")
    out = lambda name: str(tmp_path / "out" / name)  # noqa: E731
    (tmp_path / "out").mkdir()
    (tmp_path / "empty").mkdir()
    jobs = [
        {"op": "hf2mg", "kwargs": {"hf_path": str(tiny_qwen3_dir), "megatron_path": ck}},
        {"op": "copy_ckpt", "src": ck, "dst": bare, "drop_hf": True},
        {"op": "copy_ckpt", "src": ck, "dst": hole, "drop_key": "decoder.layers.mlp.linear_fc2.weight"},
        # 3: reference config disagrees with the config stored at conversion
        {"op": "mg2hf", "kwargs": {"megatron_path": ck, "hf_path": out("a"), "hf_reference": str(ref_vocab)}},
        # 4: same, checkpoint without a stored config (as a training checkpoint): the tensor is named
        {"op": "mg2hf", "kwargs": {"megatron_path": bare, "hf_path": out("b"), "hf_reference": str(ref_vocab)}},
        # 5: wrong architecture
        {"op": "mg2hf", "kwargs": {"megatron_path": bare, "hf_path": out("c"), "hf_reference": str(ref_llama)}},
        # 6: tied config for an untied checkpoint
        {"op": "mg2hf", "kwargs": {"megatron_path": bare, "hf_path": out("d"), "hf_reference": str(ref_tied)}},
        # 7: a tensor missing from the checkpoint
        {"op": "mg2hf", "kwargs": {"megatron_path": hole, "hf_path": out("e")}},
        # 8: no config anywhere
        {"op": "mg2hf", "kwargs": {"megatron_path": bare, "hf_path": out("f")}},
        # 9: not a checkpoint
        {"op": "mg2hf", "kwargs": {"megatron_path": str(tmp_path / "empty"), "hf_path": out("g")}},
        # 10, 11: simulated crashes in the middle of writing, both directions
        {"op": "hf2mg", "kwargs": {"hf_path": str(tiny_qwen3_dir), "megatron_path": out("h")}, "fault_after": 6,
         "target": out("h")},
        {"op": "mg2hf", "kwargs": {"megatron_path": ck, "hf_path": out("i"), "max_shard_bytes": 300_000},
         "fault_after": 6, "target": out("i")},
        # 12: the CLI reports a conversion error with exit status 1
        {"op": "cli_mg2hf", "argv": ["--megatron-path", hole, "--hf-path", out("j"), "--no-progress"]},
    ]
    res = run_on_ranks(run_jobs, 1, args=(jobs,), timeout_s=240, env=ENV)[0]
    status = "\n".join(f"{i}: ok={r['ok']} {r['error']}" for i, r in enumerate(res))
    assert [r["ok"] for r in res[:3]] == [True] * 3, status
    assert not any(r["ok"] for r in res[3:12]), status
    assert "vocab_size=4096" in res[3]["error"] and "vocab_size=2048" in res[3]["error"]
    assert "vocab mismatch: checkpoint tensor 'embedding.word_embeddings.weight' has 2048 rows" in res[4]["error"]
    assert "unexpected tensor 'decoder.layers.self_attention.k_layernorm.weight'" in res[5]["error"]
    assert "LlamaForCausalLM" in res[5]["error"]
    assert "unexpected tensor 'output_layer.weight'" in res[6]["error"]
    assert "lacks tensor 'decoder.layers.mlp.linear_fc2.weight'" in res[7]["error"]
    assert "--hf-reference" in res[8]["error"]
    assert res[9]["type"] == "DistCheckpointError" and "metadata.json" in res[9]["error"]
    for r in res[10:12]:
        assert r["error"] == "simulated crash mid-write", r
        assert r["exists"] is False and r["leftovers"] == [], r
    assert res[12]["ok"] and res[12]["rc"] == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []
