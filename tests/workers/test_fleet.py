"""GenerationFleet: group-wise sharding, balance, results independent of the number of engines,
per-engine metrics, and a failing engine named in the error.

The engines are real HF engines in Ray actors on the tiny Qwen3. The reference for "the same
trajectories" is the same rollout through a one-engine fleet (per-sample seeds make samples
independent of the split, so equality is exact).
"""
from __future__ import annotations

import functools
import sys
from types import SimpleNamespace

import pytest
from ray import cloudpickle

from megatron_brrm.judge import RewardRule, get_protocol
from megatron_brrm.rollout.hf_engine import HFEngine
from megatron_brrm.rollout.two_turn import RolloutParams, rollout
from megatron_brrm.workers.fleet import balance_groups

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules


def test_balance_groups_is_lpt():
    # tokens 50, 40, 30, 20, 10 over 2 engines: 50->e0, 40->e1, 30->e1 (40<50), 20->e0 (50<70), 10->e0 (70=70 -> lowest)
    got = balance_groups({0: 10, 1: 50, 2: 20, 3: 40, 4: 30}, 2)
    assert got == {1: 0, 3: 1, 4: 1, 2: 0, 0: 0}
    assert balance_groups({7: 5, 8: 5}, 3) == {7: 0, 8: 1}  # ties by group id, then engine index
    assert set(balance_groups({i: 1 for i in range(6)}, 1).values()) == {0}


class FailsOnTurn2(HFEngine):
    """An HF engine that raises when asked for a second turn (its prompt holds two assistant headers)."""

    def generate(self, prompts, params, group_ids=None):
        if any(self.tokenizer.decode(p).count("<|im_start|>assistant") > 1 for p in prompts):
            raise RuntimeError("engine broke in turn 2 (injected)")
        return super().generate(prompts, params, group_ids)


def _pairs(k=4):
    return [SimpleNamespace(id=f"p{i}", context=[{"role": "user", "content": f"Question {i}: is {i} even?"}],
                            response1=f"Yes, {i} is even." * (1 + i % 3), response2="No.", preference=1 + i % 2)
            for i in range(k)]


@pytest.mark.multiprocess
@pytest.mark.timeout(300)
def test_fleet_shards_groups_and_matches_one_engine(ray_local, tiny_qwen3_dir):
    from megatron_brrm.config import load_config
    from megatron_brrm.workers.cluster import Cluster
    from megatron_brrm.workers.fleet import GenerationFleet
    from megatron_brrm.workers.worker_group import WorkerError

    cfg = load_config(None, ["parallel.tensor_model_parallel_size=2", "rollout.colocated=true"])
    cluster = Cluster.from_config(cfg)
    params = RolloutParams(n=3, temperature=1.0, max_new_tokens=(10, 8), max_total_length=4096, seed=5)
    proto = get_protocol("brrm")
    try:
        assert len(cluster.engine_placements) == 2
        two = GenerationFleet(cluster, functools.partial(HFEngine, str(tiny_qwen3_dir)), timeout_s=120)
        trajs2 = rollout(two, proto, _pairs(), params, RewardRule())
        metrics = two.pop_metrics()
        one_engine = GenerationFleet(cluster, functools.partial(HFEngine, str(tiny_qwen3_dir)), num_engines=1,
                                     timeout_s=120)
        trajs1 = rollout(one_engine, proto, _pairs(), params, RewardRule())
        one_metrics = one_engine.pop_metrics()
        one_engine.shutdown()
        two.shutdown()
        broken = GenerationFleet(cluster, functools.partial(FailsOnTurn2, str(tiny_qwen3_dir)), timeout_s=120)
        with pytest.raises(WorkerError) as err:
            rollout(broken, proto, _pairs(), params, RewardRule())
        node_ip = broken.engines[0].node
        broken.shutdown()
    finally:
        cluster.shutdown()
    assert [t.token_ids for t in trajs2] == [t.token_ids for t in trajs1]
    # logprobs: the same values up to float summation order (another split pads batches to other widths)
    worst = max(abs(a - b) for t2, t1 in zip(trajs2, trajs1) for a, b in zip(t2.rollout_logprobs, t1.rollout_logprobs))
    assert worst <= 1e-5, worst
    generated = sum(t.num_generated for t in trajs2)
    assert metrics["engine0/generated_tokens"] + metrics["engine1/generated_tokens"] == generated
    assert metrics["engine0/generated_tokens"] > 0 and metrics["engine1/generated_tokens"] > 0  # both worked
    assert metrics["engine_imbalance"] >= 1.0
    assert one_metrics["engine0/generated_tokens"] == generated and one_metrics["engine_imbalance"] == 1.0
    msg = str(err.value)
    assert err.value.group == "generation" and err.value.method == "generate" and err.value.node == node_ip
    assert "engine broke in turn 2 (injected)" in msg and f"node {node_ip}" in msg
