"""Evaluate the saved steps of a training run (a checkpoint sweep): convert, judge, tabulate, plot.

The equivalent of the BR-RM reference's evaluate_brrm_all_steps.sh + print_evaluation_results.py.

Examples:

    python evaluation/sweep.py --run-dir outputs/qwen3_8b --bench all --engine vllm --tp 2 --data-dir /data/benchmarks
    python evaluation/sweep.py --run-dir outputs/qwen3_8b --steps 100,200 --limit 50 --max-new-tokens 4096

For every selected step (a step_<N> folder the GRPO driver wrote under checkpoint.save_dir):

1. tools/convert_megatron_to_hf.py converts it to OUT/hf/step_<N> (skipped when that folder
   exists: the converter renames it into place only when complete). The config.json and
   tokenizer come from --hf-reference, or else from model.hf_path of the run's config.yaml;
2. evaluation/run.py judges it into OUT/step_<N>/results.json. Interrupted evaluations resume
   from their generation cache: rerunning the sweep repeats nothing that finished;
3. OUT/sweep.table.md gets one row per step (headline and detail tables) and
   OUT/sweep_<bench>.png the scores against the step, per benchmark; OUT/sweep.json lists
   the steps, their folders and their status.

Each step runs in its own processes, so an engine's memory (vLLM) is freed between steps.
Options not listed below are passed to evaluation/run.py unchanged (--data-dir, --limit,
--orders, --max-new-tokens, --temperature, --tp, --unparseable-as, ...; see its --help);
--model, --output, --name and --replay are set by the sweep.

RUN may be the run's output folder (logging.output_dir, holding config.yaml), or the
checkpoint folder itself (checkpoint.save_dir, holding step_* folders and "latest").
Exit status: 0 when every step was evaluated, 1 when a step failed (the others still run),
2 on bad input (also when evaluation/run.py refuses its options: the sweep stops there).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import yaml

from megatron_brrm.evaluation.benchmarks import BENCHMARKS
from megatron_brrm.evaluation.results import load_results, write_json_atomic
from megatron_brrm.evaluation.sweep_report import save_sweep_png, sweep_table
from megatron_brrm.checkpoint.train_ckpt import (CheckpointError, checkpoint_step, latest_checkpoint,
                                                 list_checkpoints)
from megatron_brrm.data.schema import DataError

REPO_ROOT = Path(__file__).resolve().parents[2]
RESERVED = ("--model", "--output", "--name", "--replay", "--engine", "--bench")


class SweepError(Exception):
    """Bad input to the sweep; the message names the folder or option and the fix."""


def find_save_dir(run_dir: Path) -> Path:
    """The folder holding a run's ``step_*`` checkpoints.

    Looked for in order: ``run_dir`` itself; ``checkpoint.save_dir`` of ``run_dir/config.yaml``
    (the resolved config every run writes; a relative path is tried from the current folder,
    then as a folder of ``run_dir``); ``run_dir/checkpoints``.

    Raises:
        SweepError: no such folder, or none of those holds a ``step_*`` checkpoint.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SweepError(f"--run-dir {run_dir}: no such folder")
    candidates = [run_dir]
    cfg = run_dir / "config.yaml"
    if cfg.is_file():
        try:
            save_dir = ((yaml.safe_load(cfg.read_text()) or {}).get("checkpoint") or {}).get("save_dir")
        except yaml.YAMLError as exc:
            raise SweepError(f"{cfg}: cannot parse YAML ({exc})") from None
        if save_dir:
            candidates += [Path(save_dir), run_dir / Path(save_dir).name]
    candidates.append(run_dir / "checkpoints")
    for cand in candidates:
        if list_checkpoints(cand):
            return cand
    raise SweepError(f"--run-dir {run_dir}: no step_* checkpoint found in {', '.join(str(c) for c in candidates)}; "
                     "pass the run's logging.output_dir or its checkpoint.save_dir")


def select_steps(save_dir: Path, spec: str) -> List[Tuple[int, Path]]:
    """The ``(step, folder)`` checkpoints named by ``--steps``, oldest first.

    Args:
        spec: ``"latest"`` (the folder ``save_dir/latest`` names, else the highest step),
            ``"all"``, or comma-separated step numbers (``"100,200"``).

    Raises:
        SweepError: a malformed spec, or a step that has no complete checkpoint (the message
            lists the steps there are).
    """
    found = {checkpoint_step(p): p for p in list_checkpoints(save_dir)}
    if spec == "all":
        return sorted(found.items())
    if spec == "latest":
        try:
            latest = latest_checkpoint(save_dir)
        except CheckpointError as exc:
            raise SweepError(str(exc)) from None
        step = checkpoint_step(latest) if latest is not None else max(found)
        return [(step, found[step])]
    try:
        wanted = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise SweepError(f"--steps {spec!r}: expected latest, all, or step numbers like 100,200") from None
    absent = [s for s in wanted if s not in found]
    if absent or not wanted:
        raise SweepError(f"--steps {spec!r}: no checkpoint for step(s) {absent or spec!r} in {save_dir}; "
                         f"saved steps: {', '.join(map(str, sorted(found)))}")
    return [(s, found[s]) for s in wanted]


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, List[str]]:
    """Parse the sweep's own options; returns ``(args, options passed on to evaluation/run.py)``.

    Raises:
        SweepError: a pass-through option the sweep sets itself (``--model``, ``--output``, ...).
    """
    ap = argparse.ArgumentParser(prog="python evaluation/sweep.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--run-dir", required=True, type=Path,
                    help="the run's output folder (with config.yaml) or its checkpoint.save_dir")
    ap.add_argument("--bench", default="all", choices=[*BENCHMARKS, "all"], help="benchmark(s) to run (default all)")
    ap.add_argument("--steps", default="all", help="latest | all (default) | comma-separated step numbers")
    ap.add_argument("--engine", default="hf", choices=["hf", "vllm", "scalar"],
                    help="generation engine (default hf); scalar for a Bradley-Terry run (python -m megatron_brrm.train_bt)")
    ap.add_argument("--output-dir", type=Path, help="where everything goes (default: RUN/eval_sweep)")
    ap.add_argument("--hf-reference", type=Path,
                    help="HF folder with the config.json and tokenizer of the trained model (default: model.hf_path "
                         "of the run's config.yaml)")
    ap.add_argument("--dtype", choices=["bf16", "fp32", "fp16"], help="dtype of the converted HF weights "
                    "(default: the checkpoint's)")
    args, rest = ap.parse_known_args(argv)
    for opt in rest:
        if opt.split("=", 1)[0] in RESERVED:
            raise SweepError(f"{opt.split('=', 1)[0]} is set by the sweep for every step; remove it "
                             f"(--engine and --bench are sweep options, before any run.py option)")
    return args, rest


def _run(cmd: List[str]) -> int:
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=REPO_ROOT).returncode


def convert_step(step_dir: Path, hf_dir: Path, args: argparse.Namespace) -> Tuple[bool, str]:
    """Convert one checkpoint to an HF folder unless it exists; returns ``(ok, status)``."""
    if (hf_dir / "config.json").is_file():
        return True, "already converted"
    cmd = [sys.executable, str(REPO_ROOT / "tools" / "convert_megatron_to_hf.py"), "--megatron-path", str(step_dir),
           "--hf-path", str(hf_dir), "--no-progress"]
    if args.hf_reference is not None:
        cmd += ["--hf-reference", str(args.hf_reference)]
    if args.dtype is not None:
        cmd += ["--dtype", args.dtype]
    rc = _run(cmd)
    return rc == 0, "converted" if rc == 0 else f"conversion failed (exit {rc})"


def evaluate_step(step: int, hf_dir: Path, results: Path, args: argparse.Namespace, passthrough: List[str]) -> Tuple[bool, str]:
    """Run ``evaluation/run.py`` on one converted step (it resumes from its cache); returns ``(ok, status)``."""
    cmd = [sys.executable, str(REPO_ROOT / "evaluation" / "run.py"), "--bench", args.bench, "--model", str(hf_dir),
           "--engine", args.engine, "--output", str(results), "--name", f"step_{step}", *passthrough]
    rc = _run(cmd)
    return rc == 0, "evaluated" if rc == 0 else f"evaluation failed (exit {rc})"


def sweep(args: argparse.Namespace, passthrough: List[str]) -> int:
    """Run the sweep (module docstring); returns the exit status."""
    save_dir = find_save_dir(args.run_dir)
    steps = select_steps(save_dir, args.steps)
    out = Path(args.output_dir) if args.output_dir else Path(args.run_dir) / "eval_sweep"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for step, step_dir in steps:
        name = step_dir.name
        hf_dir, results = out / "hf" / name, out / name / "results.json"
        print(f"\n==> step {step}: {step_dir}", flush=True)
        ok, status = convert_step(step_dir, hf_dir, args)
        print(f"    {status}: {hf_dir}", flush=True)
        if ok:
            ok, status = evaluate_step(step, hf_dir, results, args, passthrough)
            if status.endswith("(exit 2)"):  # run.py rejected its input: every other step would fail the same way
                raise SweepError(f"evaluation/run.py refused the options or data of step {step} (its message is "
                                 f"above); fix them and rerun (finished conversions are kept)")
        rows.append({"step": step, "checkpoint": str(step_dir), "hf": str(hf_dir), "results": str(results),
                     "ok": ok, "status": status})
    done = [r for r in rows if r["ok"]]
    written = []
    if done:
        table = sweep_table([r["step"] for r in done], [Path(r["results"]) for r in done])
        (out / "sweep.table.md").write_text(table + "\n", encoding="utf-8")
        loaded = [load_results(Path(r["results"])) for r in done]
        benches = [b for b in BENCHMARKS if any(b in res.get("benchmarks", {}) for res in loaded)]
        pngs = [save_sweep_png(b, [r["step"] for r in done], loaded, out / f"sweep_{b}.png") for b in benches]
        written = [str(out / "sweep.table.md"), *map(str, pngs)]
        print("\n" + table)
    write_json_atomic(out / "sweep.json", {"run_dir": str(args.run_dir), "save_dir": str(save_dir),
                                           "bench": args.bench, "engine": args.engine, "run_args": passthrough,
                                           "steps": rows})
    failed = [r for r in rows if not r["ok"]]
    for r in failed:
        print(f"step {r['step']}: {r['status']} (see the output above)", file=sys.stderr)
    print("\nwrote: " + ", ".join(written + [str(out / "sweep.json")]))
    return 1 if failed else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit status (2 on bad input)."""
    try:
        args, passthrough = parse_args(argv)
        return sweep(args, passthrough)
    except (SweepError, DataError) as exc:
        print(f"evaluation/sweep.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nevaluation/sweep.py: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
