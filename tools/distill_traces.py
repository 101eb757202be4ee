#!/usr/bin/env python
"""Distil judge traces from a teacher by rejection sampling (RM-R1's SFT data), for the SFT driver.

Examples:
    # a teacher served by any OpenAI-compatible server (vLLM: `vllm serve Qwen/Qwen3-32B`)
    python tools/distill_traces.py --pairs data/brrm/train_data.jsonl --output data/traces.jsonl \\
        --teacher-url http://localhost:8000/v1 --teacher-name Qwen/Qwen3-32B --samples-per-pair 4

    # a local HF folder through this project's engines (hf on CPU/GPU, vllm on GPU)
    python tools/distill_traces.py --pairs data/brrm/train_data.jsonl --output data/traces.jsonl \\
        --teacher-model /models/teacher --engine vllm --tp 4 --protocol rmr1

    # then: python -m megatron_brrm.sft --config model_configs/rmr1_qwen3_8b_sft.yaml sft.traces_path=data/traces.jsonl

Every pair (PreferencePair JSONL, as tools/preprocess_data.py writes) is judged in both orders
(--orders both; a file holding both orders already is used as is) with --samples-per-pair
conversations per order, in the --protocol's format (brrm: two turns in one conversation;
rmr1: one). A conversation is kept only when its verdict matches the label; at most
--keep-per-order are kept per order (0 = all). A turn that hits the token limit, an
unparseable verdict and (unless --lenient-turn1) a malformed BR-RM turn 1 count as malformed.

Writes --output (JSONL, one {"messages": [...], "meta": {...}} per kept trace: the SFT driver's
sft.traces_path format) and <output stem>.summary.json (kept / wrong / malformed per source),
and prints the summary table. Exit status: 0 on success, 1 when the teacher fails, 2 on bad input.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from megatron_brrm.config import RolloutConfig  # noqa: E402
from megatron_brrm.data import read_pairs  # noqa: E402
from megatron_brrm.data.schema import DataError  # noqa: E402
from megatron_brrm.distill.openai_chat import ChatEndpointError, OpenAIChatClient  # noqa: E402
from megatron_brrm.distill.rejection import distill  # noqa: E402
from megatron_brrm.distill.teachers import EngineTeacher, HTTPTeacher  # noqa: E402
from megatron_brrm.judge import get_protocol  # noqa: E402
from megatron_brrm.rollout.traces import write_traces  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``--help`` lists every option)."""
    p = argparse.ArgumentParser(prog="distill_traces.py", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description=__doc__.split("\n\n")[0].strip(), epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--pairs", required=True, type=Path, help="PreferencePair JSONL (train_data.jsonl of preprocess_data.py)")
    p.add_argument("--output", required=True, type=Path, help="trace JSONL to write (sft.traces_path)")
    t = p.add_argument_group("teacher (one of --teacher-model, --teacher-url)")
    t.add_argument("--teacher-model", help="HF folder of the teacher, run by this project's engine (--engine)")
    t.add_argument("--engine", default="hf", choices=["hf", "vllm"], help="engine for --teacher-model (default hf)")
    t.add_argument("--device", default="auto", help="hf engine device: auto | cpu | cuda[:k]")
    t.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="engine weights dtype")
    t.add_argument("--tp", type=int, default=1, help="vLLM tensor-parallel size")
    t.add_argument("--teacher-url", help="OpenAI-compatible base URL (http://host:8000/v1) or .../chat/completions")
    t.add_argument("--teacher-name", help="the 'model' field of requests to --teacher-url (the served model name)")
    t.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key for --teacher-url (default OPENAI_API_KEY; unset = none)")
    t.add_argument("--concurrency", type=int, default=8, help="requests in flight to --teacher-url (default 8)")
    t.add_argument("--timeout", type=float, default=600.0, help="seconds per request to --teacher-url (default 600)")
    j = p.add_argument_group("judging")
    j.add_argument("--protocol", default="brrm", choices=["brrm", "rmr1"], help="trace format (default brrm)")
    j.add_argument("--template-dir", help="judge templates overriding the shipped wording")
    j.add_argument("--samples-per-pair", type=int, default=4, help="conversations per pair and order (default 4)")
    j.add_argument("--keep-per-order", type=int, default=1, help="right traces kept per pair and order (default 1; 0 = all)")
    j.add_argument("--orders", default="both", choices=["both", "given"], help="judge both orders (default) or as given")
    j.add_argument("--lenient-turn1", action="store_true", help="keep traces whose BR-RM turn 1 is malformed")
    j.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    j.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default 1.0)")
    j.add_argument("--max-new-tokens", type=int, default=8192, help="tokens per turn (default 8192)")
    j.add_argument("--max-total-length", type=int, default=16384, help="prompt + all turns, engine teachers (default 16384)")
    j.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    j.add_argument("--limit", type=int, help="use only the first N pairs of --pairs")
    j.add_argument("--batch-size", type=int, default=64, help="presentations per teacher call (default 64)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _teacher(args, protocol):
    """The teacher the options name; raises ValueError with the fix when they do not name one."""
    if bool(args.teacher_model) == bool(args.teacher_url):
        raise ValueError("give exactly one of --teacher-model HF_DIR and --teacher-url URL")
    if args.teacher_url:
        if not args.teacher_name:
            raise ValueError("--teacher-url needs --teacher-name (the model name the server serves)")
        client = OpenAIChatClient(args.teacher_url, args.teacher_name, api_key=os.environ.get(args.api_key_env),
                                  timeout_s=args.timeout)
        return HTTPTeacher(client, protocol, n=args.samples_per_pair, temperature=args.temperature, top_p=args.top_p,
                           max_new_tokens=args.max_new_tokens, seed=args.seed, concurrency=args.concurrency), \
            f"{args.teacher_name} @ {client.url}"
    if not (Path(args.teacher_model) / "config.json").is_file():
        raise ValueError(f"--teacher-model {args.teacher_model}: not an HF model folder (no config.json)")
    from megatron_brrm.rollout.factory import make_engine  # lazy: keeps distill_traces.py --help fast
    from megatron_brrm.rollout.two_turn import RolloutParams  # lazy: keeps distill_traces.py --help fast

    cfg = dataclasses.replace(RolloutConfig(), engine=args.engine, device=args.device, dtype=args.dtype,
                              tensor_parallel_size=args.tp, max_total_sequence_length=args.max_total_length,
                              seed=args.seed, colocated=False, max_batch_size=max(1, args.batch_size))
    params = RolloutParams(n=args.samples_per_pair, temperature=args.temperature, top_p=args.top_p,
                           max_new_tokens=[args.max_new_tokens] * protocol.num_turns,
                           max_total_length=args.max_total_length, seed=args.seed)
    params.validate()
    return EngineTeacher(make_engine(cfg, args.teacher_model), protocol, params, batch_size=args.batch_size), \
        f"{args.teacher_model} ({args.engine})"


def main(argv=None) -> int:
    """Parse ``argv``, distil, write the traces and the summary; returns the exit status."""
    args = build_parser().parse_args(argv)
    for name in ("samples_per_pair", "batch_size", "concurrency"):
        if getattr(args, name) < 1:
            print(f"distill_traces.py: error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    if args.keep_per_order < 0:
        print("distill_traces.py: error: --keep-per-order must be >= 0", file=sys.stderr)
        return 2
    try:
        protocol = get_protocol(args.protocol, args.template_dir)
        if not args.pairs.is_file():
            raise ValueError(f"--pairs {args.pairs}: no such file")
        pairs = read_pairs(args.pairs)[: args.limit]
        if not pairs:
            raise ValueError(f"--pairs {args.pairs}: no preference pairs")
        teacher, teacher_name = _teacher(args, protocol)
    except (ValueError, DataError) as exc:  # DataError, TemplateError and bad options are ValueErrors
        print(f"distill_traces.py: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # the engine cannot run here (vLLM without a GPU)
        print(f"distill_traces.py: error: {exc}", file=sys.stderr)
        return 2
    bar = None
    if not args.no_progress:
        orders = 2 if args.orders == "both" else 1
        bar = tqdm(total=len(pairs) * orders * args.samples_per_pair, desc="distil", unit="sample")
    try:
        result = distill(pairs, teacher, protocol, orders=args.orders, keep_per_order=args.keep_per_order,
                         strict_turn1=not args.lenient_turn1, teacher_name=teacher_name, batch_size=args.batch_size,
                         progress=bar.update if bar is not None else None)
    except ChatEndpointError as exc:
        print(f"distill_traces.py: teacher error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndistill_traces.py: interrupted; nothing was written", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    n = write_traces(args.output, result.traces)
    summary = dict(result.summary(), teacher=teacher_name, protocol=args.protocol, pairs_file=str(args.pairs),
                   samples_per_pair=args.samples_per_pair, keep_per_order=args.keep_per_order, orders=args.orders,
                   strict_turn1=not args.lenient_turn1, temperature=args.temperature, output=str(args.output))
    summary_path = args.output.with_name(args.output.stem + ".summary.json")
    summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(result.table())
    print(f"\nwrote {n} traces to {args.output}; summary: {summary_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
