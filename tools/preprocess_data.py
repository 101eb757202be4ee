#!/usr/bin/env python
"""Build ``train_data.jsonl`` and ``val_data.jsonl`` (PreferencePair JSONL) from public sources.

Examples:
    # everything shipped in samples/ (the default data dir); samples hold one HH-RLHF row with an
    # empty response, so --skip-invalid is needed to skip (and count) it
    python tools/preprocess_data.py --output-dir out/data --skip-invalid

    # the BR-RM mix from downloaded files, HelpSteer3 validation as the val set
    python tools/preprocess_data.py --output-dir out/data \\
        --source helpsteer3:hs3/train.jsonl.gz --source skywork80k:skywork/train.parquet \\
        --source code_preference_pairs:codepref/train.parquet --source math_step_dpo:mathdpo/train.parquet \\
        --val-source helpsteer3:hs3/validation.jsonl.gz

Exit status: 0 on success, 1 on a data error (the message starts with ``file:line:``),
2 on a usage error.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from megatron_brrm.data import (ADAPTERS, DataError, benchmark_prompts, build_mix, discover_sources,  # noqa: E402
                                parse_source_spec, write_json, write_pairs)

DEFAULT_DATA_DIR = REPO_ROOT / "samples"


def _value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def build_parser() -> argparse.ArgumentParser:
    sources = "\n".join(f"  {name:<24} {spec.summary}; options: "
                        f"{', '.join(f'{k}={v!r}' for k, v in spec.options().items()) or 'none'}"
                        for name, spec in ADAPTERS.items())
    p = argparse.ArgumentParser(
        prog="preprocess_data.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build train_data.jsonl (both response orders of every pair) and val_data.jsonl "
                    "(one order) in --output-dir from a mix of preference datasets, with per-source caps, "
                    "prompt de-duplication, benchmark decontamination and a printed summary.",
        epilog="known sources (NAME for --source/--cap/--option; folder names for --data-dir):\n" + sources)
    p.add_argument("--output-dir", required=True, type=Path,
                   help="folder for train_data.jsonl, val_data.jsonl, preprocess_config.json (the resolved "
                        "arguments and sources) and preprocess_summary.json; created if missing")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                   help="folder laid out like samples/ (one sub-folder per source, named after it). Its "
                        "sources are used when no --source is given, and its rewardbench/, rmbench/, rmb/ "
                        "folders are the default decontamination set (default: %(default)s)")
    p.add_argument("--mix", choices=("auto", "brrm", "all"), default="auto",
                   help="which discovered sources of --data-dir to use: brrm = helpsteer3, skywork80k, "
                        "code_preference_pairs, math_step_dpo; all = every known folder; auto = brrm when any "
                        "of helpsteer3/skywork80k/math_step_dpo is present, else all (default: %(default)s)")
    p.add_argument("--source", action="append", default=[], metavar="NAME:PATH[:CAP]",
                   help="a training source file or folder, with an optional cap on its pairs; repeatable. "
                        "When given, --data-dir discovery is not used for sources")
    p.add_argument("--val-source", action="append", default=[], metavar="NAME:PATH[:CAP]",
                   help="a validation source (one order per pair); repeatable. When given, --val-fraction "
                        "is not used")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="share of training prompt groups moved to validation when no --val-source is given "
                        "(0 = empty validation file; default: %(default)s)")
    p.add_argument("--cap", action="append", default=[], metavar="NAME=N",
                   help="keep at most N pairs of source NAME (a seeded subset, chosen after dedup and "
                        "decontamination); repeatable")
    p.add_argument("--option", action="append", default=[], metavar="NAME.KEY=VALUE",
                   help="adapter option, e.g. pku_saferlhf.preference=better, "
                        "code_preference_pairs.subset_size=0, generic.prompt_column=question; repeatable")
    p.add_argument("--decontaminate", action="append", type=Path, default=None, metavar="DIR",
                   help="remove every pair whose user turn (normalised) equals a RewardBench, RM-Bench or "
                        "RMB prompt found under DIR (a folder with rewardbench/, rmbench/, rmb/); repeatable "
                        "(default: the benchmarks found in --data-dir)")
    p.add_argument("--no-decontaminate", action="store_true", help="do not remove benchmark prompts")
    p.add_argument("--no-dedup", action="store_true",
                   help="keep pairs whose normalised context already came from another prompt group")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip malformed rows and count them in the summary instead of stopping with "
                        "'file:line: message' (exit status 1)")
    p.add_argument("--seed", type=int, default=42,
                   help="seed of response placement, caps, the val split and shuffles (default: %(default)s)")
    return p


def _parse_kv(items, sep, what):
    out = {}
    for item in items:
        key, ok, value = item.partition("=")
        if not ok or not key or not value:
            raise DataError(f"{what} {item!r} must look like KEY=VALUE")
        out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    start = time.time()
    caps = {}
    for name, n in _parse_kv(args.cap, "=", "--cap").items():
        if name not in ADAPTERS or not n.isdigit() or int(n) <= 0:
            raise DataError(f"--cap {name}={n}: NAME must be a known source and N a positive integer")
        caps[name] = int(n)
    options = {}
    for key, value in _parse_kv(args.option, "=", "--option").items():
        name, dot, opt = key.partition(".")
        if not dot or name not in ADAPTERS:
            raise DataError(f"--option {key}=...: expected NAME.KEY with NAME one of {', '.join(ADAPTERS)}")
        options.setdefault(name, {})[opt] = _value(value)
    if args.source:
        specs = [parse_source_spec(s, "train") for s in args.source]
    else:
        specs = [s for s in discover_sources(args.data_dir, args.mix)]
    specs += [parse_source_spec(s, "val") for s in args.val_source]
    has_val = any(s.role == "val" for s in specs)

    bench_keys, bench_dirs = set(), []
    if not args.no_decontaminate:
        if args.decontaminate:
            bench_dirs = list(args.decontaminate)
        elif any((args.data_dir / d).is_dir() for d in ("rewardbench", "rmbench", "rmb")):
            bench_dirs = [args.data_dir]
        for d in bench_dirs:
            for keys in benchmark_prompts(d).values():
                bench_keys |= keys

    result = build_mix(specs, seed=args.seed, val_fraction=0.0 if has_val else args.val_fraction,
                       dedup=not args.no_dedup, benchmark_keys=bench_keys, skip_invalid=args.skip_invalid,
                       caps=caps, options=options)
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    write_pairs(out / "train_data.jsonl", result.train_rows)
    write_pairs(out / "val_data.jsonl", result.val_rows)
    resolved = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    resolved["decontaminate"] = [str(d) for d in bench_dirs]
    resolved["sources_resolved"] = [{"name": s.name, "path": str(s.path), "cap": caps.get(s.name, s.cap),
                                     "role": s.role, "options": options.get(s.name, {})} for s in specs]
    write_json(out / "preprocess_config.json", resolved)
    write_json(out / "preprocess_summary.json", result.summary.to_dict())
    print(result.summary.format_table())
    if not bench_dirs and not args.no_decontaminate:
        print("warning: no benchmark folder found; nothing was decontaminated (use --decontaminate DIR)")
    print(f"wrote {out / 'train_data.jsonl'} and {out / 'val_data.jsonl'} in {time.time() - start:.1f} s")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except DataError as exc:
        print(f"preprocess_data.py: error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # an adapter option with a bad value
        print(f"preprocess_data.py: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
