"""write_shard_into_hf: every TP rank's shard written in place rebuilds the HF tensors bit for bit.

Reference: the mapping registry's own ``to_megatron`` / ``shard`` round trip (proven against
transformers by the converter tests). Starting from random HF tensors ``x``, each rank's shard
is ``mapping.shard(name, mapping.to_megatron(name, x), r, tp)``; writing all ranks' shards into
zeroed buffers must give back ``x`` exactly (``torch.equal``: pure element copies, so the
tolerance is zero). Random normal values are never 0, so an element no rank wrote is caught.
"""
import pytest
import torch

from megatron_brrm.model.mapping import MappingError, get_mapping
from megatron_brrm.model.shard_layout import shard_pieces, write_shard_into_hf


def _config(arch: str, vocab: int, tied: bool = False) -> dict:
    return {"model_type": arch, "num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 48,
            "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 8 if arch == "qwen3" else 4,
            "vocab_size": vocab, "tie_word_embeddings": tied}


def _roundtrip(mapping, tp: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(tp)
    original = {n: torch.randn(mapping.hf_shape(n), generator=g).to(dtype) for n in mapping.hf_param_names()}
    rebuilt = {n: torch.zeros_like(t) for n, t in original.items()}
    written = {n: 0 for n in original}
    kinds = set()
    for name in mapping.megatron_param_names():
        kinds.add(mapping.kind(name))
        full = mapping.to_megatron(name, original)
        for r in range(tp):
            shard = mapping.shard(name, full, r, tp)
            for n, count in write_shard_into_hf(mapping, name, shard, r, tp, rebuilt).items():
                written[n] += count
    return original, rebuilt, written, kinds


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("vocab,divisible_by", [(1000, 128), (100, 64)], ids=["pad-last-rank", "pad-whole-ranks"])
def test_all_ranks_rebuild_hf_tensors(arch, tp, vocab, divisible_by):
    mapping = get_mapping(_config(arch, vocab), make_vocab_size_divisible_by=divisible_by, tp_size=tp)
    assert mapping.padded_vocab_size > vocab  # padding rows exist and must be dropped
    original, rebuilt, written, kinds = _roundtrip(mapping, tp)
    assert kinds == {"replicated", "row", "vocab", "qkv", "gated"}
    for n, t in original.items():
        assert torch.equal(rebuilt[n], t), n
        assert written[n] == t.numel(), n  # each element written exactly once (replicated: by rank 0 only)


def test_bf16_tied_and_fused_norm_names():
    mapping = get_mapping(_config("qwen3", 1000, tied=True), tp_size=2, fused_norms=True)
    assert "lm_head.weight" not in mapping.hf_param_names()
    original, rebuilt, written, _ = _roundtrip(mapping, 2, torch.bfloat16)
    assert all(torch.equal(rebuilt[n], t) and written[n] == t.numel() for n, t in original.items())
    shard = torch.ones(mapping.shard_shape("output_layer.weight", 2))
    emb = torch.zeros(mapping.hf_shape("model.embed_tokens.weight"))
    assert write_shard_into_hf(mapping, "output_layer.weight", shard, 0, 2, {"model.embed_tokens.weight": emb}) == {}
    assert not emb.any()  # the tied output layer never overwrites the embedding


def test_partial_views_write_only_present_names():
    mapping = get_mapping(_config("llama", 1000), tp_size=2)
    name = "decoder.layers.1.self_attention.linear_qkv.weight"
    q, k, v = mapping.hf_names_for(name)
    g = torch.Generator().manual_seed(0)
    hf = {n: torch.randn(mapping.hf_shape(n), generator=g) for n in (q, k, v)}
    full = mapping.to_megatron(name, hf)
    k_buf = torch.zeros_like(hf[k])
    for r in range(2):
        assert set(write_shard_into_hf(mapping, name, mapping.shard(name, full, r, 2), r, 2, {k: k_buf})) == {k}
    assert torch.equal(k_buf, hf[k])


def test_bad_shapes_and_ranks_raise():
    mapping = get_mapping(_config("qwen3", 1000), tp_size=2)
    name = "decoder.layers.0.mlp.linear_fc2.weight"
    hf_name = mapping.hf_names_for(name)[0]
    view = torch.zeros(mapping.hf_shape(hf_name))
    with pytest.raises(MappingError, match="linear_fc2.*TP rank 0 of 2.*does not match"):
        write_shard_into_hf(mapping, name, torch.zeros(mapping.full_shape(name)), 0, 2, {hf_name: view})
    with pytest.raises(MappingError, match="down_proj.*does not match"):
        write_shard_into_hf(mapping, name, torch.zeros(mapping.shard_shape(name, 2)), 0, 2, {hf_name: view[:, :4]})
    with pytest.raises(MappingError, match="tp_rank=2"):
        write_shard_into_hf(mapping, name, torch.zeros(mapping.shard_shape(name, 2)), 2, 2, {hf_name: view})


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("vocab,divisible_by", [(1000, 128), (100, 64)], ids=["pad-last-rank", "pad-whole-ranks"])
def test_shard_pieces_are_row_blocks_of_the_reference(tp, vocab, divisible_by):
    """Each piece of a shard (shard_pieces) is, element for element, a block of rows of one HF
    tensor, checked against the registry's own to_megatron / shard (not against write_shard_into_hf),
    and the pieces of all ranks cover every HF row exactly once. Expected: every kind but ``row``
    at TP > 1 (None: a column slice), q/k/v one piece each per query group, gate and up one each,
    a replicated tensor only on rank 0, no padding rows, nothing for a tied output layer."""
    mapping = get_mapping(_config("qwen3", vocab), make_vocab_size_divisible_by=divisible_by, tp_size=tp)
    g = torch.Generator().manual_seed(5)
    original = {n: torch.randn(mapping.hf_shape(n), generator=g) for n in mapping.hf_param_names()}
    covered = {n: torch.zeros(t.shape[0], dtype=torch.int64) for n, t in original.items()}
    for name in mapping.megatron_param_names():
        kind = mapping.kind(name)
        full = mapping.to_megatron(name, original)
        for r in range(tp):
            shard = mapping.shard(name, full, r, tp)
            pieces = shard_pieces(mapping, name, r, tp)
            if kind == "row" and tp > 1:
                assert pieces is None, name
                continue
            expected = {"qkv": 3 * mapping.num_query_groups // tp, "gated": 2, "replicated": int(r == 0)}.get(kind, 1)
            if kind == "vocab" and r * shard.shape[0] >= vocab:
                expected = 0  # a rank holding padding rows only
            assert len(pieces) == expected, (name, r)
            for piece in pieces:
                src, dst = piece.of_shard(shard), piece.of_hf(original[piece.hf_name])
                assert src.is_contiguous() and dst.is_contiguous()
                assert torch.equal(src, dst), (name, r, piece)
                covered[piece.hf_name][piece.dst[0]:piece.dst[1]] += 1
    for n in original:
        column_split = tp > 1 and mapping.kind(mapping.megatron_name_for_hf(n)[0]) == "row"
        assert bool((covered[n] == (0 if column_split else 1)).all()), n
    tied = get_mapping(_config("qwen3", 1024, tied=True), tp_size=1)
    assert shard_pieces(tied, "output_layer.weight", 0, 1) == []
    with pytest.raises(MappingError, match="tp_rank=2"):
        shard_pieces(mapping, "decoder.final_layernorm.weight", 2, 2)
