"""Refit throughput benchmark: Megatron policy (Ray actors) -> generation engines, vs a plain copy.

    python tools/bench/refit.py [--nodes 1|2] [--hidden 1536 --layers 18 --vocab 32768] [--tp 2] [--pp 1]
                                [--bucket-mb 512] [--transport auto|shm|collective|ray] [--shm-buckets]

Builds a random Qwen3-shaped HF model (default ~0.54B parameters, fp32; 18 layers, so PP=2 splits
them evenly), starts the policy as Ray actors (exactly as the GRPO driver does), then times a
full ``refit`` (best of ``--repeats``) against a **baseline**: a plain ``tensor.copy_`` of the
same bytes (the model's bytes once per engine), measured in the same run right after each
refit, so both see the same machine load. The first refit also pays one-off costs (the
engines' freshly loaded weights are written for the first time; with shared memory they are
moved there), hence 5 repeats.

* ``--nodes 1`` (default): TP ranks on one node and an HF engine in this process; ``auto`` is the
  same-node ``shm`` path (every rank writes its own shards straight into the engine's weights,
  moved into shared memory on the first refit; ``--shm-buckets``: double-buffered buckets).
* ``--nodes 2``: two Ray nodes on this machine (``ray.cluster_utils.Cluster``), PP = 2 with one
  stage per node (``--pp 2 --tp 1`` by default here), one HF engine actor per node (a fleet);
  ``auto`` is the ``collective`` path: each node writes its own stage's shards into its engine's
  shared weights, then relays that byte range as one gloo broadcast into the other node's engine
  (``--tp 2 --pp 2``: the stage's two TP ranks write it, then relay it; ``--tp 2 --pp 1`` has no
  whole stage on a node and sends per shard piece instead).

Prints the refit and baseline throughputs and their ratio (targets: >= 0.8 on one node, >= 0.5
across nodes). With ``--nodes 2`` (PP=2, TP=1) it also measures the **transport floor**: two bare
Ray actors, one per node, exchange exactly the bytes that cross nodes in a refit (each node gets
the other stage's tensors) as two concurrent gloo broadcasts into preallocated buffers, best of
``--repeats``. No refit that moves those bytes through gloo can be faster, so
``baseline / floor`` is the highest ratio this machine allows for the cross-node path. When the
floor keeps every core busy (2 cores: gloo's send and receive copies), the nodes' local writes
of their own stages (half the baseline's bytes) cannot overlap it either, so ``baseline / 2 +
floor`` estimates the fastest refit possible here (printed as the CPU-bound estimate). Each
refit line also gives the machine's busy / total core-seconds during it: equal means the refit
was CPU-bound (on 2 cores the broadcasts' kernel copies and the local writes compete).

A benchmark, not a test: run it with nothing else running; it needs ~6x the model size in RAM.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from megatron_brrm.config import load_config  # noqa: E402
from megatron_brrm.model.build import load_hf_config  # noqa: E402
from megatron_brrm.model.mapping import get_mapping, global_to_local_layer  # noqa: E402
from megatron_brrm.model.tiny import build_tiny_hf_model  # noqa: E402
from megatron_brrm.rollout.hf_engine import HFEngine  # noqa: E402


def stage_bytes(params, hf_dir, pp: int):
    """Bytes of the HF tensors ``params`` (name -> tensor) owned by each of ``pp`` pipeline stages,
    by the trainer's own rule (``mapping.global_to_local_layer``, the one the refit route uses)."""
    mapping = get_mapping(load_hf_config(hf_dir))
    per_stage = [0] * pp
    for name, p in params.items():
        stage = global_to_local_layer(mapping.megatron_name_for_hf(name)[0], pp, mapping.num_layers)[0]
        per_stage[stage] += p.numel() * p.element_size()
    return per_stage


def machine_cpu():
    """``(busy, idle)`` CPU seconds of the whole machine since boot (``/proc/stat``; zeros elsewhere):
    the difference over a refit tells whether it kept every core busy (CPU-bound) or waited."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / hz, idle / hz


def transport_floor(node_ids, nbytes, repeats: int) -> float:
    """Seconds for two concurrent gloo broadcasts between one actor on each of ``node_ids`` (two
    Ray node ids): ``nbytes[k]`` bytes from the actor on node ``k`` to the other, into
    preallocated buffers; best of ``repeats``."""
    import ray  # lazy: keeps bench/refit.py --help fast
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # lazy: as above

    @ray.remote(num_cpus=0)
    class GlooPeer:
        def address(self):
            with socket.socket() as s:
                s.bind(("", 0))
                return ray.util.get_node_ip_address(), s.getsockname()[1]

        def run(self, rank, addr, port, nbytes, repeats):
            dist.init_process_group("gloo", init_method=f"tcp://{addr}:{port}", rank=rank, world_size=2)
            groups = [dist.new_group([0, 1]) for _ in range(2)]  # one per direction: they run concurrently
            bufs = [torch.ones(n // 4) for n in nbytes]  # fp32
            best = float("inf")
            for _ in range(repeats):
                dist.barrier()
                t0 = time.perf_counter()
                works = [dist.broadcast(bufs[k], k, group=groups[k], async_op=True) for k in range(2)]
                for w in works:
                    w.wait()
                best = min(best, time.perf_counter() - t0)
            dist.destroy_process_group()
            return best

    peers = [GlooPeer.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote()
             for n in node_ids]
    addr, port = ray.get(peers[0].address.remote())
    times = ray.get([peer.run.remote(k, addr, port, list(nbytes), repeats) for k, peer in enumerate(peers)])
    for peer in peers:
        ray.kill(peer)
    return max(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, choices=(1, 2), default=1)
    ap.add_argument("--hidden", type=int, default=1536)
    ap.add_argument("--layers", type=int, default=18)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--tp", type=int, default=None, help="default 2 on one node, 1 on two")
    ap.add_argument("--pp", type=int, default=None, help="default 1 on one node, 2 on two")
    ap.add_argument("--bucket-mb", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shm-max-bucket-mb", type=int, default=64, help="shared-memory bucket cap (MiB)")
    ap.add_argument("--shm-buckets", action="store_true",
                    help="load double-buffered buckets even into engines that can share their weights")
    ap.add_argument("--transport", choices=("auto", "shm", "collective", "ray"), default="auto",
                    help="refit transport (rollout.refit_transport)")
    args = ap.parse_args()
    tp = args.tp or (2 if args.nodes == 1 else 1)
    pp = args.pp or (1 if args.nodes == 1 else 2)
    if args.layers % pp:
        ap.error(f"--layers {args.layers} is not divisible by PP = {pp}: "
                 "Megatron gives every stage the same layer count")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning,ignore::FutureWarning")

    import ray  # lazy: keeps bench/refit.py --help fast

    from megatron_brrm.workers.cluster import Cluster  # lazy: keeps bench/refit.py --help fast
    # lazy: keeps bench/refit.py --help fast
    from megatron_brrm.workers.fleet import GenerationFleet, engine_factory_for
    from megatron_brrm.workers.policy_group import Policy  # lazy: keeps bench/refit.py --help fast
    from megatron_brrm.workers.refit import refit  # lazy: keeps bench/refit.py --help fast

    ray_nodes = None
    with tempfile.TemporaryDirectory(prefix="refit-bench-") as tmp:
        hf = build_tiny_hf_model(Path(tmp) / "model", arch="qwen3", vocab_size=args.vocab, hidden_size=args.hidden,
                                 intermediate_size=args.ffn, num_layers=args.layers, num_attention_heads=args.heads,
                                 num_key_value_heads=args.kv_heads, head_dim=args.hidden // args.heads)
        cfg = load_config(None, [f"model.hf_path={hf}", f"parallel.tensor_model_parallel_size={tp}",
                                 f"parallel.pipeline_model_parallel_size={pp}", "parallel.backend=gloo",
                                 "model.transformer_impl=local", "parallel.use_distributed_optimizer=true",
                                 "rollout.colocated=true", "rollout.engine=hf"])  # engines share the policy's CPUs
        kwargs = {}
        if args.nodes == 2:
            from ray.cluster_utils import Cluster as RayNodes  # lazy: keeps bench/refit.py --help fast

            ray_nodes = RayNodes(initialize_head=True, head_node_args={"num_cpus": tp * pp // 2})
            ray_nodes.add_node(num_cpus=tp * pp // 2)
            ray_nodes.wait_for_nodes()
            kwargs["address"] = ray_nodes.address
        cluster = Cluster.from_config(cfg, **kwargs)
        try:
            policy = Policy(cluster, cfg)
            if args.nodes == 2:
                fleet = GenerationFleet(cluster, engine_factory_for(cfg.rollout, hf), timeout_s=600)
                targets, engines = fleet, len(fleet.engines)
                params = dict(HFEngine(str(hf)).model.named_parameters())  # the baseline's destination
            else:
                engine = HFEngine(str(hf))
                targets, engines = [engine], 1
                params = dict(engine.model.named_parameters())
            nbytes = sum(p.numel() * p.element_size() for p in params.values())
            print(f"model: {sum(p.numel() for p in params.values()) / 1e6:.0f}M parameters, {nbytes / 2**30:.2f} GiB "
                  f"fp32; {args.nodes} node(s), TP={tp} PP={pp}, {engines} engine(s), bucket {args.bucket_mb} MiB, "
                  f"transport {args.transport}", flush=True)
            refit_s = copy_s = float("inf")
            for _ in range(args.repeats):  # interleaved, so both see the same machine load
                cpu0 = machine_cpu()
                stats = refit(policy, targets, args.bucket_mb * 2**20, transport=args.transport,
                              shm_max_bucket_bytes=args.shm_max_bucket_mb * 2**20, direct=not args.shm_buckets)
                busy = [b - a for a, b in zip(cpu0, machine_cpu())]
                copy = 0.0
                for _ in range(engines):  # the same bytes: the model once per engine
                    sources = {n: p.detach().clone() for n, p in params.items()}  # freed before the next refit
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        for n, p in params.items():
                            p.copy_(sources[n])
                    copy += time.perf_counter() - t0
                    del sources
                refit_s, copy_s = min(refit_s, stats.seconds), min(copy_s, copy)
                phases = ", ".join(f"{k} {v:.3f}" for k, v in stats.phases.items())
                print(f"refit {stats.seconds:.3f} s ({stats.num_buckets} buckets; machine busy {busy[0]:.2f} of "
                      f"{busy[0] + busy[1]:.2f} core-s), plain copy {copy:.3f} s"
                      + (f"; refit phases (s): {phases}" if phases else ""), flush=True)
            floor_s, crossing = None, None
            if args.nodes == 2 and tp == 1:  # the floor of the PP=2 layout: stage k's bytes go to the other node
                crossing = stage_bytes(params, hf, pp)
                cluster.shutdown()  # the policy's memory back before the floor's buffers
                floor_s = transport_floor(sorted({r.node_id for r in policy.layout}), crossing, args.repeats)
        finally:
            cluster.shutdown()
            if ray_nodes is not None:
                ray.shutdown()
                ray_nodes.shutdown()
    gb = nbytes * engines / 1e9
    target = 0.5 if args.nodes == 2 else 0.8
    print(f"refit:    {refit_s:8.3f} s  {gb / refit_s:7.2f} GB/s  ({engines} engine(s) x the model)")
    print(f"baseline: {copy_s:8.3f} s  {gb / copy_s:7.2f} GB/s  (plain tensor copy of the same bytes)")
    print(f"ratio refit/baseline throughput: {copy_s / refit_s:.3f}  (target >= {target})")
    if floor_s is not None:
        print(f"floor:    {floor_s:8.3f} s  (gloo alone: {crossing[0] / 2**30:.2f} + {crossing[1] / 2**30:.2f} GiB "
              f"crossing the nodes, two concurrent broadcasts into preallocated buffers)")
        estimate = copy_s / 2 + floor_s  # each node's own stage (half the baseline's bytes), then the crossing
        print(f"highest ratio this transport allows (baseline / floor): {copy_s / floor_s:.3f}; "
              f"refit / floor time: {refit_s / floor_s:.2f}x")
        print(f"CPU-bound estimate: {estimate:.3f} s (local writes ~ baseline / 2, then the floor, on the same "
              f"cores): ratio ~ {copy_s / estimate:.3f} at best here; refit / estimate: {refit_s / estimate:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
