"""FP8 rollouts: the block-FP8 weight format (hand-computed), the quantising worker load, and the
vLLM engine's FP8 start-up driven through a fake vLLM (no GPU here; the real engine is a row of
tools/gpu_check.py)."""
from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest
import torch

from megatron_brrm.rollout import vllm_engine as V
from megatron_brrm.rollout.fp8 import (dequantize_fp8_blockwise, is_fp8_linear, quantize_fp8_blockwise,
                                       quantize_named_weights, scale_name, vllm_fp8_overrides)
from megatron_brrm.rollout.vllm_worker import BRRMWorkerExtension
from megatron_brrm.checkpoint.hf_io import HFSafetensorsReader


def test_blockwise_quantization_by_hand():
    w = torch.tensor([[1.0, -2.0, 448.0], [0.5, 0.0, 0.0]])
    q, s = quantize_fp8_blockwise(w, block=2)
    # tile (0, 0) = [[1, -2], [0.5, 0]]: amax 2 -> scale 2 / 448; q = w / scale = [[224, -448], [112, 0]]
    # (224 = 1.75 * 2^7, 448 = 1.75 * 2^8, 112 = 1.75 * 2^6: exact in E4M3). Tile (0, 1) = [[448], [0]]:
    # amax 448 -> scale 1. Two tiles along the columns (ceil(3 / 2)), one along the rows.
    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32 and tuple(s.shape) == (1, 2)
    assert torch.equal(s, torch.tensor([[2.0 / 448.0, 1.0]]))
    assert q.float().tolist() == [[224.0, -448.0, 448.0], [112.0, 0.0, 0.0]]
    assert torch.equal(dequantize_fp8_blockwise(q, s, block=2), w)
    # an all-zero tile keeps scale 1
    assert quantize_fp8_blockwise(torch.zeros(3, 3), block=2)[1].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    with pytest.raises(ValueError, match="2-D"):
        quantize_fp8_blockwise(torch.zeros(4))


def test_blockwise_round_trip_error_is_within_e4m3_rounding():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 200, generator=g) * torch.logspace(-3, 1, 200)  # columns of very different size
    q, s = quantize_fp8_blockwise(w.to(torch.bfloat16))
    assert tuple(q.shape) == (300, 200) and tuple(s.shape) == (3, 2)  # ceil(300/128), ceil(200/128)
    # E4M3 has 3 mantissa bits: round-to-nearest errs by <= 2^-4 relative in the normal range and by
    # <= half the smallest subnormal step (2^-9 / 2 = 2^-10) times the scale below it
    scale = s.repeat_interleave(128, 0).repeat_interleave(128, 1)[:300, :200]
    err = (dequantize_fp8_blockwise(q, s) - w.to(torch.bfloat16).float()).abs()
    assert bool((err <= w.to(torch.bfloat16).float().abs() / 16 + scale * 2 ** -10 + 1e-12).all())


def test_named_weights_get_scales_and_others_pass_through():
    names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
             "model.layers.0.self_attn.q_norm.weight", "model.layers.3.mlp.down_proj.weight", "lm_head.weight"]
    assert [is_fp8_linear(n) for n in names] == [False, True, False, True, False]
    out = list(quantize_named_weights([(n, torch.ones(4, 4)) for n in names]))
    assert [n for n, _ in out] == [names[0], names[1], "model.layers.0.self_attn.q_proj.weight_scale_inv", names[2],
                                   names[3], "model.layers.3.mlp.down_proj.weight_scale_inv", names[4]]
    assert out[1][1].dtype == torch.float8_e4m3fn and out[0][1].dtype == torch.float32
    assert scale_name("model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight_scale_inv"
    cfg = vllm_fp8_overrides()
    assert cfg["quantization"] == "fp8" and cfg["load_format"] == "dummy"
    assert cfg["hf_overrides"]["quantization_config"]["weight_block_size"] == [128, 128]


class _Runner:
    """Stands in for vLLM's model runner: records what ``reload_weights`` receives (copies)."""

    def __init__(self):
        self.reloads = []

    def reload_weights(self, weights_iterator, is_checkpoint_format):
        self.reloads.append([(n, t.clone()) for n, t in weights_iterator])

    def get_model(self):
        return SimpleNamespace(packed_modules_mapping={"qkv_proj": ["q_proj", "k_proj", "v_proj"],
                                                       "gate_up_proj": ["gate_proj", "up_proj"]})


def test_worker_quantizes_when_the_engine_is_fp8():
    """A bucket loaded by an FP8 worker reaches vLLM's reload as FP8 GEMM weights plus block scales."""
    from megatron_brrm.rollout.shm import SharedBuffers, layout_entries, map_buffer, pack_bucket, unmap_buffers
    from megatron_brrm.rollout.vllm_worker import entries_to_wire

    worker = BRRMWorkerExtension()
    worker.device = torch.device("cpu")
    worker.model_config = SimpleNamespace(quantization="fp8")
    worker.model_runner = _Runner()
    w = torch.randn(8, 8)
    named = [("model.layers.0.mlp.down_proj.weight", w), ("model.norm.weight", torch.ones(8))]
    entries = layout_entries((n, t.shape, "float32") for n, t in named)
    with SharedBuffers(entries[-1].end, count=1) as files:
        pack_bucket(map_buffer(files.paths[0], entries[-1].end), named, entries)
        worker.brrm_load_bucket({"kind": "shm", "path": files.paths[0], "nbytes": entries[-1].end,
                                 "entries": entries_to_wire(entries)})
    unmap_buffers()
    got = dict(worker.model_runner.reloads[0])
    assert list(got) == ["model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.down_proj.weight_scale_inv",
                         "model.norm.weight"]
    assert got["model.layers.0.mlp.down_proj.weight"].dtype == torch.float8_e4m3fn
    assert float(got["model.layers.0.mlp.down_proj.weight_scale_inv"]) == pytest.approx(float(w.abs().max()) / 448)


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in ``vllm`` package: ``LLM`` records its arguments, and its RPCs run the real worker
    extension on a recording runner (in this process)."""
    made = []

    class LLM:
        def __init__(self, **kwargs):
            self.kwargs, self.rpcs, self.resets = kwargs, [], 0
            self.worker = BRRMWorkerExtension()
            self.worker.device = torch.device("cpu")
            self.worker.model_config = SimpleNamespace(quantization=kwargs.get("quantization"))
            self.worker.model_runner = _Runner()
            made.append(self)

        def get_tokenizer(self):
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(self.kwargs["model"])

        def collective_rpc(self, method, args=()):
            self.rpcs.append((method, args))
            return [getattr(self.worker, method)(*args)]

        def reset_prefix_cache(self):
            self.resets += 1

    vllm = types.ModuleType("vllm")
    vllm.LLM = LLM
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setattr(V, "_import_vllm", lambda: vllm)
    monkeypatch.setattr(V, "vllm_on_cpu", lambda: False)  # the GPU construction path
    return made


def test_fp8_engine_starts_dummy_and_loads_the_checkpoint_through_the_refit_path(fake_vllm, tiny_qwen3_dir):
    V.VLLMEngine(str(tiny_qwen3_dir), quantization="fp8")
    llm = fake_vllm[0]
    assert llm.kwargs["quantization"] == "fp8" and llm.kwargs["load_format"] == "dummy"
    assert llm.kwargs["hf_overrides"]["quantization_config"]["quant_method"] == "fp8"
    loaded = [n for r in llm.worker.model_runner.reloads for n, _ in r]
    manifest = HFSafetensorsReader(tiny_qwen3_dir).shapes()
    assert sorted(n for n in loaded if not n.endswith("_scale_inv")) == sorted(manifest)
    assert sorted(n for n in loaded if n.endswith("_scale_inv")) == sorted(
        scale_name(n) for n in manifest if is_fp8_linear(n))
    plain = V.VLLMEngine(str(tiny_qwen3_dir))
    assert "quantization" not in fake_vllm[1].kwargs and plain.quantization is None
    assert [m for m, _ in fake_vllm[1].rpcs] == ["brrm_packed_modules"]  # no weight load at start-up
    with pytest.raises(ValueError, match="rollout.quantization='int4'"):
        V.VLLMEngine(str(tiny_qwen3_dir), quantization="int4")
