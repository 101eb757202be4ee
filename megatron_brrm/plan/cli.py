"""``python -m megatron_brrm.plan``: check a recipe before submitting it.

    python -m megatron_brrm.plan --config model_configs/qwen3_8b.yaml --nodes 2 [k=v ...] [--gpu-memory-gb 80]
    python -m megatron_brrm.plan --sbatch slurm/brrm_14b_tp4pp2.sub [k=v ...]

Validates the layout (:mod:`megatron_brrm.plan.layout`), prints the per-GPU memory of
training, of the generation engines and of each colocated lifecycle phase
(:mod:`megatron_brrm.plan.memory`, formulas and sources there), and exits 1 with the reasons
when the layout is invalid or a phase does not fit. With ``--sbatch`` the allocation
(``--nodes``, ``--gpus-per-node``, ``--cpus-per-task``) and the recipe (``RECIPE=``) come from
the launcher, whose preemption and requeue settings are checked too. Without GPUs
(``--gpus-per-node 0``, or a recipe with ``parallel.backend: gloo``) it is a CPU run: one
model replica, memory shown per rank in host memory, no GPU fit check.

Exit codes: 0 fits, 1 does not fit or invalid layout, 2 unreadable config/launcher.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional, Sequence

from megatron_brrm.config import ConfigError, load_config
from megatron_brrm.plan.layout import LayoutError, plan_layout
from megatron_brrm.plan.sbatch import SbatchError, check_sbatch, parse_sbatch
from megatron_brrm.plan.shapes import ShapeError, resolve_shape

REPO_ROOT = Path(__file__).resolve().parents[2]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m megatron_brrm.plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML recipe (default with --sbatch: the launcher's RECIPE=)")
    p.add_argument("--sbatch", help="a slurm/*.sub launcher: allocation, recipe and requeue settings from it")
    p.add_argument("--nodes", type=int, help="nodes of the allocation (default: --sbatch's, else 1)")
    p.add_argument("--gpus-per-node", type=int,
                   help="GPUs per node (default: --sbatch's; else 0 for a gloo recipe, 8 otherwise); 0 = CPU run")
    p.add_argument("--gpu-memory-gb", type=float, default=80.0, help="memory of one GPU in GiB (default 80)")
    p.add_argument("--reserve-gb", type=float, default=2.0,
                   help="GiB per GPU kept for CUDA contexts, NCCL buffers, vLLM activations and fragmentation (default 2)")
    p.add_argument("--hf-config", help="the model's config.json (or its folder) when model.hf_path is not known here")
    p.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. parallel.tensor_model_parallel_size=4")
    return p


def make_plan(cfg, shape, nodes: int, gpus_per_node: int, gpu_bytes: int, reserve: int) -> dict:
    """Layout + memory + phases as a dict (what ``--json`` prints).

    Raises:
        LayoutError: the layout is invalid.
    """
    # lazy: keeps plan --help fast
    from megatron_brrm.plan.memory import engine_memory, lifecycle_phases, training_memory

    layout = plan_layout(cfg, shape, nodes=nodes, gpus_per_node=gpus_per_node)
    train = training_memory(shape, layout, cfg)
    peak = train.peak
    engine = engine_memory(shape, layout, cfg, gpu_bytes) if layout.on_gpu and cfg.rollout.engine == "vllm" else None
    phases = lifecycle_phases(peak, engine, layout, cfg, reserve if layout.on_gpu else 0)
    problems: List[str] = []
    if layout.on_gpu:
        for ph in phases:
            if ph.total > gpu_bytes:
                parts = ", ".join(f"{k} {v / 2 ** 30:.2f}" for k, v in ph.parts.items())
                problems.append(f"{ph.name}: {ph.total / 2 ** 30:.2f} GiB per GPU exceeds {gpu_bytes / 2 ** 30:.2f} GiB "
                                f"({parts} GiB)")
        if engine is not None and engine.concurrent_full_sequences < 1:
            problems.append(f"generation: vLLM's share ({engine.budget / 2 ** 30:.2f} GiB = rollout.gpu_memory_utilization "
                            f"{cfg.rollout.gpu_memory_utilization} x {gpu_bytes / 2 ** 30:.0f} GiB) minus the weights "
                            f"({engine.weights / 2 ** 30:.2f} GiB) leaves no room for one "
                            f"{cfg.rollout.max_total_sequence_length}-token sequence's KV cache "
                            f"({cfg.rollout.max_total_sequence_length * engine.kv_bytes_per_token / 2 ** 30:.2f} GiB)")
    warnings = list(layout.warnings)
    if engine is not None and 1 <= engine.concurrent_full_sequences < engine.sequences:
        warnings.append(f"vLLM holds {engine.concurrent_full_sequences} of an engine's {engine.sequences} sequences at "
                        "full length at once; the rest queue (raise rollout.gpu_memory_utilization, "
                        "rollout.tensor_parallel_size or the engine count for more throughput)")
    return {"model": asdict(shape), "num_params": shape.num_params(), "layout": {k: v for k, v in asdict(layout).items()
                                                                                if k != "warnings"},
            "layout_text": layout.describe(), "training": {"stages": [dict(asdict(s), total=s.total) for s in train.stages],
                                                           "peak_stage": peak.stage,
                                                           "tokens_per_microbatch": train.tokens_per_microbatch,
                                                           "padded_vocab": train.padded_vocab},
            "engine": None if engine is None else asdict(engine),
            "phases": [{"name": ph.name, "parts": ph.parts, "total": ph.total} for ph in phases],
            "gpu_bytes": gpu_bytes if layout.on_gpu else None, "reserve_bytes": reserve if layout.on_gpu else 0,
            "warnings": warnings, "problems": problems, "fits": not problems}


def _row(label: str, n: float, note: str = "") -> str:
    return f"  {label:<58}{n / 2 ** 30:9.2f}" + (f"   {note}" if note else "")


def render(plan: dict, cfg, source: str) -> str:
    """The plan as a human-readable table (GiB)."""
    m, lay = plan["model"], plan["layout"]
    on_gpu = lay["gpus_per_node"] > 0
    tr = plan["training"]
    peak = tr["stages"][tr["peak_stage"]]
    rec = cfg.model.recompute_granularity or "none"
    if rec == "full":
        rec += f", {cfg.model.recompute_method or 'uniform'}, {cfg.model.recompute_num_layers or 1} layer(s)/chunk"
    by = {k: f"{v / 2 ** 30:.2f}" for k, v in peak["activations_by_recompute"].items()}
    mixed = cfg.model.params_dtype != "fp32"
    opt = (f"distributed over DP={lay['dp']}" if cfg.parallel.use_distributed_optimizer else "not distributed")
    n = plan["num_params"]
    count = f"{n / 1e9:.2f}e9" if n >= 1e8 else f"{n / 1e6:.2f}e6"
    out = [f"plan: {source}",
           f"model: {m['name']}: {count} parameters, {m['num_layers']} layers, hidden "
           f"{m['hidden_size']}, {m['num_attention_heads']} heads / {m['num_query_groups']} KV groups, vocab "
           f"{m['vocab_size']} (padded {tr['padded_vocab']})",
           f"layout: {plan['layout_text']}",
           f"training, per {'GPU' if on_gpu else 'rank (host memory)'}: PP stage {peak['stage']} (most loaded), "
           f"{peak['params']:,} parameters, {tr['tokens_per_microbatch']} tokens per micro-batch, "
           f"{peak['inflight_microbatches']:g} in flight{'':>4}GiB",
           _row(f"weights ({cfg.model.params_dtype})", peak["weights"]),
           _row("gradients (fp32)", peak["grads"]),
           _row(f"optimizer: Adam{' + fp32 main weights' if mixed else ''}, {opt}", peak["optimizer"],
                f"(distributed {peak['optimizer_distributed'] / 2 ** 30:.2f}, "
                f"replicated {peak['optimizer_replicated'] / 2 ** 30:.2f})"),
           _row(f"activations + logits, recompute {rec}", peak["activations"],
                f"(none {by['none']}, selective {by['selective']}, full {by['full']})"),
           _row("total", peak["total"])]
    eng = plan["engine"]
    if eng is not None:
        r = cfg.rollout
        out += [f"generation, per GPU: vLLM TP {lay['engine_tp']}, {lay['num_engines']} engine(s), "
                f"{eng['sequences']} sequence(s) per engine{', FP8 weights' if r.quantization == 'fp8' else ''}",
                _row("weights", eng["weights"]),
                _row(f"KV cache for {eng['sequences']} x {r.max_total_sequence_length} tokens "
                     f"({eng['kv_bytes_per_token'] / 1024:.1f} KiB/token)", eng["kv_needed"]),
                _row(f"vLLM share (gpu_memory_utilization {r.gpu_memory_utilization})", eng["budget"],
                     f"(KV budget {eng['kv_budget'] / 2 ** 30:.2f}: {eng['concurrent_full_sequences']} full-length "
                     "sequence(s) at once)")]
    if on_gpu:
        mode = ("colocated, rollout.colocated_offload=" + cfg.rollout.colocated_offload) if lay["colocated"] else "split"
        out.append(f"phases, per GPU ({mode}; {plan['gpu_bytes'] / 2 ** 30:g} GiB GPU, "
                   f"{plan['reserve_bytes'] / 2 ** 30:g} GiB reserve)")
        for ph in plan["phases"]:
            parts = " + ".join(f"{k} {v / 2 ** 30:.2f}" for k, v in ph["parts"].items())
            ok = "fits" if ph["total"] <= plan["gpu_bytes"] else "DOES NOT FIT"
            out.append(_row(ph["name"], ph["total"], f"{ok}: {parts}"))
    out += [f"warning: {w}" for w in plan["warnings"]]
    out += [f"does not fit: {p}" for p in plan["problems"]]
    out.append("result: fits" if plan["fits"] else "result: DOES NOT FIT")
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    spec = None
    problems: List[str] = []
    try:
        if args.sbatch:
            spec = parse_sbatch(args.sbatch)
            problems += check_sbatch(spec, REPO_ROOT)
        recipe = args.config or (spec.recipe and str(REPO_ROOT / spec.recipe) if spec else None)
        if not recipe:
            print("error: give --config RECIPE (or --sbatch LAUNCHER with a RECIPE= line)", file=sys.stderr)
            return 2
        cfg = load_config(recipe, args.overrides)
        nodes = args.nodes if args.nodes is not None else (spec.nodes if spec else 1)
        if args.gpus_per_node is not None:
            gpn = args.gpus_per_node
        elif spec is not None:
            gpn = spec.gpus_per_node
        else:
            gpn = 0 if cfg.parallel.backend == "gloo" else 8
        shape = resolve_shape(cfg.model, args.hf_config)
    except (ConfigError, SbatchError, ShapeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    source = args.sbatch or recipe
    try:
        plan = make_plan(cfg, shape, nodes, gpn, int(args.gpu_memory_gb * 2 ** 30), int(args.reserve_gb * 2 ** 30))
    except LayoutError as exc:
        problems = exc.problems + problems
        if args.json:
            print(json.dumps({"fits": False, "problems": problems}, indent=1))
        else:
            print(f"plan: {source}\n" + "\n".join(f"does not fit: {p}" for p in problems) + "\nresult: DOES NOT FIT")
        return 1
    if spec is not None and gpn == 0:
        need = plan["layout"]["world_size"]
        if (spec.cpus_per_task or 1) < need:
            problems.append(f"{spec.path}: --cpus-per-task={spec.cpus_per_task or 1} but the CPU run places "
                            f"{need} policy rank(s) of one CPU each (TP x PP x CP)")
    plan["problems"] = problems + plan["problems"]
    plan["fits"] = not plan["problems"]
    print(json.dumps(plan, indent=1) if args.json else render(plan, cfg, source))
    return 0 if plan["fits"] else 1
