"""Cluster placement on a private Ray instance with 2 CPUs and 2 *logical* GPUs.

Declaring GPUs makes Ray schedule ``{"GPU": 1, "CPU": 1}`` bundles and set
``CUDA_VISIBLE_DEVICES`` per actor exactly as on a GPU node, so the GPU placement path
(sizes from nodes x GPUs, colocated device sharing, split engines) runs on this CPU-only
machine; no test touches a device. CPU placement uses ``use_gpu=False`` on the same instance.
Also: resource errors, joining a cluster through RAY_ADDRESS, engines in their own actors.
"""
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

from megatron_brrm.config import ParallelConfig, RolloutConfig, load_config
from megatron_brrm.rollout.engine import SamplingParams
from megatron_brrm.workers import Cluster, ClusterError, WorkerError, WorkerGroup, create_engine_actors

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(180)]

RAY_NUM_GPUS = 2  # read by the ray_local fixture (tests/workers/conftest.py)

sys.path.insert(0, os.path.dirname(__file__))
import test_workers_actors as scripted  # noqa: E402  (ScriptedEngine)

# Ray workers cannot import the test modules (only the driver has tests/workers on sys.path).
cloudpickle.register_pickle_by_value(scripted)
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TP2 = ParallelConfig(tensor_model_parallel_size=2)


def _free(resource: str = "CPU") -> float:
    return ray.available_resources().get(resource, 0.0)


def _all_released() -> bool:
    avail = ray.available_resources()
    return (avail.get("CPU") == 2.0 and avail.get("GPU") == 2.0
            and not any("_group_" in k for k in avail))  # no placement group left


class RankProbe:
    def probe(self) -> dict:
        return {"rank": int(os.environ["RANK"]), "local_rank": int(os.environ["LOCAL_RANK"]),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def test_cpu_placement_colocated_and_split(ray_local):
    with Cluster(TP2, RolloutConfig(colocated=True), use_gpu=False) as c:
        assert (c.policy_world_size, c.dp_size, c.num_generation_engines, c.use_gpu) == (2, 1, 2, False)
        pg = c.policy_placements[0].placement_group
        assert pg.bundle_specs == [{"CPU": 1.0}, {"CPU": 1.0}]
        for rank, e in enumerate(c.engine_placements):
            policy = c.policy_placements[rank]
            assert e.placement_group.id == pg.id and e.bundle_indices == [policy.bundle_index]  # shared bundle
            assert (e.actor.num_cpus, policy.num_cpus, e.actor.num_gpus) == (0.5, 0.5, 0.0)  # half each
        assert _free("CPU") == 0.0 and _free("GPU") == 2.0
    cfg = load_config(None, ["parallel.tensor_model_parallel_size=2", "rollout.tensor_parallel_size=2"])
    with Cluster.from_config(cfg, use_gpu=False) as c:  # the same from a RunConfig
        assert (c.policy_world_size, c.num_generation_engines) == (2, 1)
        assert c.engine_placements[0].bundle_indices == [p.bundle_index for p in c.policy_placements]
    c = Cluster(ParallelConfig(), RolloutConfig(colocated=False), use_gpu=False)
    try:
        assert (c.policy_world_size, c.num_generation_engines) == (1, 1)
        e, p = c.engine_placements[0], c.policy_placements[0]
        assert e.placement_group.id != p.placement_group.id  # a placement group of its own
        assert (e.actor.num_cpus, p.num_cpus) == (1.0, 1.0)
    finally:
        c.shutdown()
    # These Clusters joined an existing Ray: shutdown frees their placement groups, Ray stays up.
    assert ray.is_initialized() and _all_released()


def test_gpu_placement_from_nodes_and_gpus(ray_local):
    with Cluster(TP2, RolloutConfig(colocated=True)) as c:  # GPUs detected: all of them, colocated
        assert (c.use_gpu, c.num_nodes, c.gpus_per_node, c.policy_world_size, c.num_generation_engines) == \
            (True, 1, 2, 2, 2)
        assert c.policy_placements[0].placement_group.bundle_specs == [{"GPU": 1.0, "CPU": 1.0}] * 2
        assert [(p.num_gpus, p.num_cpus) for p in c.policy_placements] == [(0.5, 0.5)] * 2
        assert [(e.actor.num_gpus, e.actor.num_cpus) for e in c.engine_placements] == [(0.5, 0.5)] * 2
    with Cluster(ParallelConfig(), RolloutConfig(colocated=True, tensor_parallel_size=2), policy_world_size=2) as c:
        e = c.engine_placements[0]
        # TP>1 engine: its host actor holds no GPU; the engine's TP workers claim the bundles' GPUs.
        assert c.dp_size == 2 and e.bundle_indices == [0, 1] and e.actor.num_gpus == 0.0
    with Cluster(ParallelConfig(), RolloutConfig(colocated=False), num_generation_engines=1) as c:
        assert (c.policy_world_size, c.num_generation_engines) == (1, 1)  # 2 GPUs = 1 train + 1 generate
        assert (c.policy_placements[0].num_gpus, c.engine_placements[0].actor.num_gpus) == (1.0, 1.0)
        assert _free("GPU") == 0.0
    assert _all_released()


def test_insufficient_resources_say_what_is_needed(ray_local):
    with pytest.raises(ClusterError) as info:
        Cluster(TP2, RolloutConfig(colocated=False), use_gpu=False)
    msg = str(info.value)
    assert "needed 3 CPU" in msg and "available 2 CPU" in msg
    assert "2 CPU rank(s) = TP 2 x PP 1 x CP 1 x DP 1" in msg and "1 generation engine(s) x TP 1" in msg
    with pytest.raises(ClusterError, match=r"needed 4 CPU, 4 GPU .*4 GPU\(s\) = TP 2 x PP 1 x CP 1 x DP 2.*"
                                           r"available 2 CPU, 2 GPU"):
        Cluster(TP2, RolloutConfig(), num_nodes=2, gpus_per_node=2)
    assert _all_released()  # nothing leaked


def test_bad_sizes_name_the_config_keys(ray_local):
    cases = [
        (dict(parallel=TP2, policy_world_size=3, use_gpu=False),
         r"policy world size 3 is not a multiple of TP\*PP\*CP = 2 \(parallel.tensor_model_parallel_size=2"),
        (dict(rollout=RolloutConfig(tensor_parallel_size=2), use_gpu=False),
         r"policy world size 1 is not a multiple of rollout.tensor_parallel_size = 2"),
        (dict(parallel=ParallelConfig(pipeline_model_parallel_size=0)), r"parallel.pipeline_model_parallel_size = 0"),
        (dict(rollout=RolloutConfig(tensor_parallel_size=4)),
         r"rollout.tensor_parallel_size = 4 exceeds gpus_per_node = 2"),
        (dict(rollout=RolloutConfig(colocated=False)), r"rollout.colocated = false on GPU needs policy_world_size or "
                                                       r"num_generation_engines"),
        (dict(rollout=RolloutConfig(colocated=False), num_generation_engines=2), r"policy world size is 0"),
    ]
    for kw, pattern in cases:
        par, rol = kw.pop("parallel", ParallelConfig()), kw.pop("rollout", RolloutConfig())
        with pytest.raises(ClusterError, match=pattern):
            Cluster(par, rol, **kw)
    assert _all_released()


def test_engine_actor_shares_a_device_with_its_policy_rank(ray_local):
    with Cluster(TP2, RolloutConfig(colocated=True)) as c:
        policy = WorkerGroup(c, RankProbe, 2, name="policy", init_timeout_s=120, call_timeout_s=60)
        engine, = create_engine_actors(c, functools.partial(scripted.ScriptedEngine, "e0"), num_engines=1,
                                       timeout_s=60, ready_timeout_s=120)
        try:
            probes = policy.run_all("probe")
            assert [(p["rank"], p["local_rank"]) for p in probes] == [(0, 0), (1, 1)]
            devices = [p["cuda_visible_devices"] for p in probes]
            assert sorted(devices) == ["0", "1"]  # Ray gave each rank its own device
            info = ray.get(engine.handle.placement_info.remote(), timeout=60)
            assert info["engine_index"] == 0 and info["bundle_indices"] == [c.policy_placements[0].bundle_index]
            assert info["cuda_visible_devices"] == devices[0]  # colocated: the engine shares rank 0's device
            p0 = c.policy_placements[0]
            bundle0 = f"GPU_group_{p0.bundle_index}_{p0.placement_group.id.hex()}"
            assert ray.available_resources().get(bundle0, 0.0) == 0.0  # 0.5 policy + 0.5 engine
            assert engine.tokenizer == {"name": "e0"}
            out = engine.generate([[5, 6]], SamplingParams(n=2))
            assert [o.token_ids for o in out[0]] == [[6, 5, 0], [6, 5, 1]] and out[0][1].text == "e0:1"
            # Refit stream in buckets of <= 100 bytes: three 64-byte tensors of three modules -> three
            # actor calls (tensors of one module would share a call: rollout.refit.fused_module_key).
            tensors = [(f"model.m{i}.weight", torch.full((16,), float(i))) for i in range(3)]
            engine.bucket_bytes = 100
            engine.update_weights(iter(tensors))
            state = ray.get(engine.handle.call.remote("state"), timeout=60)
            assert state["loads"] == 3 and all(torch.equal(state["weights"][n], t) for n, t in tensors)
            engine.sleep()
            with pytest.raises(WorkerError, match=r"'generation' rank 0 .*generate\(\): RuntimeError: generate "
                                                  r"called while asleep"):
                engine.generate([[1]], SamplingParams())
            engine.wake()
            ref = engine.generate_async([[1]], SamplingParams())
            assert engine.get(ref)[0][0].token_ids == [1, 0]
            with pytest.raises(WorkerError, match=r"update_weights\(\): KeyError: 'unknown parameter lm.bad'"):
                engine.update_weights([("lm.bad", torch.zeros(1))])
        finally:
            ray.kill(engine.handle, no_restart=True)
            policy.shutdown(timeout_s=10)
    assert _all_released()


def test_joins_the_cluster_named_by_ray_address(ray_local, repo_root):
    # A second driver process with RAY_ADDRESS joins this module's instance instead of starting
    # its own (it asks for 64 CPUs, which only a new instance would have), places a split
    # cluster on it (1 GPU training + 1 GPU generation), and its shutdown leaves Ray running.
    script = (
        "import json, ray\n"
        "from megatron_brrm.config import ParallelConfig, RolloutConfig, load_config\n"
        "from megatron_brrm.workers.cluster import Cluster\n"
        "c = Cluster(ParallelConfig(), RolloutConfig(colocated=False), num_cpus=64, policy_world_size=1)\n"
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
    assert ray.is_initialized() and _all_released()  # ours still up, its placement groups gone
