"""Who writes which tensor shard into which node's refit buffers: the route of a node-aware refit.

Every node that hosts engines needs every HF tensor of the model in its shared memory (the
engines of a node load from there). A tensor's TP shard ``(stage s, TP rank t)`` reaches node
``n`` one of two ways:

* **locally**: a policy rank on ``n`` holds that shard (pipeline stage ``s``, TP rank ``t``, in
  any data-parallel replica; the lowest DP rank is chosen, CP rank 0): it writes its shard
  straight into the node's buffers (no collective, no copy across the network);
* **through a collective**: no rank on ``n`` holds it; the shard's *source* (the DP-0, CP-0 rank
  with ``(s, t)``) broadcasts it, once per refit bucket, to one *receiver* per such node (the
  node's lowest policy rank), over a process group ``{source} U {receivers}`` (NCCL on GPU, gloo
  on CPU), and each receiver writes it into its node's buffers. A tensor thus leaves its owning
  stage once, and only towards the nodes that lack it.

Placement of the 14B recipe (TP=4, PP=2, DP=8 on 8 nodes, stage 0 on nodes 0-3, stage 1 on nodes
4-7): every node writes its own stage's shards locally and receives the other stage's, from the
DP-0 replica of that stage. Every node, engine and rank is identified by its Ray node id, never
by host name. A node with engines but no policy rank cannot be served this way
(:class:`RouteError`; the driver then falls back to the Ray object-store stream).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

ShardKey = Tuple[int, int]  # (pipeline stage, TP rank)


class RouteError(RuntimeError):
    """No route serves these nodes (a node hosts engines but no policy rank); the message names it."""


@dataclass(frozen=True)
class BroadcastGroup:
    """One shard's collective: ``source`` broadcasts shard ``key`` to ``receivers`` (global ranks)."""

    key: ShardKey
    source: int
    receivers: Tuple[int, ...]

    @property
    def ranks(self) -> Tuple[int, ...]:
        """Sorted members (``torch.distributed.new_group`` takes them in this order on every rank)."""
        return tuple(sorted((self.source,) + self.receivers))


@dataclass(frozen=True)
class RefitRoute:
    """The route of a node-aware refit (module docstring).

    Attributes:
        node_of: ``{global rank: Ray node id}`` of every policy rank.
        nodes: the node ids that host engines, in a fixed order.
        writers: ``{(node id, stage, tp rank): global rank}`` writing that shard locally.
        receivers: ``{node id: global rank}`` receiving the node's missing shards (only nodes that miss some).
        groups: one :class:`BroadcastGroup` per shard that some node misses, ordered by key.
        tp_size, pp_size: the policy's layout.
    """

    node_of: Dict[int, str]
    nodes: Tuple[str, ...]
    writers: Dict[Tuple[str, int, int], int]
    receivers: Dict[str, int]
    groups: Tuple[BroadcastGroup, ...]
    tp_size: int
    pp_size: int

    @property
    def is_local(self) -> bool:
        """True when every engine node holds every shard itself (no collective: the same-node path)."""
        return not self.groups

    def group_for(self, key: ShardKey):
        """The :class:`BroadcastGroup` of shard ``key``, or None when every node holds it."""
        for g in self.groups:
            if g.key == key:
                return g
        return None

    def stage_sources(self, stage: int) -> Tuple[int, ...]:
        """Sorted sources of pipeline stage ``stage``'s broadcast groups (one per TP shard a node
        misses; empty when no node misses the stage)."""
        return tuple(sorted({g.source for g in self.groups if g.key[0] == stage}))

    def describe(self) -> str:
        """One line per node: which shards it writes itself and which it receives (for logs/errors)."""
        lines = []
        for n in self.nodes:
            local = sorted((s, t) for (node, s, t) in self.writers if node == n)
            remote = sorted(g.key for g in self.groups if self.receivers.get(n) in g.receivers)
            lines.append(f"node {n[:12]}: writes (stage, tp) {local}; receives {remote} on rank {self.receivers.get(n)}")
        return "; ".join(lines)


def plan_route(layout: Sequence, engine_nodes: Sequence[str]) -> RefitRoute:
    """The :class:`RefitRoute` for policy ranks ``layout`` and engines on ``engine_nodes``.

    Args:
        layout: one entry per policy rank with ``rank``, ``tp_rank``, ``tp_size``, ``pp_rank``,
            ``pp_size``, ``dp_rank``, ``cp_rank`` and ``node_id`` attributes
            (:class:`~megatron_brrm.workers.policy_group.RankLayout`).
        engine_nodes: Ray node ids of the engines (repeats allowed).

    Raises:
        RouteError: an engine node has no policy rank.
    """
    ranks = sorted(layout, key=lambda r: r.rank)
    tp, pp = ranks[0].tp_size, ranks[0].pp_size
    nodes = tuple(dict.fromkeys(engine_nodes))
    node_of = {r.rank: r.node_id for r in ranks}
    on_node: Dict[str, List] = {}
    for r in ranks:
        on_node.setdefault(r.node_id, []).append(r)
    bare = [n for n in nodes if n not in on_node]
    if bare:
        raise RouteError(f"engine node(s) {[n[:12] for n in bare]} host no policy rank, so no rank can write their "
                         "refit buffers (split placement): use rollout.refit_transport=ray")
    sources = {(r.pp_rank, r.tp_rank): r.rank for r in ranks if r.dp_rank == 0 and r.cp_rank == 0}
    writers: Dict[Tuple[str, int, int], int] = {}
    receivers: Dict[str, int] = {}
    wanted: Dict[ShardKey, List[int]] = {}
    for n in nodes:
        for s in range(pp):
            for t in range(tp):
                local = [r for r in on_node[n] if r.pp_rank == s and r.tp_rank == t and r.cp_rank == 0]
                if local:
                    writers[(n, s, t)] = min(local, key=lambda r: (r.dp_rank, r.rank)).rank
                else:
                    receivers.setdefault(n, min(r.rank for r in on_node[n]))
                    wanted.setdefault((s, t), []).append(receivers[n])
    groups = tuple(BroadcastGroup(k, sources[k], tuple(sorted(set(v)))) for k, v in sorted(wanted.items()))
    return RefitRoute(node_of=node_of, nodes=nodes, writers=writers, receivers=receivers, groups=groups,
                      tp_size=tp, pp_size=pp)
