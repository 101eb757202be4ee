"""FP8 rollouts: the block-FP8 weight format (hand-computed), the quantising worker load, and the
vLLM engine's FP8 start-up driven through a fake vLLM (no GPU here; the real engine is a row of
tools/gpu_check.py)."""
from __future__ import annotations

import dataclasses
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from megatron_brrm.rollout import vllm_engine as V
from megatron_brrm.rollout.fp8 import (dequantize_fp8_blockwise, is_fp8_linear, quantize_fp8_blockwise,
                                       quantize_named_weights, scale_name, vllm_fp8_overrides)
from megatron_brrm.rollout.vllm_worker import BRRMWorkerExtension
from megatron_brrm.rollout.weights import hf_checkpoint_manifest


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


def test_worker_quantizes_when_the_engine_is_fp8():
    calls = []
    worker = BRRMWorkerExtension()
    worker.device = torch.device("cpu")
    worker.model_config = SimpleNamespace(quantization="fp8")
    worker.model_runner = SimpleNamespace(model=SimpleNamespace(load_weights=lambda weights: calls.append(list(weights))))
    w = torch.randn(8, 8)
    assert worker.brrm_load_weights([("model.layers.0.mlp.up_proj.weight", w), ("model.norm.weight", torch.ones(8))]) == 2
    got = dict(calls[0])
    assert list(got) == ["model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.up_proj.weight_scale_inv",
                         "model.norm.weight"]
    assert got["model.layers.0.mlp.up_proj.weight"].dtype == torch.float8_e4m3fn
    assert float(got["model.layers.0.mlp.up_proj.weight_scale_inv"]) == pytest.approx(float(w.abs().max()) / 448)


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in ``vllm`` package: ``LLM`` records its arguments and RPCs."""
    made = []

    class LLM:
        def __init__(self, **kwargs):
            self.kwargs, self.rpcs, self.resets = kwargs, [], 0
            made.append(self)

        def get_tokenizer(self):
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(self.kwargs["model"])

        def collective_rpc(self, method, args=()):
            self.rpcs.append((method, args))
            return [True]

        def reset_prefix_cache(self):
            self.resets += 1

    @dataclasses.dataclass
    class EngineArgs:
        logprobs_mode: str = "raw_logprobs"

    vllm = types.ModuleType("vllm")
    vllm.LLM = LLM
    engine = types.ModuleType("vllm.engine")
    arg_utils = types.ModuleType("vllm.engine.arg_utils")
    arg_utils.EngineArgs = EngineArgs
    for name, mod in (("vllm", vllm), ("vllm.engine", engine), ("vllm.engine.arg_utils", arg_utils)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(V, "_import_vllm", lambda: vllm)
    return made


def test_fp8_engine_starts_dummy_and_loads_the_checkpoint_through_the_refit_path(fake_vllm, tiny_qwen3_dir):
    V.VLLMEngine(str(tiny_qwen3_dir), quantization="fp8")
    llm = fake_vllm[0]
    assert llm.kwargs["quantization"] == "fp8" and llm.kwargs["load_format"] == "dummy"
    assert llm.kwargs["hf_overrides"]["quantization_config"]["quant_method"] == "fp8"
    loads = [a[0] for m, a in llm.rpcs if m == "brrm_load_weights"]
    assert sorted(n for bucket in loads for n, _ in bucket) == sorted(hf_checkpoint_manifest(tiny_qwen3_dir))
    assert [m for m, _ in llm.rpcs][-1] == "brrm_finish_weight_update" and llm.resets == 1
    plain = V.VLLMEngine(str(tiny_qwen3_dir))
    assert "quantization" not in fake_vllm[1].kwargs and fake_vllm[1].rpcs == [] and plain.quantization is None
    with pytest.raises(ValueError, match="rollout.quantization='int4'"):
        V.VLLMEngine(str(tiny_qwen3_dir), quantization="int4")
