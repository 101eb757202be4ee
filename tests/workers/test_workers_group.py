"""WorkerGroup on a private 2-CPU Ray instance: rendezvous env, gloo collectives, per-rank
arguments, and the errors a caller sees when a rank raises, dies, hangs or fails to start."""
from __future__ import annotations

import os
import socket
import sys
import time

import pytest
import ray
from ray import cloudpickle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from megatron_brrm.config import ParallelConfig, RolloutConfig
from megatron_brrm.workers import Cluster, ClusterError, WorkerError, WorkerGroup
from megatron_brrm.workers.worker_group import _free_port

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(180)]

# Ray workers cannot import this test module (pytest puts tests/workers on the driver's
# sys.path only), so the actor classes below travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class DistWorker:
    """Joins the gloo world from the env:// variables the WorkerGroup sets."""

    def __init__(self):
        import datetime

        import torch.distributed as dist

        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
        self.rank = dist.get_rank()

    def env(self) -> dict:
        import torch.distributed as dist

        keys = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK",
                "OMP_NUM_THREADS", "BRRM_WORKER_GROUP")
        return {**{k: os.environ.get(k) for k in keys}, "dist_rank": dist.get_rank(),
                "dist_world": dist.get_world_size(), "pid": os.getpid()}

    def all_reduce(self, value: float) -> float:
        import torch
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item())

    def echo(self, *args, **kwargs):
        return self.rank, args, kwargs

    def fail_on(self, rank: int, text: str) -> int:
        if self.rank == rank:
            raise ValueError(f"{text} on rank {self.rank}")
        return self.rank

    def sleep(self, seconds: float) -> int:
        time.sleep(seconds)
        return self.rank

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class PlainWorker:
    """No process group: for failure tests that must not leave ranks blocked in a collective."""

    def __init__(self, fail_rank: int = -1):
        if int(os.environ["RANK"]) == fail_rank:
            raise RuntimeError(f"init exploded on rank {fail_rank}")

    def exit_if(self, flag: bool) -> int:
        if flag:
            os._exit(7)
        return int(os.environ["RANK"])


@pytest.fixture(scope="module")
def cluster():
    """The module's Ray: started by the Cluster itself (it owns it), stopped by its shutdown."""
    if ray.is_initialized():
        ray.shutdown()
    # TP=2 on CPU -> 2 policy ranks; colocated engines -> each actor takes half a 1-CPU bundle.
    c = Cluster(ParallelConfig(tensor_model_parallel_size=2), RolloutConfig(colocated=True), address="local",
                num_cpus=2, object_store_memory=128 * 1024 * 1024)
    try:
        yield c
    finally:
        c.shutdown()
        if ray.is_initialized():  # belt and braces: never leave Ray running after the module
            ray.shutdown()


@pytest.fixture(scope="module")
def dist_group(cluster):
    group = WorkerGroup(cluster, DistWorker, 2, name="policy-test", init_timeout_s=120, call_timeout_s=60)
    try:
        yield group
    finally:
        group.shutdown()


def test_rendezvous_env_and_gloo_all_reduce(cluster, dist_group):
    envs = dist_group.run_all("env")
    node_ip = cluster.policy_placements[0].node_ip
    for rank, env in enumerate(envs):
        assert env["RANK"] == str(rank) and env["dist_rank"] == rank
        assert env["WORLD_SIZE"] == "2" and env["dist_world"] == 2
        assert env["LOCAL_RANK"] == str(rank) and env["LOCAL_WORLD_SIZE"] == "2" and env["NODE_RANK"] == "0"
        assert env["MASTER_ADDR"] == node_ip and env["OMP_NUM_THREADS"] == "1"
        assert env["BRRM_WORKER_GROUP"] == "policy-test"
    assert envs[0]["MASTER_PORT"] == envs[1]["MASTER_PORT"] == str(dist_group.master_port)
    assert envs[0]["pid"] != envs[1]["pid"]  # two processes, one gloo world
    # Same argument on both ranks: the sum over 2 ranks is 2x; exact in float64.
    assert dist_group.run_all("all_reduce", 1.25) == [2.5, 2.5]


def test_run_all_sharded_gives_each_rank_its_args(dist_group):
    # Each rank contributes its own value; both must see the sum 1.5 + 2.25 = 3.75 (exact in binary).
    assert dist_group.run_all_sharded("all_reduce", [(1.5,), (2.25,)]) == [3.75, 3.75]
    out = dist_group.run_all_sharded("echo", [("a",), ("b", 2)], [{"k": 0}, {"k": 1}], shared="s")
    assert out == [(0, ("a",), {"k": 0, "shared": "s"}), (1, ("b", 2), {"k": 1, "shared": "s"})]
    with pytest.raises(TypeError, match=r"per_rank_args\[0\].*tuple"):
        dist_group.run_all_sharded("echo", ["a", "b"])
    with pytest.raises(ValueError, match="3 entries, world size is 2"):
        dist_group.run_all_sharded("echo", [(1,), (2,), (3,)])


def test_single_rank_and_async_calls(dist_group):
    assert dist_group.run_rank(0, "echo", 5, x=1) == (0, (5,), {"x": 1})
    assert dist_group.run_rank(1, "echo", 6) == (1, (6,), {})
    with pytest.raises(ValueError, match="rank 2 outside 0..1"):
        dist_group.run_rank(2, "echo")
    fut = dist_group.run_all_async("all_reduce", 0.5)
    fut0 = dist_group.run_rank_async(0, "echo", "r0")
    assert fut.result(timeout_s=60) == [1.0, 1.0]
    assert fut0.result(timeout_s=60) == (0, ("r0",), {})
    assert fut.done() and fut0.done()
    sharded = dist_group.run_all_sharded_async("echo", [(10,), (11,)])
    assert [r[1] for r in sharded.result()] == [(10,), (11,)]


def test_raising_rank_gives_worker_error_and_group_survives(cluster, dist_group):
    with pytest.raises(WorkerError) as info:
        dist_group.run_all("fail_on", 1, "boom-7c1f")
    err = info.value
    assert (err.group, err.rank, err.method) == ("policy-test", 1, "fail_on")
    msg = str(err)
    assert "worker group 'policy-test' rank 1" in msg and "fail_on()" in msg
    assert "ValueError: boom-7c1f on rank 1" in msg  # the original exception type and text
    assert cluster.policy_placements[1].node_ip in msg
    # A raise does not kill the actor: the world still works.
    assert dist_group.run_all("all_reduce", 1.0) == [2.0, 2.0]


def test_timeout_and_unknown_method(dist_group):
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match=r"sleep\(\): timed out after 0.3 s \(ranks still running: \[0, 1\]"):
        dist_group.run_all("sleep", 1.5, timeout_s=0.3)
    assert time.monotonic() - t0 < 1.4  # the caller got control back before the call finished
    assert dist_group.run_all("all_reduce", 1.0, timeout_s=60) == [2.0, 2.0]  # queued behind the sleep
    with pytest.raises(AttributeError, match="DistWorker has no method 'no_such_method'"):
        dist_group.run_all("no_such_method")


def test_gpu_options_on_a_cpu_only_cluster_are_errors(cluster):
    with pytest.raises(ClusterError, match="gpus_per_node = 8 was given but the Ray cluster has no GPUs"):
        Cluster(ParallelConfig(), RolloutConfig(), gpus_per_node=8)
    with pytest.raises(ClusterError, match="use_gpu = True but the Ray cluster has no GPUs"):
        Cluster(ParallelConfig(), RolloutConfig(), use_gpu=True)
    assert ray.is_initialized()  # a failed Cluster on a Ray it did not start leaves Ray alone


def test_init_failure_names_rank_and_cause(cluster):
    with pytest.raises(WorkerError) as info:
        WorkerGroup(cluster, PlainWorker, 2, kwargs={"fail_rank": 1}, name="bad-init", init_timeout_s=120)
    err = info.value
    assert (err.group, err.rank, err.method) == ("bad-init", 1, "__init__")
    assert "init exploded on rank 1" in str(err)
    assert all(g.name != "bad-init" for g in cluster._groups)  # killed and forgotten


def test_dead_rank_gives_worker_error_and_shutdown_frees_bundles(cluster, dist_group, wait_until):
    key = f"CPU_group_{cluster.policy_placements[0].placement_group.id.hex()}"
    free = lambda: ray.available_resources().get(key, 0.0)  # noqa: E731
    # 2 bundles x 1 CPU; the module's dist_group holds half of each: 1.0 CPU free (once the
    # previous test's killed actors are released).
    assert wait_until(lambda: free() == pytest.approx(1.0), timeout_s=15)
    group = WorkerGroup(cluster, PlainWorker, 2, name="doomed", init_timeout_s=120, call_timeout_s=60)
    assert free() == pytest.approx(0.0) and ray.available_resources().get("CPU", 0.0) == 0.0  # every CPU held
    # The zero-CPU helper task (free port on a given node) still runs while actors hold every
    # CPU (docs/design.md §7: a 1-CPU task would wait for ever); the port it returns can be bound.
    pinned = NodeAffinitySchedulingStrategy(cluster.policy_placements[0].node_id, soft=False)
    port = ray.get(_free_port.options(scheduling_strategy=pinned).remote(), timeout=60)
    with socket.socket() as s:
        s.bind(("", port))
    handles = group.actors
    try:
        with pytest.raises(WorkerError) as info:
            group.run_all_sharded("exit_if", [(False,), (True,)])
        err = info.value
        assert (err.group, err.rank, err.method) == ("doomed", 1, "exit_if")
        assert "worker group 'doomed' rank 1" in str(err) and "actor died" in str(err)
        assert cluster.policy_placements[1].node_ip in str(err)
        # The dead rank stays dead: the next call names it again.
        with pytest.raises(WorkerError, match=r"worker group 'doomed' rank 1 .* failed in exit_if\(\)"):
            group.run_all("exit_if", False)
    finally:
        group.shutdown(timeout_s=10)  # must not raise with a dead rank
    assert wait_until(lambda: free() == pytest.approx(1.0), timeout_s=15)  # bundles back
    for h in handles:  # Ray reports both actors dead, the surviving rank 0 included
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(h.__ray_ready__.remote(), timeout=15)
    with pytest.raises(RuntimeError, match="'doomed' has been shut down"):
        group.run_all("exit_if", False)
    group.shutdown()  # idempotent
    assert dist_group.run_all("all_reduce", 1.0) == [2.0, 2.0]  # the other group is untouched


def test_cluster_shutdown_stops_groups_and_its_own_ray(cluster, dist_group):
    # Runs last: the module's Cluster started Ray, so its shutdown stops the registered
    # worker groups and then Ray itself (the fixtures' finalizers are then no-ops).
    assert cluster._owns_ray and cluster._groups == [dist_group] and len(dist_group.actors) == 2
    cluster.shutdown()
    assert dist_group._actors is None and cluster._groups == []  # the group was shut down first
    assert not ray.is_initialized()
    cluster.shutdown()  # idempotent
    dist_group.shutdown()  # and a group whose Ray is gone shuts down quietly
