"""HF -> Megatron -> HF conversion is exact, through real TP=2 x PP=2 models and a TP=1 reload.

Chain (each arrow a separate process group, as users run it):

1. ``tools/convert_hf_to_megatron.py --tp 2 --pp 2`` (Qwen3; library call for tied Qwen3,
   Llama, and a 4-layer Llama with vocab 2100, which Megatron pads to 2304 rows at TP=2)
   writes torch_dist checkpoints from the HF folders.
2. 4 ranks build TP=2 x PP=2 Megatron models, ``dist_checkpointing.load`` each checkpoint
   (parameters pre-filled with NaN, so every value must come from the file), compute logits
   with Megatron's forward-only pipeline schedule, and ``dist_checkpointing.save`` the models
   again: checkpoints *written by a TP=2 x PP=2 layout*.
3. ``tools/convert_megatron_to_hf.py`` exports those to HF; the exported Qwen3 is converted
   back (TP=1) and loaded into a TP=1 model for logits.

Reference for exactness: the original HF tensors (every tensor ``torch.equal``) and
``transformers``' own forward of the original folder (logits ``torch.equal``: same weights,
same code). TP=2 x PP=2 vs TP=1 Megatron logits differ only by fp32 summation order (the
row-parallel layers add two partial matmuls with an all-reduce, so they are not bit-equal),
hence a 1e-6 bound (measured max |diff| 2.7e-7 on logits of magnitude <= 0.7, i.e. a few
fp32 ulps).
"""
from __future__ import annotations

import json
import time

import pytest
import torch

from convert_ranks import load_save_layout, run_jobs
from megatron_brrm.checkpoint.hf_io import HFSafetensorsReader
from megatron_brrm.config import load_config
from megatron_brrm.parallel.launch import run_on_ranks

ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
ARCHS = ("qwen3", "qwen3_tied", "llama", "llama_padded")


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_qwen3_dir, tiny_qwen3_tied_dir, tiny_llama_dir, tiny_llama4_padded_dir):
    """Run the whole chain once; return paths, logits and timings."""
    root = tmp_path_factory.mktemp("convert")
    src = {"qwen3": tiny_qwen3_dir, "qwen3_tied": tiny_qwen3_tied_dir, "llama": tiny_llama_dir,
           "llama_padded": tiny_llama4_padded_dir}
    ids = torch.randint(0, 2048, (2, 12), generator=torch.Generator().manual_seed(0))
    times = {}

    t = time.perf_counter()
    jobs = [{"op": "cli_hf2mg", "argv": ["--hf-path", str(src["qwen3"]), "--megatron-path", str(root / "mg_qwen3"),
                                         "--tp", "2", "--pp", "2", "--no-progress"]}]
    jobs += [{"op": "hf2mg", "kwargs": {"hf_path": str(src[a]), "megatron_path": str(root / f"mg_{a}"), "tp": 2, "pp": 2}}
             for a in ARCHS[1:]]
    res = run_on_ranks(run_jobs, 1, args=(jobs,), timeout_s=240, env=ENV)[0]
    assert all(r["ok"] for r in res), res
    assert res[0]["rc"] == 0
    times["hf_to_megatron_s"] = time.perf_counter() - t

    t = time.perf_counter()
    cases = [{"hf_dir": str(src[a]), "ckpt": str(root / f"mg_{a}"), "save_to": str(root / f"mg_{a}_tp2pp2"), "ids": ids}
             for a in ARCHS]
    per_rank = run_on_ranks(load_save_layout, 4, args=(cases, 2, 2), timeout_s=300, env=ENV)
    # Rank 2 = (PP stage 1, TP rank 0) with Megatron's default order (tp-cp-ep-dp-pp).
    logits_tp2pp2 = next(outs for outs in per_rank if outs[0] is not None)
    times["tp2pp2_load_save_s"] = time.perf_counter() - t

    t = time.perf_counter()
    jobs = [{"op": "cli_mg2hf", "argv": ["--megatron-path", str(root / "mg_qwen3_tp2pp2"), "--hf-path",
                                         str(root / "hf_qwen3"), "--hf-reference", str(src["qwen3"]),
                                         "--max-shard-size", "300KB", "--no-progress"]}]
    jobs += [{"op": "mg2hf", "kwargs": {"megatron_path": str(root / f"mg_{a}_tp2pp2"), "hf_path": str(root / f"hf_{a}"),
                                        "hf_reference": str(src[a])}} for a in ARCHS[1:]]
    jobs += [{"op": "hf2mg", "kwargs": {"hf_path": str(root / "hf_qwen3"), "megatron_path": str(root / "mg_qwen3_tp1")}},
             {"op": "tp1_logits", "hf_dir": str(root / "hf_qwen3"), "ckpt": str(root / "mg_qwen3_tp1"), "ids": ids}]
    res = run_on_ranks(run_jobs, 1, args=(jobs,), timeout_s=240, env=ENV)[0]
    assert all(r["ok"] for r in res), res
    assert res[0]["rc"] == 0
    times["megatron_to_hf_and_tp1_s"] = time.perf_counter() - t
    print("conversion chain timings:", json.dumps({k: round(v, 1) for k, v in times.items()}))
    return {"root": root, "src": src, "ids": ids, "logits_tp2pp2": [torch.from_numpy(x) for x in logits_tp2pp2],
            "logits_tp1": torch.from_numpy(res[-1]["logits"])}


@pytest.mark.multiprocess
@pytest.mark.parametrize("arch", ARCHS)
def test_hf_megatron_tp2pp2_hf_is_bit_exact(chain, arch):
    """Every HF tensor survives HF -> torch_dist -> TP2xPP2 load/save -> HF bit for bit."""
    original = HFSafetensorsReader(chain["src"][arch])
    exported = HFSafetensorsReader(chain["root"] / f"hf_{arch}")
    assert exported.names() == original.names()
    for name in original.names():
        a, b = original.get_tensor(name), exported.get_tensor(name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    if arch == "qwen3_tied":
        assert "lm_head.weight" not in exported.names()
        cfg = json.loads((chain["root"] / "hf_qwen3_tied" / "config.json").read_text())
        assert cfg["tie_word_embeddings"] is True


@pytest.mark.multiprocess
def test_converter_outputs_layout(chain):
    """The Megatron folder carries a valid run config + HF config; the HF folder is sharded with an index."""
    mg = chain["root"] / "mg_qwen3"
    cfg = load_config(mg / "run_config.yaml")
    assert (cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size) == (2, 2)
    assert cfg.model.megatron_path == str(mg) and (mg / "hf" / "config.json").is_file()
    assert (mg / "hf" / "tokenizer.json").is_file() and (mg / "hf" / "chat_template.jinja").is_file()
    hf = chain["root"] / "hf_qwen3"
    index = json.loads((hf / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert index["metadata"]["total_size"] == HFSafetensorsReader(chain["src"]["qwen3"]).total_bytes
    config = json.loads((hf / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["dtype"] == "float32"
    assert not list(chain["root"].glob(".*tmp*"))  # no temporary folders left behind


@pytest.mark.multiprocess
def test_vocab_padding_rows(chain):
    """Vocab 2100 converted for TP=2 is stored with 3072 padded rows (zeros; 128 * lcm(2, 8) = 1024 divides 3072), exported as 2100."""
    from megatron_brrm.checkpoint.dcp_io import read_tensor_metadata

    meta = read_tensor_metadata(chain["root"] / "mg_llama_padded")
    assert meta["embedding.word_embeddings.weight"][0] == (3072, 64)
    assert meta["output_layer.weight"][0] == (3072, 64)
    assert meta["decoder.layers.mlp.linear_fc1.weight"][0] == (4, 256, 64)  # [layers, gate + up, hidden]
    exported = HFSafetensorsReader(chain["root"] / "hf_llama_padded")
    assert exported.info("model.embed_tokens.weight").shape == (2100, 64)


@pytest.mark.multiprocess
def test_tp2pp2_logits_equal_tp1_after_export(chain):
    """Logits at TP=2 x PP=2 equal those of TP=1 after export to HF and re-import (fp32 order only)."""
    a, b = chain["logits_tp2pp2"][0], chain["logits_tp1"]
    assert a.shape == b.shape == (2, 12, 2048)
    diff = (a - b).abs().max().item()
    print(f"TP2xPP2 vs TP1 logits: max |diff| = {diff:.3e}, max |logit| = {a.abs().max().item():.3f}")
    assert diff <= 1e-6


@pytest.mark.multiprocess
def test_exported_folder_loads_in_transformers(chain):
    """AutoModelForCausalLM / AutoTokenizer load the export; logits equal the original model's exactly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exported = chain["root"] / "hf_qwen3"
    tok = AutoTokenizer.from_pretrained(exported)
    text = tok.apply_chat_template([{"role": "user", "content": "Which response is better?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.startswith("<|im_start|>user") and text.endswith("<|im_start|>assistant\n")
    ids = torch.tensor([tok(text)["input_ids"]])
    ref = AutoModelForCausalLM.from_pretrained(chain["src"]["qwen3"], dtype=torch.float32).eval()
    out = AutoModelForCausalLM.from_pretrained(exported).eval()
    assert out.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(ref(ids).logits, out(ids).logits)
        # and Megatron's TP=2 x PP=2 logits agree with transformers on the same tokens
        meg = chain["logits_tp2pp2"][0]
        hf = ref(chain["ids"]).logits
    diff = (meg - hf).abs().max().item()
    print(f"Megatron TP2xPP2 vs transformers logits: max |diff| = {diff:.3e}")
    assert diff <= 1e-4  # docs/design.md §8 parity bound (different kernels, fp32)
