#!/usr/bin/env python
"""Convert a Megatron-Core distributed checkpoint (torch_dist, any TP/PP) into a Hugging Face folder.

Examples:
    # a checkpoint written by tools/convert_hf_to_megatron.py (it stores config + tokenizer)
    python tools/convert_megatron_to_hf.py --megatron-path /ckpts/qwen3-8b-mcore --hf-path /out/qwen3-8b-hf

    # the newest training checkpoint of a run (checkpoint.save_dir; its "latest" file names the
    # step folder): name the HF model the run started from for config.json and tokenizer
    python tools/convert_megatron_to_hf.py --megatron-path outputs/run/checkpoints \\
        --hf-path /out/brrm-8b --hf-reference /models/Qwen3-8B

The output (config.json with architectures and dtype, model-0000k-of-0000N.safetensors +
model.safetensors.index.json, generation_config.json, tokenizer files and chat template) loads
with AutoModelForCausalLM.from_pretrained / AutoTokenizer.from_pretrained and vLLM. It is written
to a hidden temporary folder and renamed at the end: an interrupted run leaves nothing under
--hf-path.

The checkpoint's tensors are checked against config.json before anything is written: a missing
or unexpected tensor, a vocab or shape mismatch, or another architecture stops the conversion with
a message naming the tensor. Runs on CPU in one process; memory stays at a few tensors.

Exit status: 0 on success, 1 on a conversion error, 2 on a usage error, 130 when interrupted.
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
        prog="convert_megatron_to_hf.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0].strip() + " Streams tensor by tensor; needs no GPU.",
        epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--megatron-path", required=True, type=Path,
                   help="dist checkpoint folder (with metadata.json), a training save_dir (its 'latest' file "
                        "names the step folder), or a Megatron-LM folder with latest_checkpointed_iteration.txt")
    p.add_argument("--hf-path", required=True, type=Path, help="output HF folder (must not exist, unless --overwrite)")
    p.add_argument("--hf-reference", type=Path, default=None,
                   help="HF folder (or Hub id) supplying config.json, generation config, tokenizer and chat "
                        "template (default: the hf/ copy stored in the checkpoint by convert_hf_to_megatron.py)")
    p.add_argument("--dtype", choices=["bf16", "fp32", "fp16"], default=None,
                   help="cast the weights (default: keep the checkpoint's dtype)")
    p.add_argument("--max-shard-size", default="5GB",
                   help="safetensors shard size limit, e.g. 5GB, 500MB, 2GiB (default 5GB, as transformers)")
    p.add_argument("--key-prefix", default=None,
                   help="prefix of the model's keys inside the checkpoint (default: detected)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --hf-path")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv=None) -> int:
    """Parse ``argv``, convert, print a summary; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_library_warnings()
    # lazy: keeps convert_megatron_to_hf.py --help fast
    from megatron_brrm.checkpoint.hf_io import parse_size, resolve_hf_source
    # lazy: keeps convert_megatron_to_hf.py --help fast
    from megatron_brrm.checkpoint.model_ckpt import run_conversion_cli, use_mmap_for_large_allocations
    # lazy: keeps convert_megatron_to_hf.py --help fast
    from megatron_brrm.checkpoint.model_export import convert_megatron_to_hf

    try:
        max_shard = parse_size(args.max_shard_size)
    except ValueError as exc:
        parser.error(f"--max-shard-size: {exc}")
    use_mmap_for_large_allocations()  # freed tensors go back to the OS (bounded peak RSS)
    return run_conversion_cli(
        "convert_megatron_to_hf", args.hf_path,
        lambda: convert_megatron_to_hf(
            args.megatron_path, args.hf_path, dtype=args.dtype,
            hf_reference=None if args.hf_reference is None else resolve_hf_source(args.hf_reference),
            max_shard_bytes=max_shard, key_prefix=args.key_prefix, overwrite=args.overwrite,
            progress=not args.no_progress),
        "HF tensors")


if __name__ == "__main__":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU tool: never touch a GPU
    sys.exit(main())
