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
from megatron_brrm.model.shard_layout import shard_destination, write_shard_into_hf


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


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("vocab,divisible_by", [(1000, 128), (1024, 128)], ids=["padded", "unpadded"])
def test_shard_destination_is_exactly_where_the_shard_is_written(tp, vocab, divisible_by):
    """Where shard_destination names a view, writing the shard (write_shard_into_hf) into zeroed
    HF tensors changes exactly that view's elements, to the shard's values: a receiver may land
    the shard there directly. Expected direct kinds: replicated (TP rank 0), row at TP=1, vocab
    shards without padding rows; never qkv or gated, another dtype, or a tied output layer."""
    mapping = get_mapping(_config("qwen3", vocab), make_vocab_size_divisible_by=divisible_by, tp_size=tp)
    g = torch.Generator().manual_seed(5)
    original = {n: torch.randn(mapping.hf_shape(n), generator=g) for n in mapping.hf_param_names()}
    direct_kinds = set()
    for name in mapping.megatron_param_names():
        full = mapping.to_megatron(name, original)
        for r in range(tp):
            shard = mapping.shard(name, full, r, tp)
            views = {n: torch.zeros_like(t) for n, t in original.items()}
            dest = shard_destination(mapping, name, r, tp, views, torch.float32)
            assert shard_destination(mapping, name, r, tp, views, torch.bfloat16) is None
            kind = mapping.kind(name)
            if dest is None:
                assert kind in ("qkv", "gated") or (kind == "row" and tp > 1) or (kind == "replicated" and r > 0) \
                    or (kind == "vocab" and (r + 1) * shard.shape[0] > vocab), (name, r)
                continue
            direct_kinds.add(kind)
            write_shard_into_hf(mapping, name, shard, r, tp, views)
            assert torch.equal(dest, shard), (name, r)
            assert sum(int(v.count_nonzero()) for v in views.values()) == shard.numel(), (name, r)  # nothing else
    rows = mapping.padded_vocab_size // tp
    expected = {"replicated"} | ({"row"} if tp == 1 else set()) | \
        ({"vocab"} if any((r + 1) * rows <= vocab for r in range(tp)) else set())
    assert ("vocab" in expected) == (vocab == 1024 or tp > 1)  # the cases this test means to cover
    assert direct_kinds == expected
    tied = get_mapping(_config("qwen3", 1024, tied=True), tp_size=1)
    views = {n: torch.zeros(tied.hf_shape(n)) for n in tied.hf_param_names()}
    assert shard_destination(tied, "output_layer.weight", 0, 1, views, torch.float32) is None
