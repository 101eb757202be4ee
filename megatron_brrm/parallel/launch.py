"""Run a function on N local ranks (one process each), for tests, tools and the CPU demo.

Each child process gets ``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``, ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` in its environment and calls ``fn(rank, world_size,
*args)``. The return values come back in rank order. A child that raises makes
:func:`run_on_ranks` raise :class:`RankError` with that child's traceback; a run that
exceeds ``timeout_s`` kills every child and raises :class:`TimeoutError`. Children are
always reaped, so a failed test leaves no stray process behind.
"""
from __future__ import annotations

import os
import queue
import socket
import time
import traceback
from typing import Any, Callable, List, Optional, Sequence

import torch.multiprocessing as mp


class RankError(RuntimeError):
    """A rank raised; the message holds the rank number and its traceback."""


def find_free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(fn, rank: int, world_size: int, port: int, args: Sequence[Any], env: dict, results) -> None:
    os.environ.update({
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
        "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size), "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
    })
    os.environ.update(env)
    try:
        out = fn(rank, world_size, *args)
        results.put((rank, True, out))
    except BaseException:  # report everything, including SystemExit, to the parent
        results.put((rank, False, traceback.format_exc()))


def run_on_ranks(
    fn: Callable[..., Any], world_size: int, args: Sequence[Any] = (), timeout_s: float = 300.0,
    env: Optional[dict] = None,
) -> List[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` spawned processes.

    Args:
        fn: a picklable (module-level) function.
        world_size: number of ranks.
        args: extra picklable arguments.
        timeout_s: wall-clock limit for the whole run, in seconds.
        env: extra environment variables for the children.

    Returns:
        The return values of ``fn``, indexed by rank (they must be picklable).

    Raises:
        RankError: a rank raised (the first failing rank's traceback is included).
        TimeoutError: the run took longer than ``timeout_s``; all ranks are killed.
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = find_free_port()
    procs = [ctx.Process(target=_child, args=(fn, r, world_size, port, tuple(args), dict(env or {}), results), daemon=False)
             for r in range(world_size)]
    for p in procs:
        p.start()
    outputs: dict = {}
    failure = None
    deadline = time.monotonic() + timeout_s
    try:
        while len(outputs) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"run_on_ranks: {world_size} ranks did not finish within {timeout_s:.0f} s "
                                   f"(finished: {sorted(outputs)})")
            try:
                rank, ok, value = results.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                dead = [i for i, p in enumerate(procs) if p.exitcode not in (None, 0) and i not in outputs]
                if dead:
                    raise RankError(f"rank {dead[0]} exited with code {procs[dead[0]].exitcode} without reporting")
                continue
            if not ok:
                failure = RankError(f"rank {rank} failed:\n{value}")
                break
            outputs[rank] = value
        if failure is not None:
            raise failure
        for p in procs:
            p.join(timeout=max(1.0, deadline - time.monotonic()))
        return [outputs[r] for r in range(world_size)]
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(timeout=5)
        results.close()
