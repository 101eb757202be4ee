"""Cluster placement on a private 2-CPU Ray instance: colocated vs split engines, resource
errors, joining an existing cluster through RAY_ADDRESS, and engines in their own actors."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pytest
import ray
import torch
from ray import cloudpickle

from megatron_brrm.config import ParallelConfig, RolloutConfig
from megatron_brrm.rollout.engine import SamplingParams
from megatron_brrm.workers import Cluster, ClusterError, WorkerError, WorkerGroup, create_engine_actors

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(180)]

sys.path.insert(0, os.path.dirname(__file__))
import test_workers_actors as scripted  # noqa: E402  (ScriptedEngine)

cloudpickle.register_pickle_by_value(scripted)  # Ray workers cannot import the test modules


def _free_cpu() -> float:
    return ray.available_resources().get("CPU", 0.0)


def _no_placement_groups() -> bool:
    return not any("_group_" in k for k in ray.available_resources())


class RankProbe:
    def rank(self) -> int:
        return int(os.environ["RANK"])


def test_colocated_engines_share_the_policy_bundles(ray_local):
    with Cluster(ParallelConfig(tensor_model_parallel_size=2), RolloutConfig(colocated=True)) as c:
        assert (c.policy_world_size, c.dp_size, c.num_generation_engines, c.use_gpu) == (2, 1, 2, False)
        pg = c.policy_placements[0].placement_group
        for rank, e in enumerate(c.engine_placements):
            policy = c.policy_placements[rank]
            assert e.placement_group.id == pg.id and e.bundle_indices == [policy.bundle_index]
            assert (e.actor.num_cpus, policy.num_cpus, e.actor.num_gpus) == (0.5, 0.5, 0.0)  # half a bundle each
        assert _free_cpu() == pytest.approx(0.0)  # both CPUs reserved by the one placement group
    with Cluster(ParallelConfig(tensor_model_parallel_size=2), RolloutConfig(colocated=True, tensor_parallel_size=2)) as c:
        assert c.num_generation_engines == 1
        assert c.engine_placements[0].bundle_indices == [p.bundle_index for p in c.policy_placements]
    assert ray.is_initialized() and _free_cpu() == pytest.approx(2.0) and _no_placement_groups()


def test_split_engines_get_their_own_bundles(ray_local):
    c = Cluster(ParallelConfig(tensor_model_parallel_size=1), RolloutConfig(colocated=False))
    try:
        assert (c.policy_world_size, c.num_generation_engines) == (1, 1)
        e, p = c.engine_placements[0], c.policy_placements[0]
        assert e.placement_group.id != p.placement_group.id
        assert (e.actor.num_cpus, p.num_cpus) == (1.0, 1.0)
        assert _free_cpu() == pytest.approx(0.0)
    finally:
        c.shutdown()
    # The Cluster joined an existing Ray: shutdown frees its placement groups, Ray stays up.
    assert ray.is_initialized() and _free_cpu() == pytest.approx(2.0) and _no_placement_groups()


def test_insufficient_resources_say_what_is_needed(ray_local):
    with pytest.raises(ClusterError) as info:
        Cluster(ParallelConfig(tensor_model_parallel_size=2), RolloutConfig(colocated=False))
    msg = str(info.value)
    assert "needed 3 CPU" in msg and "available 2 CPU" in msg
    assert "2 CPU rank(s) = TP 2 x PP 1 x CP 1 x DP 1" in msg and "1 generation engine(s) x TP 1" in msg
    with pytest.raises(ClusterError, match=r"needed 4 CPU .*TP 2 x PP 1 x CP 1 x DP 2"):
        Cluster(ParallelConfig(tensor_model_parallel_size=2), RolloutConfig(), policy_world_size=4)
    assert _free_cpu() == pytest.approx(2.0) and _no_placement_groups()  # nothing leaked


def test_bad_sizes_name_the_config_keys(ray_local):
    cases = [
        (dict(parallel=ParallelConfig(tensor_model_parallel_size=2), policy_world_size=3),
         r"policy world size 3 is not a multiple of TP\*PP\*CP = 2 \(parallel.tensor_model_parallel_size=2"),
        (dict(rollout=RolloutConfig(tensor_parallel_size=2)),
         r"policy world size 1 is not a multiple of rollout.tensor_parallel_size = 2"),
        (dict(parallel=ParallelConfig(pipeline_model_parallel_size=0)), r"parallel.pipeline_model_parallel_size = 0"),
        (dict(gpus_per_node=8), r"gpus_per_node = 8 was given but the Ray cluster has no GPUs"),
        (dict(use_gpu=True), r"use_gpu = True but the Ray cluster has no GPUs"),
    ]
    for kw, pattern in cases:
        par, rol = kw.pop("parallel", ParallelConfig()), kw.pop("rollout", RolloutConfig())
        with pytest.raises(ClusterError, match=pattern):
            Cluster(par, rol, **kw)
    assert _free_cpu() == pytest.approx(2.0) and _no_placement_groups()


def test_engine_actor_next_to_a_policy_rank(ray_local):
    with Cluster(ParallelConfig(tensor_model_parallel_size=2), RolloutConfig(colocated=True)) as c:
        policy = WorkerGroup(c, RankProbe, 1, name="policy", init_timeout_s=120, call_timeout_s=60)
        engine, = create_engine_actors(c, functools.partial(scripted.ScriptedEngine, "e0"), num_engines=1,
                                       timeout_s=60, ready_timeout_s=120)
        try:
            bundle0 = f"CPU_group_{c.policy_placements[0].bundle_index}_{c.policy_placements[0].placement_group.id.hex()}"
            assert ray.available_resources().get(bundle0, 0.0) == pytest.approx(0.0)  # 0.5 policy + 0.5 engine
            assert policy.run_all("rank") == [0]
            info = ray.get(engine.handle.placement_info.remote(), timeout=60)
            assert info["engine_index"] == 0 and info["bundle_indices"] == [c.policy_placements[0].bundle_index]
            assert engine.tokenizer == {"name": "e0"}
            out = engine.generate([[5, 6]], SamplingParams(n=2))
            assert [o.token_ids for o in out[0]] == [[6, 5, 0], [6, 5, 1]] and out[0][1].text == "e0:1"
            # Refit stream in buckets of <= 100 bytes: three 64-byte tensors -> three actor calls.
            tensors = [(f"model.w{i}", torch.full((16,), float(i))) for i in range(3)]
            engine.bucket_bytes = 100
            engine.update_weights(iter(tensors))
            state = ray.get(engine.handle.call.remote("state"), timeout=60)
            assert state["loads"] == 3 and all(torch.equal(state["weights"][n], t) for n, t in tensors)
            engine.sleep()
            with pytest.raises(WorkerError, match=r"'generation' rank 0 .*generate\(\): RuntimeError: generate called while asleep"):
                engine.generate([[1]], SamplingParams())
            engine.wake()
            assert engine.generate([[1]], SamplingParams())[0][0].token_ids == [1, 0]
            with pytest.raises(WorkerError, match=r"update_weights\(\): KeyError: 'unknown parameter lm.bad'"):
                engine.update_weights([("lm.bad", torch.zeros(1))])
        finally:
            ray.kill(engine.handle, no_restart=True)
            policy.shutdown(timeout_s=10)
    assert _no_placement_groups()


def test_joins_the_cluster_named_by_ray_address(ray_local, repo_root):
    # A second driver process with RAY_ADDRESS joins this module's 2-CPU instance instead of
    # starting its own (it asks for 64 CPUs, which only a new instance would get), and its
    # shutdown leaves the shared cluster running.
    script = (
        "import json, ray\n"
        "from megatron_brrm.config import ParallelConfig, RolloutConfig\n"
        "from megatron_brrm.workers.cluster import Cluster\n"
        "c = Cluster(ParallelConfig(), RolloutConfig(colocated=False), num_cpus=64)\n"
        "res = {'cpus': ray.cluster_resources()['CPU'], 'owns': c._owns_ray, 'engines': c.num_generation_engines}\n"
        "c.shutdown()\n"
        "res['still_connected'] = ray.is_initialized()\n"
        "print('RESULT ' + json.dumps(res))\n"
    )
    env = {**os.environ, "RAY_ADDRESS": ray_local.address_info["gcs_address"], "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=repo_root, env=env, capture_output=True, text=True,
                          timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    assert json.loads(line[7:]) == {"cpus": 2.0, "owns": False, "engines": 1, "still_connected": True}
    assert ray.is_initialized() and _free_cpu() == pytest.approx(2.0)  # ours still up, its groups gone
