"""Refit throughput benchmark: Megatron policy (TP=2, Ray actors) -> HF engine, vs a plain copy.

    python tools/bench/refit.py [--hidden 1536 --layers 17 --vocab 32768] [--tp 2] [--bucket-mb 512]
                                [--transport auto|shm|ray] [--shm-buckets] [--shm-max-bucket-mb 64]

Builds a random Qwen3-shaped HF model (default ~0.5B parameters, fp32), starts the policy
as TP ranks in Ray actors (exactly as the GRPO driver does) and an HF engine in this
process, then times:

* **refit**: a full refit (``refit_from_policy``), best of ``--repeats``, through the chosen
  transport: ``shm`` (same node: every rank writes its own TP shards straight into the
  engine's weights, moved into shared memory on the first refit; with ``--shm-buckets``
  into double-buffered shared-memory buckets that the engine copies out), ``ray`` (TP
  all-gather per tensor on the ranks, bucketing, Ray object-store transfer to the driver,
  ``engine.update_weights``), or ``auto`` (``shm`` here: everything runs on this node).
  Each refit prints its time breakdown (``RefitStats.phases``);
* **baseline**: a plain ``tensor.copy_`` of the same bytes into the engine's parameters,
  measured in the same run, right after each refit (so both see the same machine load;
  the source copy exists only while it is measured), best of ``--repeats``. The first refit
  also pays one-off costs (the engine's freshly loaded weights are written for the first
  time; with ``shm`` they are moved into shared memory), hence the default of 5 repeats.

Prints both throughputs and their ratio (target >= 0.5: refit moves the bytes at least half
as fast as a local copy). A benchmark, not a test: it needs ~4x the model size in RAM.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=1536)
    ap.add_argument("--layers", type=int, default=17)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--bucket-mb", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shm-max-bucket-mb", type=int, default=64, help="shm transport: bucket cap (MiB)")
    ap.add_argument("--shm-buckets", action="store_true",
                    help="shm transport: load double-buffered buckets even into an engine that can share its weights")
    ap.add_argument("--transport", choices=("auto", "shm", "ray"), default="auto",
                    help="refit transport (rollout.refit_transport)")
    args = ap.parse_args()
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning,ignore::FutureWarning")

    from megatron_brrm.config import load_config
    from megatron_brrm.model.tiny import build_tiny_hf_model
    from megatron_brrm.rollout.hf_engine import HFEngine
    from megatron_brrm.workers.cluster import Cluster
    from megatron_brrm.workers.policy_actor import PolicyActor
    from megatron_brrm.workers.refit_stream import refit_from_policy
    from megatron_brrm.workers.worker_group import WorkerGroup

    with tempfile.TemporaryDirectory(prefix="refit-bench-") as tmp:
        hf = build_tiny_hf_model(Path(tmp) / "model", arch="qwen3", vocab_size=args.vocab, hidden_size=args.hidden,
                                 intermediate_size=args.ffn, num_layers=args.layers, num_attention_heads=args.heads,
                                 num_key_value_heads=args.kv_heads, head_dim=args.hidden // args.heads)
        cfg = load_config(None, [f"model.hf_path={hf}", f"parallel.tensor_model_parallel_size={args.tp}",
                                 "parallel.backend=gloo", "model.transformer_impl=local",
                                 "parallel.use_distributed_optimizer=true"])
        engine = HFEngine(str(hf))
        params = dict(engine.model.named_parameters())
        nbytes = sum(p.numel() * p.element_size() for p in params.values())
        print(f"model: {sum(p.numel() for p in params.values()) / 1e6:.0f}M parameters, {nbytes / 2**30:.2f} GiB fp32; "
              f"TP={args.tp}, bucket {args.bucket_mb} MiB, transport {args.transport}", flush=True)
        cluster = Cluster.from_config(cfg)
        policy = WorkerGroup(cluster, PolicyActor, cluster.policy_world_size, args=(cfg,), name="policy")
        refit_s = copy_s = float("inf")
        try:
            for _ in range(args.repeats):  # interleaved, so both see the same machine load
                stats = refit_from_policy(policy, [engine], args.bucket_mb * 2**20, transport=args.transport,
                                          shm_max_bucket_bytes=args.shm_max_bucket_mb * 2**20,
                                          shm_direct=not args.shm_buckets)
                sources = {n: p.detach().clone() for n, p in params.items()}  # freed before the next refit
                t0 = time.perf_counter()
                with torch.no_grad():
                    for n, p in params.items():
                        p.copy_(sources[n])
                copy = time.perf_counter() - t0
                del sources
                refit_s, copy_s = min(refit_s, stats.seconds), min(copy_s, copy)
                phases = ", ".join(f"{k} {v:.3f}" for k, v in stats.phases.items())
                print(f"refit {stats.seconds:.3f} s ({stats.num_buckets} buckets), plain copy {copy:.3f} s"
                      + (f"; refit phases (s): {phases}" if phases else ""), flush=True)
        finally:
            cluster.shutdown()
    gb = nbytes / 1e9
    print(f"refit:    {refit_s:8.3f} s  {gb / refit_s:7.2f} GB/s")
    print(f"baseline: {copy_s:8.3f} s  {gb / copy_s:7.2f} GB/s  (plain tensor copy of the same bytes)")
    print(f"ratio refit/baseline throughput: {copy_s / refit_s:.3f}  (target >= 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
