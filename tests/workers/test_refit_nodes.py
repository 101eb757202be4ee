"""Refit across two Ray nodes on one machine: the collective path (gloo broadcasts to one receiver
per node, then that node's shared memory), never the single-node ``shm`` path.

Layouts: PP=2 with one pipeline stage per node (each node writes its own stage's shards and
receives the other stage's, relayed as whole byte ranges of the shared layout; also at TP=2,
where a stage's two writers sync before it leaves), and TP=2 with one TP rank per node (each
node receives the other rank's shards of every tensor, piece by piece). HF engine actors on both
nodes (a colocated fleet). After a training step (so every tensor differs from the initial HF
folder), every engine must hold weights bit-equal to the trainer's own export
(``hf_state_dict``: TP all-gather + ``mapping.to_hf``); pure copies, tolerance zero.
"""
import pytest
import torch

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(420)]


@pytest.mark.parametrize("layout", [{"tp": 1, "pp": 2}, {"tp": 2, "pp": 1}, {"tp": 2, "pp": 2}],
                         ids=["pp2", "tp2", "tp2pp2"])
def test_refit_across_two_nodes(layout, two_ray_nodes, tiny_qwen3_dir):
    from megatron_brrm.config import load_config
    from megatron_brrm.workers.batching import sequences_to_batch
    from megatron_brrm.workers.cluster import Cluster
    from megatron_brrm.workers.fleet import GenerationFleet, engine_factory_for
    from megatron_brrm.rl.loss import SFTLoss
    from megatron_brrm.workers.policy_group import Policy
    from megatron_brrm.workers.refit import RefitTransportError, refit

    cfg = load_config(None, [f"model.hf_path={tiny_qwen3_dir}", "model.transformer_impl=local",
                             f"parallel.tensor_model_parallel_size={layout['tp']}",
                             f"parallel.pipeline_model_parallel_size={layout['pp']}", "parallel.backend=gloo",
                             "grpo.optimizer.lr=0.01", "grpo.optimizer.lr_warmup_steps=0", "grpo.micro_batch_size=2", "rollout.engine=hf"])
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 2000, (n,), generator=g).tolist() for n in (24, 17)]
    batch = sequences_to_batch(seqs, [[0] * 4 + [1] * (len(s) - 4) for s in seqs], pad_id=0)
    world = layout["tp"] * layout["pp"]
    cluster = Cluster.from_config(cfg, address=two_ray_nodes, cpus_per_bundle=2 / world)  # 1 CPU per node
    try:
        policy = Policy(cluster, cfg, call_timeout_s=300)
        fleet = GenerationFleet(cluster, engine_factory_for(cfg.rollout, tiny_qwen3_dir), timeout_s=300)
        rank_nodes = [r.node_id for r in policy.layout]
        engine_nodes = [e.node_id() for e in fleet.engines]
        before = [e.get(e.handle.state_dict_cpu.remote()) for e in fleet.engines]
        assert not policy.train(batch, SFTLoss()).skipped
        expected = policy.hf_state_dict()
        with pytest.raises(RefitTransportError, match="refit_transport=shm needs .* one node"):
            refit(policy, fleet, bucket_bytes=64 * 1024, transport="shm")
        runs = {}
        for mode, direct in (("direct", True), ("buckets", False)):
            stats = refit(policy, fleet, bucket_bytes=64 * 1024, direct=direct)
            runs[mode] = (stats, [e.get(e.handle.state_dict_cpu.remote()) for e in fleet.engines])
    finally:
        cluster.shutdown()
    assert len(set(rank_nodes)) == 2 and sorted(set(engine_nodes)) == sorted(set(rank_nodes))  # an engine per node
    half = world // 2  # one stage (or TP rank) per node: ranks [0, half) on one node, the rest on the other
    assert rank_nodes == [rank_nodes[0]] * half + [rank_nodes[-1]] * half
    for mode, (stats, engines) in runs.items():
        assert "transport_collective" in stats.phases and "transport_shm" not in stats.phases, mode
        assert stats.phases["rank_comm"] > 0, mode  # shards did cross between the nodes
        # a stage per node (PP=2, any TP): each stage crosses as whole byte ranges (relay); TP=2 with
        # one TP rank per node: per shard piece
        assert (stats.phases["rank_relay"] > 0) == (layout["pp"] == 2), (mode, stats.phases["rank_relay"])
        assert stats.num_tensors == len(expected), mode
        for k, state in enumerate(engines):
            for name, tensor in expected.items():
                assert torch.equal(state[name], tensor), (mode, k, name)
    changed = sum(int(not torch.equal(before[0][n], t)) for n, t in expected.items())
    assert changed == len(expected)  # the step moved every tensor, so equality is not trivial


@pytest.mark.vllm
def test_refit_across_two_nodes_into_vllm(two_ray_nodes, tiny_qwen3_dir, vllm_tiny_engine):
    """PP=2, one stage per node, one vLLM engine actor per node (a two-engine fleet). A two-turn
    rollout through the fleet gives exactly the trajectories of one vLLM engine (the session's, in
    this process). After a training step and a refit, each engine's logprobs on a fixed batch equal
    the trainer's within 1e-4 (fp32; the stacks differ only in summation order) and moved away from
    the initial weights'."""
    import functools
    from types import SimpleNamespace

    from megatron_brrm.judge import RewardRule, get_protocol
    from megatron_brrm.rollout.two_turn import RolloutParams, rollout

    from megatron_brrm.config import load_config
    from megatron_brrm.rollout.vllm_engine import VLLMEngine
    from megatron_brrm.workers.batching import sequences_to_batch
    from megatron_brrm.workers.cluster import Cluster
    from megatron_brrm.workers.fleet import GenerationFleet
    from megatron_brrm.rl.loss import SFTLoss
    from megatron_brrm.workers.policy_group import Policy
    from megatron_brrm.workers.refit import refit

    cfg = load_config(None, [f"model.hf_path={tiny_qwen3_dir}", "model.transformer_impl=local",
                             "parallel.pipeline_model_parallel_size=2", "parallel.backend=gloo", "grpo.optimizer.lr=0.01",
                             "grpo.optimizer.lr_warmup_steps=0", "grpo.micro_batch_size=2", "rollout.temperature=1.0"])
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 2000, (n,), generator=g).tolist() for n in (24, 17)]
    batch = sequences_to_batch(seqs, [[0] * 4 + [1] * (len(s) - 4) for s in seqs], pad_id=0)

    def rows(lp):
        return [[0.0] + lp[r, 1:len(s)].tolist() for r, s in enumerate(seqs)]

    def max_diff(a, b):
        return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))

    cluster = Cluster.from_config(cfg, address=two_ray_nodes)
    try:
        policy = Policy(cluster, cfg, call_timeout_s=300)
        fleet = GenerationFleet(cluster, functools.partial(VLLMEngine, str(tiny_qwen3_dir), dtype="float32",
                                                           max_model_len=1024), timeout_s=300)
        pairs = [SimpleNamespace(id=f"p{i}", context=[{"role": "user", "content": f"Is {i} prime?"}],
                                 response1="Yes." * (i + 1), response2="No.", preference=1 + i % 2) for i in range(4)]
        params = RolloutParams(n=2, temperature=1.0, max_new_tokens=(10, 8), max_total_length=1024, seed=9)
        by_fleet = rollout(fleet, get_protocol("brrm"), pairs, params, RewardRule())
        tokens = fleet.pop_metrics()
        by_one = rollout(vllm_tiny_engine, get_protocol("brrm"), pairs, params, RewardRule())
        before = [e.score(seqs) for e in fleet.engines]
        assert not policy.train(batch, SFTLoss()).skipped
        trained = rows(policy.get_logprobs(batch))
        stats = refit(policy, fleet, bucket_bytes=16 * 1024)
        after = [e.score(seqs) for e in fleet.engines]
        nodes = {e.node_id() for e in fleet.engines}
        fleet.shutdown()
    finally:
        cluster.shutdown()
    assert [t.token_ids for t in by_fleet] == [t.token_ids for t in by_one]
    assert tokens["engine0/generated_tokens"] > 0 and tokens["engine1/generated_tokens"] > 0
    assert len(nodes) == 2 and "transport_collective" in stats.phases and stats.num_buckets > 1
    assert stats.phases["rank_relay"] > 0  # each bucket's stage ranges crossed whole
    for k in range(2):
        assert max_diff(after[k], trained) <= 1e-4, (k, max_diff(after[k], trained))
        assert max_diff(before[k], trained) > 1e-2, k
