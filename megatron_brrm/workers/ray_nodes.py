"""Wait until every named node has joined a Ray cluster (used by ``slurm/ray_bootstrap.sh``).

``python -m megatron_brrm.workers.ray_nodes --address HOST:PORT --nodes n1,n2 --timeout 300``
connects once and polls ``ray.nodes()`` until an alive node carries each name (the bootstrap
starts every node with ``ray start --node-name=<SLURM hostname>``). It exits 0 when all have
joined, and 1 with one line naming the missing nodes when the timeout passes, so a job whose
worker node never came up stops early instead of training on part of the allocation.

Imports only Ray (no torch), so it starts in about a second.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Iterable, List, Optional, Sequence, Set


class NodesMissingError(RuntimeError):
    """Some nodes did not join in time; ``missing`` lists them in the order they were asked for."""

    def __init__(self, missing: List[str], joined: List[str], timeout_s: float):
        self.missing, self.joined = missing, joined
        super().__init__(f"after {timeout_s:g} s, {len(joined)} of {len(joined) + len(missing)} node(s) joined the "
                         f"Ray cluster; missing: {', '.join(missing)}")


def alive_node_names() -> Set[str]:
    """Names (``NodeName``, else the node IP) of the alive nodes of the connected Ray cluster."""
    import ray  # lazy: keeps ray_nodes --help fast

    return {n.get("NodeName") or n.get("NodeManagerAddress") for n in ray.nodes() if n.get("Alive")}


def wait_for_nodes(names: Sequence[str], timeout_s: float, poll_s: float = 1.0,
                   alive: Callable[[], Iterable[str]] = alive_node_names,
                   clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> List[str]:
    """Poll ``alive()`` until every name in ``names`` is present.

    Args:
        names: node names to wait for (duplicates are ignored).
        timeout_s: seconds before giving up (>= 0; at least one poll is made).
        poll_s: seconds between polls.
        alive: returns the names of the alive nodes (default: the connected Ray cluster's).
        clock, sleep: time source and sleep (injectable for tests).

    Returns:
        ``names`` (de-duplicated, in order) once all have joined.

    Raises:
        NodesMissingError: the timeout passed; the message names the missing nodes.
    """
    wanted = list(dict.fromkeys(names))
    deadline = clock() + timeout_s
    while True:
        have = set(alive())
        missing = [n for n in wanted if n not in have]
        if not missing:
            return wanted
        if clock() >= deadline:
            raise NodesMissingError(missing, [n for n in wanted if n in have], timeout_s)
        sleep(poll_s)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megatron_brrm.workers.ray_nodes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", required=True, help="Ray cluster address, HOST:PORT of the head's GCS")
    p.add_argument("--nodes", required=True, help="comma-separated node names to wait for")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default 300)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between polls (default 1)")
    args = p.parse_args(argv)
    names = [n for n in args.nodes.split(",") if n]
    if not names:
        p.error("--nodes: give at least one node name")
    import ray  # lazy: keeps ray_nodes --help fast

    try:
        ray.init(address=args.address, logging_level="ERROR", log_to_driver=False)
    except Exception as exc:  # ConnectionError, TimeoutError, ...
        print(f"ray_nodes: cannot connect to the Ray head at {args.address}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    try:
        t0 = time.monotonic()
        wait_for_nodes(names, args.timeout, args.poll)
        print(f"ray_nodes: all {len(names)} node(s) joined in {time.monotonic() - t0:.1f} s: {', '.join(names)}")
        return 0
    except NodesMissingError as exc:
        print(f"ray_nodes: {exc}", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
