"""HF <-> Megatron mapping: transforms and TP splits against an independent construction.

The expected tensors are built here with explicit per-group / per-rank loops from the
rules of docs/design.md §8 (Megatron-Bridge ``QKVMapping``, ``GatedMLPMapping``, column/row
parallel splits), not with the code under test. Every comparison is ``torch.equal``
(bit-exact): the transforms only move elements.
"""
from __future__ import annotations

import pytest
import torch

from megatron_brrm.model.architectures import UnsupportedArchitectureError
from megatron_brrm.model.mapping import (
    MappingError,
    get_mapping,
    global_to_local_layer,
    layer_offset,
    local_to_global_layer,
    padded_vocab_size,
    to_fused_name,
)

# 8 query heads in 4 groups (TP up to 4 keeps whole groups), head_dim 8 != hidden/heads.
CFG = dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"], num_hidden_layers=4, hidden_size=32,
           intermediate_size=48, num_attention_heads=8, num_key_value_heads=4, head_dim=8, vocab_size=100,
           tie_word_embeddings=False)
H, G, D, HID, FFN, V = 8, 4, 8, 32, 48, 100


def _coded(rows, cols, base, dtype=torch.float32):
    """A tensor whose every element is distinct (value = base + flat index), exactly representable."""
    return (torch.arange(rows * cols, dtype=torch.float64) + base).reshape(rows, cols).to(dtype)


def _expected_qkv(q, k, v):
    per = H // G
    rows = []
    for g in range(G):
        for j in range(per):
            head = g * per + j
            rows.append(q[head * D:(head + 1) * D])
        rows.append(k[g * D:(g + 1) * D])
        rows.append(v[g * D:(g + 1) * D])
    return torch.cat(rows, 0)


def _expected_qkv_shard(q, k, v, r, tp):
    per, gpr = H // G, G // tp
    rows = []
    for g in range(r * gpr, (r + 1) * gpr):
        rows += [q[(g * per + j) * D:(g * per + j + 1) * D] for j in range(per)]
        rows += [k[g * D:(g + 1) * D], v[g * D:(g + 1) * D]]
    return torch.cat(rows, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_qkv_interleave_and_split(tp, dtype):
    m = get_mapping(CFG, tp_size=tp)
    name = "decoder.layers.3.self_attention.linear_qkv.weight"
    q, k, v = _coded(H * D, HID, 0, dtype), _coded(G * D, HID, 1e4, dtype), _coded(G * D, HID, 2e4, dtype)
    hf = {"model.layers.3.self_attn.q_proj.weight": q, "model.layers.3.self_attn.k_proj.weight": k,
          "model.layers.3.self_attn.v_proj.weight": v}
    assert m.hf_names_for(name) == list(hf)
    full = m.to_megatron(name, hf)
    assert torch.equal(full, _expected_qkv(q, k, v)) and full.dtype == dtype
    back = m.to_hf(name, full)
    assert list(back) == list(hf) and all(torch.equal(back[n], hf[n]) for n in hf)
    assert m.tp_split_axis(name) == 0
    shards = [m.shard(name, full, r, tp) for r in range(tp)]
    for r, s in enumerate(shards):
        assert torch.equal(s, _expected_qkv_shard(q, k, v, r, tp))
    assert torch.equal(m.gather(name, shards), full)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_gated_fc1_splits_gate_and_up_separately(tp):
    m = get_mapping(CFG, tp_size=tp)
    name = "decoder.layers.0.mlp.linear_fc1.weight"
    gate, up = _coded(FFN, HID, 0), _coded(FFN, HID, 5e4)
    hf = {"model.layers.0.mlp.gate_proj.weight": gate, "model.layers.0.mlp.up_proj.weight": up}
    full = m.to_megatron(name, hf)
    assert torch.equal(full, torch.cat([gate, up]))
    back = m.to_hf(name, full)
    assert all(torch.equal(back[n], hf[n]) for n in hf)
    n = FFN // tp
    shards = [m.shard(name, full, r, tp) for r in range(tp)]
    for r, s in enumerate(shards):
        assert torch.equal(s, torch.cat([gate[r * n:(r + 1) * n], up[r * n:(r + 1) * n]]))
    assert torch.equal(m.gather(name, shards), full)


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("name,hf_name,cols", [
    ("decoder.layers.1.self_attention.linear_proj.weight", "model.layers.1.self_attn.o_proj.weight", H * D),
    ("decoder.layers.2.mlp.linear_fc2.weight", "model.layers.2.mlp.down_proj.weight", FFN),
])
def test_row_parallel_split_by_columns(tp, name, hf_name, cols):
    m = get_mapping(CFG, tp_size=tp)
    w = _coded(HID, cols, 7)
    full = m.to_megatron(name, {hf_name: w})
    assert torch.equal(full, w) and m.tp_split_axis(name) == 1
    assert torch.equal(m.to_hf(name, full)[hf_name], w)
    c = cols // tp
    shards = [m.shard(name, full, r, tp) for r in range(tp)]
    for r, s in enumerate(shards):
        assert torch.equal(s, w[:, r * c:(r + 1) * c])
    assert torch.equal(m.gather(name, shards), full)


def test_padded_vocab_is_tp_independent():
    """Qwen3's 151936 tokens pad to 149 * 1024 = 152576 rows for every TP in {1, 2, 4, 8} (a checkpoint
    moves between those TP sizes); TP=3 pads to a multiple of 128 * 24 = 3072 (50 * 3072 = 153600)."""
    assert {padded_vocab_size(151936, 128, tp) for tp in (1, 2, 4, 8)} == {152576}
    assert padded_vocab_size(151936, 128, 3) == 153600
    assert padded_vocab_size(1024, 128, 2) == 1024
    with pytest.raises(ValueError, match="tp_size=0"):
        padded_vocab_size(100, 128, 0)


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("name,hf_name", [("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
                                          ("output_layer.weight", "lm_head.weight")])
def test_vocab_rows_padded_and_split(tp, name, hf_name):
    m = get_mapping(CFG, tp_size=tp, make_vocab_size_divisible_by=8)
    padded = -(-V // (8 * 8)) * (8 * 8)  # next multiple of 8 * lcm(TP, 8) = 64 for TP in {1, 2, 4}, by hand
    assert m.padded_vocab_size == padded == padded_vocab_size(V, 8, tp)
    w = _coded(V, HID, 3)
    full = m.to_megatron(name, {hf_name: w})
    assert full.shape == (padded, HID)
    assert torch.equal(full[:V], w) and torch.count_nonzero(full[V:]) == 0
    assert torch.equal(m.to_hf(name, full)[hf_name], w)
    rows = padded // tp
    shards = [m.shard(name, full, r, tp) for r in range(tp)]
    for r, s in enumerate(shards):
        assert torch.equal(s, full[r * rows:(r + 1) * rows])
    assert torch.equal(m.gather(name, shards), full)


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("name,hf_name,size", [
    ("decoder.layers.0.input_layernorm.weight", "model.layers.0.input_layernorm.weight", HID),
    ("decoder.layers.0.self_attention.linear_qkv.layer_norm_weight", "model.layers.0.input_layernorm.weight", HID),
    ("decoder.layers.1.pre_mlp_layernorm.weight", "model.layers.1.post_attention_layernorm.weight", HID),
    ("decoder.layers.1.mlp.linear_fc1.layer_norm_weight", "model.layers.1.post_attention_layernorm.weight", HID),
    ("decoder.layers.2.self_attention.q_layernorm.weight", "model.layers.2.self_attn.q_norm.weight", D),
    ("decoder.layers.2.self_attention.k_layernorm.weight", "model.layers.2.self_attn.k_norm.weight", D),
    ("decoder.final_layernorm.weight", "model.norm.weight", HID),
])
def test_norms_replicated(tp, name, hf_name, size):
    m = get_mapping(CFG, tp_size=tp)
    w = torch.randn(size)
    assert m.hf_names_for(name) == [hf_name] and m.tp_split_axis(name) is None
    full = m.to_megatron(name, {hf_name: w})
    assert torch.equal(full, w) and torch.equal(m.to_hf(name, full)[hf_name], w)
    shards = [m.shard(name, full, r, tp) for r in range(tp)]
    assert all(torch.equal(s, w) for s in shards) and torch.equal(m.gather(name, shards), w)


def test_names_cover_every_hf_tensor_once():
    m = get_mapping(CFG)
    names = m.megatron_param_names(4)
    assert len(names) == 3 + 4 * 8  # embedding, final norm, output + 8 tensors per Qwen3 layer
    assert names[0] == "embedding.word_embeddings.weight" and names[-1] == "output_layer.weight"
    hf = m.hf_param_names()
    assert len(hf) == len(set(hf)) == 3 + 4 * 11  # q,k,v,o,q_norm,k_norm,2 norms,gate,up,down
    for h in hf:
        mg, pos = m.megatron_name_for_hf(h)
        assert m.hf_names_for(mg)[pos] == h
        assert m.to_megatron(mg, {n: torch.zeros(m.hf_shape(n)) for n in m.hf_names_for(mg)}).shape == m.full_shape(mg)
    fused = get_mapping(CFG, fused_norms=True).megatron_param_names()
    assert "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight" in fused
    assert "decoder.layers.0.mlp.linear_fc1.layer_norm_weight" in fused
    assert not any("input_layernorm" in n or "pre_mlp_layernorm" in n for n in fused)
    assert to_fused_name("module.decoder.layers.3.input_layernorm.weight") == \
        "module.decoder.layers.3.self_attention.linear_qkv.layer_norm_weight"


def test_tied_and_llama_names():
    tied = get_mapping({**CFG, "tie_word_embeddings": True})
    assert "output_layer.weight" not in tied.megatron_param_names()
    assert "lm_head.weight" not in tied.hf_param_names()
    # the last PP stage's copy of a tied output layer is loaded from the embedding, never exported
    assert tied.hf_names_for("output_layer.weight") == ["model.embed_tokens.weight"]
    assert tied.to_hf("output_layer.weight", torch.zeros(tied.full_shape("output_layer.weight"))) == {}
    llama = get_mapping({**CFG, "model_type": "llama"})
    assert not any("q_layernorm" in n or "k_layernorm" in n for n in llama.megatron_param_names())
    with pytest.raises(MappingError, match="q_layernorm"):
        llama.hf_names_for("decoder.layers.0.self_attention.q_layernorm.weight")


def test_bad_input_errors_name_the_tensor():
    m = get_mapping(CFG)
    with pytest.raises(MappingError, match="model.layers.0.self_attn.k_proj.weight"):
        m.to_megatron("decoder.layers.0.self_attention.linear_qkv.weight", {
            "model.layers.0.self_attn.q_proj.weight": torch.zeros(H * D, HID),
            "model.layers.0.self_attn.k_proj.weight": torch.zeros(G * D + 1, HID),
            "model.layers.0.self_attn.v_proj.weight": torch.zeros(G * D, HID)})
    with pytest.raises(MappingError, match="missing HF tensor"):
        m.to_megatron("decoder.final_layernorm.weight", {})
    with pytest.raises(MappingError, match="layer 9"):
        m.kind("decoder.layers.9.mlp.linear_fc2.weight")
    with pytest.raises(MappingError, match="not a qwen3 Megatron parameter"):
        m.kind("decoder.layers.0.mlp.router.weight")
    with pytest.raises(MappingError, match="query groups"):
        get_mapping({**CFG, "num_key_value_heads": 2, "num_attention_heads": 4}).shard(
            "decoder.layers.0.self_attention.linear_qkv.weight", torch.zeros(8 * D, HID), 0, 4)
    with pytest.raises(UnsupportedArchitectureError, match=r"mistral.*supported model types: qwen3 \(Qwen3ForCausalLM\), llama"):
        get_mapping({**CFG, "model_type": "mistral", "architectures": ["MistralForCausalLM"]})


@pytest.mark.parametrize("pp,vpp,num_layers", [(2, None, 4), (4, None, 8), (2, 2, 8), (4, 2, 16)])
def test_layer_offsets_match_megatron(pp, vpp, num_layers):
    """Our even-split offsets equal Megatron-Core's own ``get_transformer_layer_offset``."""
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    cfg = TransformerConfig(num_layers=num_layers, hidden_size=8, num_attention_heads=2,
                            pipeline_model_parallel_size=pp, virtual_pipeline_model_parallel_size=vpp,
                            pipeline_dtype=torch.float32)
    per_chunk = num_layers // (pp * (vpp or 1))
    seen = []
    for r in range(pp):
        for v in range(vpp or 1):
            vs = v if vpp else None
            ref = get_transformer_layer_offset(cfg, vp_stage=vs, pp_rank=r)
            assert layer_offset(r, pp, num_layers, vs, vpp) == ref
            for local in range(per_chunk):
                g = local_to_global_layer(f"module.decoder.layers.{local}.mlp.linear_fc1.weight", r, pp, num_layers, vs, vpp)
                assert g == f"decoder.layers.{ref + local}.mlp.linear_fc1.weight"
                assert global_to_local_layer(g, pp, num_layers, vpp) == (r, vs, f"decoder.layers.{local}.mlp.linear_fc1.weight")
                seen.append(ref + local)
    assert sorted(seen) == list(range(num_layers))
    assert global_to_local_layer("embedding.word_embeddings.weight", pp, num_layers, vpp)[:2] == (0, 0 if vpp else None)
    assert global_to_local_layer("output_layer.weight", pp, num_layers, vpp)[:2] == (pp - 1, vpp - 1 if vpp else None)
