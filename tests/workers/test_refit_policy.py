"""Refit from Megatron policy ranks (TP=2, PP=2) into the HF engine, as the driver does.

After one optimizer step (so the weights differ from the initial HF folder), a refit must
leave every engine parameter bit-equal to the policy's own gathered HF export (the
``hf_state_dict`` collective: TP all-gather + ``mapping.to_hf``), through both transports:
``ray`` (Ray object-store stream) and ``shm`` (same-node shared memory, each rank writing its
own shards; checked for a local engine and an EngineActor-hosted one, starting from the initial
weights, with no named shared-memory file left afterwards; once with double-buffered buckets
and twice with the ranks writing straight into the engines' shared weights). ``shm`` with a
rank on another node must fail naming the nodes. The engine's logprobs must match the
trainer's on the same tokens to 1e-4 (fp32: the two stacks differ only in kernel summation order, measured ~1e-6).
"""
import pytest
import torch

pytestmark = pytest.mark.multiprocess


def _shm_refit(cluster, policy, engine, before, model_dir):
    """Refit a local engine and an EngineActor-hosted engine through shared memory, both starting
    from the initial weights: first with double-buffered buckets, then twice with direct writes
    into the engines' weights (the second time through the ranks' cached mappings); then probe
    the cross-node error with a fake placement. Returns what the test checks."""
    import dataclasses
    import functools
    import glob
    import os
    import tempfile

    from megatron_brrm.rollout.hf_engine import HFEngine
    from megatron_brrm.workers.actors import create_engine_actors
    from megatron_brrm.rollout.shm import mapped_paths, shm_dir
    from megatron_brrm.workers.refit import RefitTransportError, refit

    remote = create_engine_actors(cluster, functools.partial(HFEngine, str(model_dir)), num_engines=1, timeout_s=300)[0]
    pids = [os.getpid(), remote.get(remote.handle.placement_info.remote(), "placement_info")["pid"]]
    pids += [i["pid"] for i in policy.group.run_all("info")]  # a policy rank owns each node's bucket files

    def reset():
        with torch.no_grad():
            for name, p in engine.model.named_parameters():
                p.copy_(before[name])
        engine.last_update_stats = {"tensors": 0, "bytes": 0}
        remote.update_weights(iter(before.items()))

    def run(**kwargs):
        reset()
        stats = refit(policy, [engine, remote], bucket_bytes=64 * 1024, transport="shm", **kwargs)
        return {"stats": stats, "local": {n: p.detach().clone() for n, p in engine.model.named_parameters()},
                "remote": remote.get(remote.handle.state_dict_cpu.remote(), "state_dict_cpu"),
                "update_stats": [engine.last_update_stats,
                                 remote.get(remote.handle.last_update_stats.remote(), "last_update_stats")],
                "files": [f for pid in pids for d in {shm_dir(), "/dev/shm", tempfile.gettempdir()}
                          for f in glob.glob(os.path.join(d, f"brrm-*-{pid}-*"))],
                "driver_mappings": mapped_paths()}

    out = {"buckets": run(direct=False), "direct": run(), "direct_again": run()}
    real = policy.layout
    policy.layout = [real[0]] + [dataclasses.replace(p, node_id="f" * 56, node_ip="10.255.0.2") for p in real[1:]]
    try:
        with pytest.raises(RefitTransportError) as err:
            refit(policy, [engine], bucket_bytes=64 * 1024, transport="shm")
        out["error"] = str(err.value)
    finally:
        policy.layout = real
    return out


@pytest.mark.parametrize("layout", [{"tp": 2, "pp": 1}, {"tp": 1, "pp": 2}], ids=["tp2", "pp2"])
def test_refit_matches_trainer(layout, tiny_qwen3_dir, tmp_path):
    from megatron_brrm.config import load_config
    from megatron_brrm.rollout.hf_engine import HFEngine
    from megatron_brrm.workers.batching import sequences_to_batch
    from megatron_brrm.workers.cluster import Cluster
    from megatron_brrm.rl.loss import SFTLoss
    from megatron_brrm.workers.policy_group import Policy
    from megatron_brrm.workers.refit import refit

    cfg = load_config(None, [f"model.hf_path={tiny_qwen3_dir}", "model.transformer_impl=local",
                             f"parallel.tensor_model_parallel_size={layout['tp']}",
                             f"parallel.pipeline_model_parallel_size={layout['pp']}", "parallel.backend=gloo",
                             "grpo.optimizer.lr=0.01", "grpo.optimizer.lr_warmup_steps=0", "grpo.micro_batch_size=2"])
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 2000, (n,), generator=g).tolist() for n in (24, 17)]
    batch = sequences_to_batch(seqs, [[0] * 4 + [1] * (len(s) - 4) for s in seqs], pad_id=0)
    engine = HFEngine(str(tiny_qwen3_dir))
    before = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    cluster = Cluster.from_config(cfg, num_cpus=2)
    try:
        policy = Policy(cluster, cfg, call_timeout_s=300)
        assert not policy.train(batch, SFTLoss()).skipped
        expected = policy.hf_state_dict()
        trainer_lp = policy.get_logprobs(batch)
        stats = refit(policy, [engine], bucket_bytes=64 * 1024, transport="ray")
        exported = policy.export_hf(tmp_path / "export", tiny_qwen3_dir)
        after_ray = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
        shm = _shm_refit(cluster, policy, engine, before, tiny_qwen3_dir)
    finally:
        cluster.shutdown()
    # same-node shared-memory transport: local engine and actor-hosted engine, no named files left behind
    nbytes = sum(t.numel() * t.element_size() for t in expected.values())
    for mode in ("buckets", "direct", "direct_again"):
        run = shm[mode]
        assert run["stats"].num_tensors == len(expected) and run["stats"].num_bytes == nbytes, mode
        assert run["files"] == [] and run["driver_mappings"] == [], mode
        for name, tensor in expected.items():
            assert torch.equal(run["local"][name], tensor), (mode, name)
            assert torch.equal(run["remote"][name], tensor), (mode, name)
    assert shm["buckets"]["stats"].num_buckets > 1 and "alloc" in shm["buckets"]["stats"].phases
    assert shm["direct"]["stats"].num_buckets == 1 and "alloc" not in shm["direct"]["stats"].phases
    for mode in ("direct", "direct_again"):  # a direct refit is one update of every tensor, for both engines
        assert shm[mode]["update_stats"] == [{"tensors": len(expected), "bytes": nbytes}] * 2, mode
    # bucket mode: each engine's last update_weights call was one bucket, a strict part of the model
    assert all(0 < s["tensors"] < len(expected) for s in shm["buckets"]["update_stats"])
    assert "refit_transport=shm" in shm["error"] and "10.255.0.2" in shm["error"]
    engine_params = dict(engine.model.named_parameters())
    for name, tensor in after_ray.items():  # the checks below are on the ray-path result
        engine_params[name].data.copy_(tensor)
    params = dict(engine.model.named_parameters())
    assert stats.num_tensors == len(expected) and stats.num_buckets > 1
    assert set(expected) <= set(params)
    changed = 0
    for name, tensor in expected.items():
        assert torch.equal(params[name].detach(), tensor), name
        changed += int(not torch.equal(before[name], tensor))
    assert changed == len(expected)  # the optimizer step moved every tensor, so equality is not trivial
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    saved = {k: v for f in sorted(exported.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    assert set(saved) == set(expected) and all(torch.equal(saved[n], t) for n, t in expected.items())
    assert AutoTokenizer.from_pretrained(exported).chat_template  # tokenizer + chat template travel along
    with torch.no_grad():
        ids = batch["input_ids"]
        logits = engine.model(input_ids=ids, attention_mask=(ids != -1).long()).logits.float()
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    for row, n in enumerate(batch["input_lengths"].tolist()):
        diff = (lp[row, : n - 1] - trainer_lp[row, 1:n]).abs().max().item()
        assert diff <= 1e-4, (row, diff)
