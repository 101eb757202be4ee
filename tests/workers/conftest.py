"""Ray fixtures for the worker tests: one private local Ray instance per test module.

Ray starts in ~5 s here (10-20 s under load), so a module starts it once and its finalizer
always stops it, even when a test fails. Actors get OMP_NUM_THREADS=1 from the WorkerGroup /
engine-actor environment (2-core machine).
"""
from __future__ import annotations

import time

import pytest

RAY_CPUS = 2


@pytest.fixture(scope="module")
def ray_local(request):
    """A private 2-CPU Ray instance (no dashboard, small object store) for the whole module.

    A test module may set ``RAY_NUM_GPUS = n`` to declare n logical GPUs: Ray then schedules
    GPU bundles and sets ``CUDA_VISIBLE_DEVICES`` per actor exactly as on a GPU node, which
    exercises the GPU placement path on a CPU-only machine (nothing touches a real device).
    """
    import ray

    if ray.is_initialized():  # a previous module's failure must not leak into this one
        ray.shutdown()
    ctx = ray.init(address="local", num_cpus=RAY_CPUS, num_gpus=getattr(request.module, "RAY_NUM_GPUS", 0),
                   include_dashboard=False, object_store_memory=128 * 1024 * 1024, log_to_driver=True)
    try:
        yield ctx
    finally:
        ray.shutdown()


def wait_for(predicate, timeout_s: float = 15.0, interval_s: float = 0.1) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout_s`` passes; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval_s)


@pytest.fixture
def wait_until():
    """The :func:`wait_for` poller (fixtures avoid importing one conftest module from tests)."""
    return wait_for


@pytest.fixture(scope="module")
def two_ray_nodes():
    """Two Ray nodes on this machine (``ray.cluster_utils.Cluster``: a head and one worker raylet,
    1 CPU each, distinct node ids), for the cross-node paths. Yields the cluster's address; every
    process it started is stopped at the end."""
    import ray
    from ray.cluster_utils import Cluster as RayNodes

    if ray.is_initialized():
        ray.shutdown()
    nodes = RayNodes(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                           "object_store_memory": 128 * 1024 * 1024})
    try:
        nodes.add_node(num_cpus=1, object_store_memory=128 * 1024 * 1024)
        nodes.wait_for_nodes()
        yield nodes.address
    finally:
        ray.shutdown()
        nodes.shutdown()
