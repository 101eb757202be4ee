"""Refit bucketing: size bound, laziness (memory bound), order, and stats."""
import pytest
import torch

from megatron_brrm.rollout.refit import (fused_module_key, iter_buckets, missing_fused_members, order_fused_modules,
                                         push_buckets, refit_check, tensor_nbytes)


def _stream(sizes, log):
    for i, n in enumerate(sizes):
        log.append(i)
        yield f"t{i}", torch.zeros(n, dtype=torch.float32)


def test_buckets_respect_size_and_keep_order():
    sizes = [10, 10, 30, 5, 100, 1, 1]  # floats: 4 bytes each
    buckets = list(iter_buckets(_stream(sizes, []), bucket_bytes=80))
    names = [n for b in buckets for n, _ in b]
    assert names == [f"t{i}" for i in range(len(sizes))]
    for b in buckets:
        total = sum(tensor_nbytes(t) for _, t in b)
        assert total <= 80 or len(b) == 1  # only a single over-sized tensor may exceed the bucket
    # 10+10 fit (80 B); 30 alone (120 B > 80); 5 (20 B); 100 alone (400 B); 1+1
    assert [len(b) for b in buckets] == [2, 1, 1, 1, 2]


def test_stream_is_consumed_lazily():
    """When a bucket is handed out, at most one tensor beyond it has been pulled from the source:
    live memory <= bucket_bytes + largest tensor."""
    pulled = []
    sizes = [8] * 20
    seen = 0
    for bucket in iter_buckets(_stream(sizes, pulled), bucket_bytes=3 * 32):
        seen += len(bucket)
        assert len(pulled) <= seen + 1
    assert seen == 20


def test_fused_module_keys():
    assert fused_module_key("model.layers.3.self_attn.k_proj.weight") == "model.layers.3.self_attn.qkv_proj"
    assert fused_module_key("model.layers.3.self_attn.q_proj.bias") == "model.layers.3.self_attn.qkv_proj"
    assert fused_module_key("model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.gate_up_proj"
    assert fused_module_key("model.layers.0.mlp.down_proj.weight") == "model.layers.0.mlp.down_proj"
    assert fused_module_key("model.layers.0.self_attn.o_proj.weight") == "model.layers.0.self_attn.o_proj"
    assert fused_module_key("model.norm.weight") == "model.norm"
    assert fused_module_key("lm_head.weight") == "lm_head"
    # an engine's own packing (e.g. a model that fuses only gate/up)
    assert fused_module_key("m.k_proj.weight", {"gate_up_proj": ("gate_proj", "up_proj")}) == "m.k_proj"


def _layer(i, sizes=(16, 8, 8, 16, 12, 12, 12)):
    names = [f"model.layers.{i}.self_attn.{p}_proj.weight" for p in "qkvo"]
    names += [f"model.layers.{i}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    return [(n, torch.zeros(k, dtype=torch.float32)) for n, k in zip(names, sizes)]


def test_groups_are_never_split_across_buckets():
    """q/k/v (16+8+8 floats = 128 B) and gate/up (12+12 = 96 B) stay together even when the budget (80 B)
    is below a group's size: a split group would be loaded by vLLM in two calls and corrupted."""
    stream = _layer(0) + _layer(1)
    buckets = list(iter_buckets(iter(stream), bucket_bytes=80, group_key=fused_module_key))
    assert [n for b in buckets for n, _ in b] == [n for n, _ in stream]
    assert [[n.split(".")[-2] for n, _ in b] for b in buckets] == [
        ["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"],
        ["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]
    # with a larger budget small groups share a bucket, still whole: 128 + 64 = 192 B, then 96 + 48 = 144 B...
    buckets = list(iter_buckets(iter(stream), bucket_bytes=200, group_key=fused_module_key))
    assert [[n.split(".")[-2] for n, _ in b] for b in buckets] == [
        ["q_proj", "k_proj", "v_proj", "o_proj"], ["gate_proj", "up_proj", "down_proj"],
        ["q_proj", "k_proj", "v_proj", "o_proj"], ["gate_proj", "up_proj", "down_proj"]]
    # without groups the same budget splits q/k/v (what the grouping prevents)
    plain = list(iter_buckets(iter(stream), bucket_bytes=80))
    assert [n.split(".")[-2] for n, _ in plain[0]] == ["q_proj"]


def test_missing_fused_members_names_the_split():
    whole = [n for n, _ in _layer(0)]
    assert missing_fused_members(whole) == {}
    assert missing_fused_members(whole[:1] + whole[3:]) == {
        "model.layers.0.self_attn.qkv_proj": ["model.layers.0.self_attn.k_proj.weight",
                                              "model.layers.0.self_attn.v_proj.weight"]}
    assert missing_fused_members(["model.layers.0.mlp.up_proj.weight", "model.norm.weight"]) == {
        "model.layers.0.mlp.gate_up_proj": ["model.layers.0.mlp.gate_proj.weight"]}


def test_order_fused_modules_makes_siblings_adjacent():
    alphabetical = sorted(_layer(0), key=lambda nt: nt[0])  # a state dict: gate, up, down interleave; k before q
    names = [n.split(".")[-2] for n, _ in order_fused_modules(iter(alphabetical))]
    # down/o pass at once; gate/up come out together when up arrives; q/k/v together when v arrives
    assert names == ["down_proj", "gate_proj", "up_proj", "o_proj", "q_proj", "k_proj", "v_proj"]
    with pytest.raises(ValueError, match=r"qkv_proj incomplete.*v_proj"):
        list(order_fused_modules(iter(_layer(0)[:2])))


def test_bad_bucket_size():
    with pytest.raises(ValueError, match="bucket_bytes"):
        list(iter_buckets(iter([]), 0))


class _Sink:
    def __init__(self):
        self.loaded = {}

    def update_weights(self, bucket):
        for n, t in bucket:
            self.loaded[n] = t


def test_push_buckets_feeds_every_engine():
    engines = [_Sink(), _Sink()]
    stats = push_buckets(iter_buckets(_stream([4, 4, 4], []), 32), engines)
    assert stats.num_tensors == 3 and stats.num_bytes == 48 and stats.num_buckets == 2
    assert all(sorted(e.loaded) == ["t0", "t1", "t2"] for e in engines)


def test_refit_check_masks_and_mismatch():
    chk = refit_check([[0.0, -1.0, -2.0]], [[5.0, -1.5, -2.0]], [[0, 1, 1]])
    assert chk.num_tokens == 2 and chk.max_abs_diff == pytest.approx(0.5)
    assert chk.mismatch == pytest.approx((torch.exp(torch.tensor(0.5)).item() + 1.0) / 2)
    with pytest.raises(ValueError, match="sequence 0"):
        refit_check([[0.0]], [[0.0, 1.0]], [[1]])
