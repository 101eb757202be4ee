"""Evaluate a generative reward model on RewardBench, RM-Bench and RMB with the official scoring.

Examples:

    python evaluation/run.py --bench all --model HF_DIR --engine hf --limit 2 --max-new-tokens 16
    python evaluation/run.py --bench all --model HF_DIR --engine vllm --tp 2 --data-dir DIR --orders both

Writes results.json (every judged comparison, the score tree, the run config and
coverage notes), <output stem>.table.md (the printed table), <output stem>.png
(the plots) and <output stem>.cache.jsonl (generations, appended as they finish; a
rerun with the same settings resumes from it). A score marked * is partial (missing data,
--limit, missing generations); the notes under the table say why.

A scalar (Bradley-Terry) reward model, an HF *ForSequenceClassification folder such as the one
python -m megatron_brrm.train_bt exports, scores every response once and decides each comparison
by the higher reward (same scoring, report, cache and replay):

    python evaluation/run.py --bench all --model BT_HF_DIR --engine scalar

Re-scoring outputs produced elsewhere, no model needed:

    python evaluation/run.py --engine replay --replay FILE --output rescored.json

FILE is a results.json, a JSON list of records or a JSONL file; a minimal record is
{"comparison_id": "rmbench:chat:12:c0r2", "swapped": false, "turn_texts": ["<turn 1>", "<final turn>"]}
(or "verdict": 1|2|null instead of "turn_texts").

evaluation/README.md gives the full replay schema, the comparison ids, the data layout
of --data-dir and each benchmark's official scoring rule as implemented.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from tqdm import tqdm

from megatron_brrm.config import RolloutConfig
from megatron_brrm.evaluation.benchmarks import BENCHMARKS, load_benchmark, select_items
from megatron_brrm.evaluation.cache import GenerationCache
from megatron_brrm.evaluation.judging import judge_presentations
from megatron_brrm.evaluation.orders import ORDER_MODES, presentations
from megatron_brrm.evaluation.records import Judgement
from megatron_brrm.evaluation.report import format_report, save_png
from megatron_brrm.evaluation.results import (build_results, index_comparisons, read_raw_records, records_in_order,
                                replay_judgements, write_json_atomic)
from megatron_brrm.evaluation.scalar_judging import score_presentations
from megatron_brrm.evaluation.scoring import UNPARSEABLE_RULES
from megatron_brrm.evaluation.scoring.aggregate import score_benchmark, summary
from megatron_brrm.data.schema import DataError
from megatron_brrm.judge import TemplateError, get_protocol
from megatron_brrm.rollout.chat import ChatTemplateError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = {"protocol": "brrm", "orders": "single", "seed": 42, "unparseable_as": "wrong"}


class UsageError(Exception):
    """A bad command line; the message says what to change."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line (see the module docstring and ``evaluation/README.md``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", default="all", choices=[*BENCHMARKS, "all"], help="benchmark to run (default all)")
    ap.add_argument("--model", help="HF model folder (required unless --engine replay)")
    ap.add_argument("--data-dir", type=Path, default=REPO_ROOT / "samples",
                    help="folder with rewardbench/, rmbench/, rmb/ (default: the repo's samples/)")
    ap.add_argument("--engine", default="hf", choices=["hf", "vllm", "scalar", "replay"],
                    help="generation engine for a generative judge (hf, vllm), scalar for a Bradley-Terry reward "
                         "model (*ForSequenceClassification), or replay (default hf)")
    ap.add_argument("--replay", type=Path, help="results.json / records JSON(L) to re-score (with --engine replay)")
    ap.add_argument("--output", type=Path, default=Path("results.json"), help="results file (default results.json)")
    ap.add_argument("--limit", type=int, help="at most N items per benchmark, spread over its sections")
    ap.add_argument("--orders", choices=ORDER_MODES, help="single (seeded random order, default) or both orders")
    ap.add_argument("--seed", type=int, help="order and sampling seed (default 42, as BR-RM's eval)")
    ap.add_argument("--max-new-tokens", type=int, default=8192, help="generated tokens per turn (default 8192)")
    ap.add_argument("--max-total-length", type=int, default=16384,
                    help="prompt + all turns, tokens (default 16384 as BR-RM's eval max_model_len)")
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0 as BR-RM; 0 = greedy)")
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default 1.0)")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel GPUs for --engine vllm")
    ap.add_argument("--protocol", choices=["brrm", "rmr1"], help="judge protocol (default brrm)")
    ap.add_argument("--unparseable-as", choices=list(UNPARSEABLE_RULES),
                    help="score of an unparseable verdict: wrong = 0 (default, BR-RM) or tie = 0.5 (RewardBench's "
                         "generative rule); with --engine replay the default is the replayed file's choice")
    ap.add_argument("--template-dir", help="folder of judge templates overriding the shipped wording")
    ap.add_argument("--batch-size", type=int, default=64, help="comparisons per engine call / cache flush (default 64)")
    ap.add_argument("--device", default="auto", help="HF engine device: auto | cpu | cuda[:k]")
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                    help="weights dtype (auto: fp32 on CPU, bf16 on GPU)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="vLLM memory fraction")
    ap.add_argument("--name", help="row label in the table and in compare.py (default: the model folder name)")
    ap.add_argument("--no-png", action="store_true", help="skip the PNG report")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return ap.parse_args(argv)


def check_engine_args(args: argparse.Namespace) -> None:
    """Fail fast (before loading data) when the engine cannot run: no model folder, vLLM not installed."""
    if not args.model:
        raise UsageError(f"--model HF_DIR is required with --engine {args.engine}")
    if not (Path(args.model) / "config.json").is_file():
        raise UsageError(f"--model {args.model}: not an HF model folder (no config.json)")
    # lazy: keeps evaluation/run.py --help fast
    from megatron_brrm.checkpoint.hf_io import HFCheckpointError, HFSafetensorsReader

    try:  # headers only: a truncated or missing shard is named here, before a model loads
        HFSafetensorsReader(args.model)
    except HFCheckpointError as exc:
        raise UsageError(f"--model {args.model}: {exc}") from None
    archs = json.loads((Path(args.model) / "config.json").read_text(encoding="utf-8")).get("architectures") or ["?"]
    scalar = any(str(a).endswith("ForSequenceClassification") for a in archs)
    if scalar != (args.engine == "scalar"):
        fix = "--engine scalar" if scalar else "--engine hf or vllm"
        raise UsageError(f"--model {args.model} is a {archs[0]} ({'a scalar reward model' if scalar else 'a generative judge'}); "
                         f"use {fix}")
    if args.engine == "vllm":
        try:
            # optional: vllm (GPU-only / extra)
            import vllm  # noqa: F401
        except ImportError:
            from megatron_brrm.rollout.vllm_engine import VLLM_MISSING  # lazy: keeps evaluation/run.py --help fast

            raise UsageError(f"--engine vllm: {VLLM_MISSING.replace('rollout.engine=hf', '--engine hf')}") from None


def make_engine(args: argparse.Namespace):
    """Build the HF or vLLM engine through the project's engine factory; raise :class:`UsageError`
    with the fix when it cannot run here."""
    from megatron_brrm.rollout.factory import make_engine as build  # lazy: keeps evaluation/run.py --help fast

    check_engine_args(args)
    cfg = RolloutConfig(engine=args.engine, device=args.device, dtype=args.dtype, max_batch_size=max(1, args.batch_size),
                        tensor_parallel_size=args.tp, gpu_memory_utilization=args.gpu_memory_utilization,
                        enable_prefix_caching=True, seed=args.seed, max_total_sequence_length=args.max_total_length,
                        colocated=False)
    try:
        return build(cfg, str(Path(args.model)))
    except RuntimeError as exc:
        raise UsageError(str(exc)) from None


def make_scorer(args: argparse.Namespace):
    """The scalar reward model of ``--model`` (:class:`megatron_brrm.rollout.scalar.SequenceClassifierScorer`);
    sequences longer than ``--max-total-length`` keep their last tokens."""
    from megatron_brrm.rollout.scalar import SequenceClassifierScorer  # lazy: keeps evaluation/run.py --help fast

    check_engine_args(args)
    try:
        return SequenceClassifierScorer(args.model, device=args.device, dtype=args.dtype,
                                        batch_size=max(1, args.batch_size), max_length=args.max_total_length)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None


def resolve_replay_settings(args: argparse.Namespace) -> tuple:
    """Fill protocol/orders/seed/limit from the replayed file's config where not given on the command line."""
    if args.replay is None:
        raise UsageError("--engine replay needs --replay FILE (a results.json or a records JSON/JSONL file)")
    raw, cfg = read_raw_records(args.replay)
    for key in ("protocol", "orders", "seed", "unparseable_as"):
        if getattr(args, key) is None:
            setattr(args, key, cfg.get(key, DEFAULTS[key]))
    if args.limit is None and cfg.get("limit") is not None:
        args.limit = int(cfg["limit"])
    if args.template_dir is None:
        args.template_dir = cfg.get("template_dir")
    if args.model is None:
        args.model = cfg.get("model")
    return raw


def run(args: argparse.Namespace) -> dict:
    """Execute one evaluation run as configured by ``args``; returns the results object.

    Raises:
        UsageError: bad option combination.
        DataError: missing or malformed benchmark / replay data.
    """
    if args.engine == "replay":
        raw = resolve_replay_settings(args)
    else:
        check_engine_args(args)
        raw = None
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.limit is not None and args.limit < 0:
        raise UsageError(f"--limit must be >= 0, got {args.limit}")
    if args.orders not in ORDER_MODES:
        raise UsageError(f"orders must be one of {ORDER_MODES}, got {args.orders!r} (from the replayed file's config?)")
    protocol = None
    if args.engine != "scalar" and args.protocol != "scalar":  # a scalar model has no judge protocol
        try:
            protocol = get_protocol(args.protocol, template_dir=args.template_dir)
        except ValueError as exc:  # unknown protocol name or a bad template folder
            raise UsageError(str(exc)) from None
    names = list(BENCHMARKS) if args.bench == "all" else [args.bench]
    data = {name: load_benchmark(name, args.data_dir) for name in names}
    selected = {name: select_items(d.comparisons, args.limit) for name, d in data.items()}
    todo_all = [p for name in names for p in presentations(selected[name], args.orders, args.seed)]
    notes: List[str] = []
    output = Path(args.output)
    if args.engine == "replay":
        everything = index_comparisons([c for name in names for c in selected[name]])
        judgements, notes = replay_judgements(raw, everything, protocol.parse_verdict if protocol else None, args.seed)
    else:
        if args.engine == "scalar":
            args.protocol = "scalar"
            settings = {"model": str(Path(args.model).resolve()), "engine": "scalar",
                        "max_total_length": args.max_total_length}
        else:
            settings = {"model": str(Path(args.model).resolve()), "protocol": args.protocol,
                        "template_dir": args.template_dir, "max_new_tokens": args.max_new_tokens,
                        "max_total_length": args.max_total_length,
                        "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed}
        cache = GenerationCache(output.with_name(output.stem + ".cache.jsonl"), settings)
        cached, stats = cache.load()
        judgements = {p.key: cached[p.key] for p in todo_all if p.key in cached}  # only this run's selection
        todo = [p for p in todo_all if p.key not in judgements]
        if judgements:
            notes.append(f"resumed: {len(judgements)} judged orders reused from {cache.path}")
        if stats["other_settings"]:
            notes.append(f"{stats['other_settings']} cached generation(s) made with other settings were not reused")
        if todo and args.engine == "scalar":
            notes += _score_scalar(args, todo, cache, judgements)
        elif todo:
            engine = make_engine(args)
            bar = None
            if not args.no_progress:
                bar = tqdm(total=len(todo), desc="judging", unit="cmp")
            try:
                judgements.update(judge_presentations(
                    engine, protocol, todo, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    top_p=args.top_p, seed=args.seed, batch_size=args.batch_size,
                    max_total_length=args.max_total_length, cache=cache,
                    progress=bar.update if bar is not None else None))
            finally:
                engine.shutdown()
                if bar is not None:
                    bar.close()
    if args.unparseable_as not in UNPARSEABLE_RULES:
        raise UsageError(f"unparseable_as must be one of {list(UNPARSEABLE_RULES)}, got {args.unparseable_as!r} "
                         f"(from the replayed file's config?)")
    benches = {name: score_benchmark(data[name], selected[name], judgements, args.orders, args.unparseable_as)
               for name in names}
    records: List[Judgement] = [j for name in names for j in records_in_order(selected[name], judgements)]
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update({"benchmarks": names, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                   "python": platform.python_version(),
                   "name": args.name or (Path(str(args.model)).name if args.model
                                         else f"replay:{Path(str(args.replay)).stem}")})
    results = build_results(config, benches, summary(benches), records)
    results["notes"] = notes
    if args.orders == "both":
        results["summary_both_orders"] = summary(benches, "overall_both_orders")
    return results


def _score_scalar(args: argparse.Namespace, todo, cache, judgements: dict) -> List[str]:
    """Score ``todo`` with the scalar model into ``judgements``; returns notes for the report."""
    scorer = make_scorer(args)
    bar = None
    if not args.no_progress:
        bar = tqdm(total=len(todo), desc="scoring", unit="cmp")
    try:
        new, distinct = score_presentations(scorer, todo, batch_size=args.batch_size, cache=cache,
                                            progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    judgements.update(new)
    notes = [f"scalar: {distinct} distinct responses scored once each for {len(todo)} judged orders"]
    if scorer.truncated:
        notes.append(f"scalar: {scorer.truncated} sequence(s) longer than --max-total-length kept only their last tokens")
    return notes


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point: run, write the outputs, print the table. Exit 2 on bad input."""
    args = parse_args(argv)
    try:
        results = run(args)
    except (UsageError, DataError, TemplateError, ChatTemplateError) as exc:
        print(f"evaluation/run.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nevaluation/run.py: interrupted; finished batches are in the cache next to --output; "
              "rerun the same command to resume", file=sys.stderr)
        return 130
    output = Path(args.output)
    write_json_atomic(output, results)
    table = format_report(results)
    output.with_name(output.stem + ".table.md").write_text(table + "\n", encoding="utf-8")
    written = [str(output), str(output.with_name(output.stem + ".table.md"))]
    if not args.no_png:
        written.append(str(save_png(results, output.with_name(output.stem + ".png"))))
    print(table)
    print("\nwrote: " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
