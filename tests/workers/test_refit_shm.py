"""Same-node refit pieces without Ray: the bucket plan, the shared-memory files, writing TP shards
through the plan, and moving an engine's weights into shared memory.

References: the mapping registry (``to_megatron`` / ``shard`` / ``hf_param_names``, proven
against transformers by the converter tests) and the tensors' own values; every comparison is
``torch.equal`` (pure copies, tolerance zero). The multi-process refit through real policy ranks
is tested in ``test_refit_policy.py``.
"""
import os

import pytest
import torch

from megatron_brrm.model.mapping import get_mapping
from megatron_brrm.rollout.refit import fused_module_key
from megatron_brrm.rollout.shm import ALIGN, SharedBuffers, bucket_views, map_buffer, mapped_paths, unmap_buffers
from megatron_brrm.workers.refit_shm import (build_refit_plan, receive_buffers, seal_module_weights,
                                             share_module_weights, write_bucket_shards)


def _mapping(tied=False, tp=2):
    cfg = {"model_type": "qwen3", "num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 48,
           "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 8, "vocab_size": 1000,
           "tie_word_embeddings": tied}
    return get_mapping(cfg, tp_size=tp)


def _dtypes(mapping, dtype="torch.float32"):
    return {n: dtype for n in mapping.megatron_param_names()}


def test_plan_order_bounds_alignment_and_tied_head():
    mapping = _mapping()
    budget = 8 * 1024
    plan = build_refit_plan(mapping, _dtypes(mapping), budget)
    entries = [e for b in plan.buckets for e in b]
    assert [e.hf_name for e in entries] == mapping.hf_param_names()
    assert plan.num_tensors == len(entries) and len(plan.buckets) > 1
    for bucket in plan.buckets:
        ends = [e.offset + e.nbytes for e in bucket]
        assert all(e.offset % ALIGN == 0 for e in bucket)
        assert all(a.offset + a.nbytes <= b.offset for a, b in zip(bucket, bucket[1:]))  # no overlap
        # only a lone over-sized fused module (or tensor) exceeds the budget
        assert max(ends) <= budget or len({fused_module_key(e.hf_name) for e in bucket}) == 1
        assert max(ends) <= plan.buffer_bytes
    # a fused module (q/k/v, gate/up) never spans two buckets
    where = {}
    for k, bucket in enumerate(plan.buckets):
        for e in bucket:
            where.setdefault(fused_module_key(e.hf_name), set()).add(k)
    assert all(len(ks) == 1 for ks in where.values())
    # with a budget below one layer's q+k+v (3 x 32 x 32 x 4 = 12288 bytes here is 8+4+4 heads x 8 x 32 x 4),
    # q/k/v still travel together: a plan that split them would corrupt a vLLM engine's qkv_proj
    qkv = [mapping.hf_shape(f"model.layers.0.self_attn.{p}_proj.weight") for p in "qkv"]
    qkv_bytes = sum(a * b * 4 for a, b in qkv)
    assert qkv_bytes == (64 + 32 + 32) * 32 * 4
    small = build_refit_plan(mapping, _dtypes(mapping), qkv_bytes // 2)
    for bucket in small.buckets:
        names = [e.hf_name for e in bucket]
        if "model.layers.0.self_attn.q_proj.weight" in names:
            assert {"model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight"} <= set(names)
    emb = next(e for e in entries if e.hf_name == "model.embed_tokens.weight")
    assert emb.nbytes == 1000 * 32 * 4 > budget and emb.offset == 0
    tied = build_refit_plan(_mapping(tied=True), _dtypes(_mapping(tied=True)), budget)
    assert "lm_head.weight" not in [e.hf_name for b in tied.buckets for e in b]
    with pytest.raises(KeyError, match="no pipeline stage"):
        build_refit_plan(mapping, {}, budget)


def test_buffers_are_removed_and_written_shards_rebuild_the_model():
    mapping = _mapping(tp=2)
    plan = build_refit_plan(mapping, _dtypes(mapping), 16 * 1024)
    g = torch.Generator().manual_seed(0)
    hf = {n: torch.randn(mapping.hf_shape(n), generator=g) for n in mapping.hf_param_names()}
    ranks = [{name: mapping.shard(name, mapping.to_megatron(name, hf), r, 2) for name in mapping.megatron_param_names()}
             for r in range(2)]
    rebuilt = {}
    with SharedBuffers(plan.buffer_bytes) as buffers:
        paths = list(buffers.paths)
        assert len(paths) == 2 and all(os.path.getsize(p) == plan.buffer_bytes for p in paths)
        for k, bucket in enumerate(plan.buckets):
            buf = map_buffer(paths[k % 2], plan.buffer_bytes)
            buf.zero_()
            for r in range(2):
                write_bucket_shards(ranks[r], mapping, r, 2, buf, bucket)
            for name, view in bucket_views(map_buffer(paths[k % 2], plan.buffer_bytes), bucket):
                rebuilt[name] = view.clone()
        assert len(mapped_paths()) == 2
    assert not any(os.path.exists(p) for p in paths)
    assert unmap_buffers() == 2 and mapped_paths() == []
    assert set(rebuilt) == set(hf) and all(torch.equal(rebuilt[n], t) for n, t in hf.items())


def test_engine_weights_move_into_shared_memory(tiny_qwen3_tied_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_qwen3_tied_dir), dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = dict(model.named_parameters(remove_duplicate=False))
    assert params["lm_head.weight"] is params["model.embed_tokens.weight"]  # tied
    names = [n for n in before if n != "lm_head.weight"]
    shared = share_module_weights(model, names)
    info = shared.info()
    assert os.path.exists(info["path"]) and info["linked"] and info["nbytes"] >= sum(
        p.numel() * 4 for p in before.values())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # values kept
    # a rank writing through its own mapping of the file changes the engine's (tied) weights
    buf = map_buffer(info["path"], info["nbytes"], persistent=True)
    off, shape, dtype = info["layout"]["model.embed_tokens.weight"]
    buf[off:off + 4].view(torch.float32).fill_(7.0)
    assert model.lm_head.weight[0, 0].item() == 7.0 == model.model.embed_tokens.weight[0, 0].item()
    assert share_module_weights(model, names) is shared  # cached while valid
    assert seal_module_weights(model) and not os.path.exists(info["path"])
    buf[off:off + 4].view(torch.float32).fill_(3.0)  # the mapping outlives the file's name
    assert model.lm_head.weight[0, 0].item() == 3.0
    with torch.no_grad():
        model.model.norm.weight.data = model.model.norm.weight.data.clone()  # someone replaced a tensor
    assert not shared.valid(model)
    again = share_module_weights(model, names)
    assert again is not shared and os.path.exists(again.info()["path"])
    again.close()
    assert unmap_buffers() == 1
    assert share_module_weights(torch.nn.Linear(2, 2), ["missing"]) is None  # cannot share: buckets instead


def test_unknown_transport_is_named():
    from megatron_brrm.workers.refit import choose_transport

    with pytest.raises(ValueError, match="refit_transport='nccl'.*auto, shm, collective, ray"):
        choose_transport(object(), [], "nccl")


def test_stale_files_of_dead_processes_are_removed(tmp_path):
    """A SIGKILLed process leaves its files; the next SharedBuffers removes those of dead PIDs in this PID
    namespace only: a live PID's file, another namespace's file and foreign names are kept."""
    import subprocess
    import sys
    import uuid

    from megatron_brrm.rollout.shm import remove_stale_files, shm_dir

    ns = str(os.stat("/proc/self/ns/pid").st_ino)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    names = {
        "dead_refit": f"brrm-refit-{ns}-{dead}-{uuid.uuid4().hex[:12]}-0",
        "dead_weights": f"brrm-weights-{ns}-{dead}-{uuid.uuid4().hex[:12]}",
        "live": f"brrm-weights-{ns}-{os.getpid()}-{uuid.uuid4().hex[:12]}",
        "other_namespace": f"brrm-refit-{int(ns) + 1}-{dead}-{uuid.uuid4().hex[:12]}-1",
        "foreign": f"brrm-notes-{ns}-{dead}-x",
    }
    for n in names.values():
        (tmp_path / n).write_bytes(b"x")
    removed = remove_stale_files(str(tmp_path))
    assert sorted(removed) == sorted(str(tmp_path / names[k]) for k in ("dead_refit", "dead_weights"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[k] for k in ("live", "other_namespace", "foreign"))

    # the sweep runs when new buffers are created, in the directory they go to
    stale = os.path.join(shm_dir(), f"brrm-refit-{ns}-{dead}-{uuid.uuid4().hex[:12]}-0")
    open(stale, "wb").close()
    with SharedBuffers(4096) as bufs:
        assert not os.path.exists(stale) and all(os.path.exists(p) for p in bufs.paths)
        assert all(f"-{ns}-{os.getpid()}-" in os.path.basename(p) for p in bufs.paths)


def test_receive_buffers_are_disjoint_and_reuse_touched_memory_per_dtype():
    """Cross-node receivers land every shard of a refit call in one grow-only buffer per dtype
    (no first-touch page faults per refit); the shards of one call do not overlap (they are all
    in flight at once); a larger call grows the buffer, another dtype gets its own."""
    cpu = torch.device("cpu")
    a, b, c = receive_buffers([((4, 8), torch.float32), ((2, 3), torch.float32), ((4, 8), torch.bfloat16)], cpu)
    assert (a.shape, b.shape, c.shape) == ((4, 8), (2, 3), (4, 8))
    assert a.is_contiguous() and b.is_contiguous() and c.dtype == torch.bfloat16
    a.fill_(1.0)
    b.fill_(2.0)
    assert torch.all(a == 1.0) and torch.all(b == 2.0)  # disjoint
    assert b.data_ptr() == a.data_ptr() + 32 * 4  # packed one after the other in one buffer
    (again,) = receive_buffers([((6,), torch.float32)], cpu)
    assert again.data_ptr() == a.data_ptr()  # the next call reuses the touched memory
    big, small = receive_buffers([((1 << 20,), torch.float32), ((5,), torch.float32)], cpu)
    assert big.numel() == 1 << 20 and small.data_ptr() == big.data_ptr() + (1 << 20) * 4
    assert receive_buffers([((5,), torch.float32)], cpu)[0].data_ptr() == big.data_ptr()
