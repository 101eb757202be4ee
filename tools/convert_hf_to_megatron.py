#!/usr/bin/env python
"""Convert a Hugging Face model folder into a Megatron-Core distributed checkpoint (torch_dist).

Examples:
    # Qwen3-8B for training at TP=2, PP=1 in bf16
    python tools/convert_hf_to_megatron.py --hf-path /models/Qwen3-8B \\
        --megatron-path /ckpts/qwen3-8b-mcore --tp 2 --pp 1 --dtype bf16

    # then train from it with the recipe fragment the converter wrote
    python -m megatron_brrm.train --config model_configs/qwen3_8b.yaml \\
        model.megatron_path=/ckpts/qwen3-8b-mcore

Output folder (written to a hidden temporary folder and renamed at the end, so an interrupted
run leaves nothing under --megatron-path):
    .metadata, __0_0.distcp, common.pt, metadata.json   the dist_checkpointing checkpoint
    hf/            config.json, generation config, tokenizer, chat template (no weights)
    run_config.yaml  model.hf_path / model.megatron_path / parallel sizes for a run config

The checkpoint stores global tensors: Megatron loads it with
``dist_checkpointing.load(model.sharded_state_dict(), path)`` at any TP/PP whose padded vocabulary
matches (the vocab is padded to a multiple of --make-vocab-size-divisible-by x --tp, as Megatron-LM
does). Runs on CPU in one process; memory stays at a few tensors (never the whole model).

Exit status: 0 on success, 1 on a conversion error (the message names the tensor or file),
2 on a usage error, 130 when interrupted.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from megatron_brrm.checkpoint import quiet_library_warnings  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``--help`` lists every option)."""
    p = argparse.ArgumentParser(
        prog="convert_hf_to_megatron.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0].strip() + " Streams tensor by tensor; needs no GPU.",
        epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--hf-path", required=True, type=Path,
                   help="HF model folder: config.json + model.safetensors (or sharded with model.safetensors.index.json) "
                        "+ tokenizer files, or a Hub id such as Qwen/Qwen3-8B (fetched into the HF cache). "
                        "Supported architectures: Qwen3, Llama.")
    p.add_argument("--megatron-path", required=True, type=Path,
                   help="output checkpoint folder (must not exist, unless --overwrite)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size the run will use (default 1): checked "
                   "against the heads/ffn sizes, fixes the vocab padding, recorded in run_config.yaml")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size the run will use (default 1): checked "
                   "against the layer count, recorded in run_config.yaml")
    p.add_argument("--dtype", choices=["bf16", "fp32", "fp16"], default=None,
                   help="dtype of the stored weights (default: the dtype in the HF config.json)")
    p.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                   help="Megatron vocab padding unit, as model.make_vocab_size_divisible_by (default 128)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --megatron-path")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv=None) -> int:
    """Parse ``argv``, convert, print a summary; returns the exit status."""
    args = build_parser().parse_args(argv)
    quiet_library_warnings()
    from megatron_brrm.checkpoint.hf_io import resolve_hf_source  # lazy: keeps convert_hf_to_megatron.py --help fast
    # lazy: keeps convert_hf_to_megatron.py --help fast
    from megatron_brrm.checkpoint.model_ckpt import (convert_hf_to_megatron, run_conversion_cli,
                                                     use_mmap_for_large_allocations)

    use_mmap_for_large_allocations()  # freed tensors go back to the OS (bounded peak RSS)
    return run_conversion_cli(
        "convert_hf_to_megatron", args.megatron_path,
        lambda: convert_hf_to_megatron(
            resolve_hf_source(args.hf_path), args.megatron_path, tp=args.tp, pp=args.pp, dtype=args.dtype,
            make_vocab_size_divisible_by=args.make_vocab_size_divisible_by, overwrite=args.overwrite,
            progress=not args.no_progress),
        "Megatron tensors", note="; run config: {output}/run_config.yaml")


if __name__ == "__main__":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU tool: never touch a GPU
    sys.exit(main())
