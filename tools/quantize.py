#!/usr/bin/env python
"""Export a trained judge as an FP8, INT8 (SmoothQuant W8A8) or INT4-AWQ Hugging Face checkpoint.

    python tools/quantize.py --model brrm-14b-hf --output brrm-14b-fp8 --format fp8 \\
        --calib-data data/brrm/val_data.jsonl [--calib-size 128] [--check-pairs 16]

Uses NVIDIA ModelOpt (``nvidia-modelopt``): the model is calibrated on *judge prompts* -- the
BR-RM turn-1 prompts of preference pairs from ``--calib-data``, rendered with the chat
template exactly as rollouts and evaluation render them -- then quantised
(``mtq.quantize``: FP8 per-tensor weights and activations, INT8 SmoothQuant per-channel weights
and per-tensor activations, or INT4 AWQ weight-only with ``--awq-block-size`` groups) and
written with ModelOpt's unified HF export (``config.json`` with a ``quantization_config``,
``hf_quant_config.json``, safetensors with the low-precision weights and their scales) plus the
tokenizer and chat template: the folder vLLM (``--quantization modelopt``) and TensorRT-LLM
serve.

After the export the tool loads the folder back (:func:`megatron_brrm.checkpoint.quantized_hf.
load_quantized_hf`: rebuilt from the stored weights and scales, activation quantisation
emulated) and runs ``--check-pairs`` two-turn judge rollouts (greedy) with the original and the
quantised model: the report (printed and written to ``quantization_report.json`` in the output
folder) gives the share of well-formed verdicts of each and how often the verdicts agree.

On a CPU machine everything runs with ModelOpt's fake quantisation (FP8, INT8 and INT4-AWQ
work on CPU; NVFP4 does not); on a GPU the same command calibrates on the GPU.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from megatron_brrm.data import DataError, read_pairs  # noqa: E402
from megatron_brrm.hub import resolve_hf_path  # noqa: E402
from megatron_brrm.judge import RewardRule, get_protocol  # noqa: E402
from megatron_brrm.rollout.chat import render_prompt_ids  # noqa: E402

FORMATS = ("fp8", "int8", "int4_awq")
EXPORT_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


class QuantizeError(RuntimeError):
    """Bad input or an unsupported model/format combination; the message says what to change."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python tools/quantize.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="trained judge: an HF folder (or hub id)")
    p.add_argument("--output", required=True, help="folder for the quantised HF checkpoint")
    p.add_argument("--format", required=True, choices=FORMATS, help="fp8 | int8 (SmoothQuant W8A8) | int4_awq (W4A16)")
    p.add_argument("--calib-data", required=True,
                   help="preference pairs JSONL (tools/preprocess_data.py output) whose judge prompts calibrate")
    p.add_argument("--calib-size", type=int, default=64, help="calibration prompts (default 64)")
    p.add_argument("--max-prompt-tokens", type=int, default=4096, help="skip longer prompts (default 4096)")
    p.add_argument("--batch-size", type=int, default=4, help="calibration batch size (default 4)")
    p.add_argument("--awq-block-size", type=int, default=128,
                   help="INT4-AWQ group size along the input dimension (default 128; must divide every layer's input)")
    p.add_argument("--protocol", default="brrm", help="judge protocol rendering the prompts (default brrm)")
    p.add_argument("--template-dir", help="judge template folder (as judge.template_dir)")
    p.add_argument("--export-dtype", choices=sorted(EXPORT_DTYPES),
                   help="dtype of the layers left unquantised (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--check-pairs", type=int, default=8,
                   help="judge rollouts comparing original and quantised outputs (default 8; 0 skips)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="per turn, for the check (default 512)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return p


def _modelopt():
    try:
        import modelopt.torch.quantization as mtq  # optional: modelopt (extra)
        from modelopt.torch.export import export_hf_checkpoint  # optional: modelopt (extra)
    except ImportError as exc:
        raise QuantizeError(f"tools/quantize.py needs NVIDIA ModelOpt: pip install nvidia-modelopt (in the project's "
                            f"test and gpu extras) ({exc})") from None
    return mtq, export_hf_checkpoint


def quant_config(mtq, fmt: str, awq_block: int) -> dict:
    """The ModelOpt recipe of ``fmt`` (a copy; INT4-AWQ with ``awq_block`` input groups)."""
    if fmt == "fp8":
        return copy.deepcopy(mtq.FP8_DEFAULT_CFG)
    if fmt == "int8":
        return copy.deepcopy(mtq.INT8_SMOOTHQUANT_CFG)
    cfg = copy.deepcopy(mtq.INT4_AWQ_CFG)
    entries = cfg["quant_cfg"]
    found = False
    for entry in (entries if isinstance(entries, list) else [{"quantizer_name": k, "cfg": v} for k, v in entries.items()]):
        if entry.get("quantizer_name") == "*weight_quantizer":
            entry["cfg"]["block_sizes"][-1] = awq_block
            found = True
    if not found:
        raise QuantizeError("this ModelOpt's INT4_AWQ_CFG has no '*weight_quantizer' entry; pin nvidia-modelopt 0.47")
    return cfg


def check_awq_shapes(model, block: int) -> None:
    """INT4 packing needs every quantised linear's input dimension divisible by the group size."""
    import torch  # lazy: keeps quantize.py --help fast

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and "lm_head" not in name and mod.in_features % block:
            raise QuantizeError(f"--awq-block-size {block} does not divide the input dimension {mod.in_features} of "
                                f"{name}; pick a divisor of every layer's input size (e.g. 64 or 32)")


def calibration_prompts(tokenizer, protocol, pairs, size: int, max_tokens: int) -> List[List[int]]:
    """Token ids of the judge's turn-1 prompts for the first ``size`` pairs that fit ``max_tokens``."""
    out = []
    for p in pairs:
        ids = render_prompt_ids(tokenizer, protocol.turn1_messages(p.context, p.response1, p.response2))
        if len(ids) <= max_tokens:
            out.append(ids)
        if len(out) == size:
            break
    return out


def judge_check(model, tokenizer, protocol, pairs, max_new_tokens: int, device: str) -> List:
    """Greedy two-turn judge rollouts of ``model`` on ``pairs``; returns their verdicts."""
    import torch  # lazy: keeps quantize.py --help fast

    from megatron_brrm.rollout.hf_engine import HFEngine  # lazy: keeps quantize.py --help fast
    from megatron_brrm.rollout.two_turn import RolloutParams, rollout  # lazy: keeps quantize.py --help fast

    dtype = next(model.parameters()).dtype
    engine = HFEngine(model, tokenizer=tokenizer, device=device, dtype=dtype if dtype != torch.float16 else torch.float32)
    params = RolloutParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens,
                           max_total_length=10 ** 9, seed=0)
    return [t.verdict for t in rollout(engine, protocol, pairs, params, RewardRule())]


def _verdict_stats(base, quant) -> dict:
    ok = lambda v: v is not None and v.format_error is None
    n = len(base)
    agree = sum(ok(a) and ok(b) and a.preference == b.preference for a, b in zip(base, quant))
    return {"pairs": n, "well_formed_original": sum(map(ok, base)) / max(n, 1),
            "well_formed_quantized": sum(map(ok, quant)) / max(n, 1),
            "verdict_agreement": agree / max(n, 1)}


def quantize(args) -> dict:
    """Run the tool (see the module docstring); returns the report.

    Raises:
        QuantizeError: bad input or unsupported combination.
    """
    import torch  # lazy: keeps quantize.py --help fast
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: keeps quantize.py --help fast

    from megatron_brrm.checkpoint.hf_io import atomic_output_dir  # lazy: keeps quantize.py --help fast
    from megatron_brrm.checkpoint.quantized_hf import load_quantized_hf  # lazy: keeps quantize.py --help fast

    for key in ("calib_size", "batch_size", "awq_block_size", "max_prompt_tokens", "max_new_tokens"):
        if getattr(args, key) < 1:
            raise QuantizeError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.check_pairs < 0:
        raise QuantizeError(f"--check-pairs must be >= 0, got {args.check_pairs}")
    mtq, export_hf_checkpoint = _modelopt()
    try:
        model_dir = resolve_hf_path(args.model)
    except FileNotFoundError as exc:
        raise QuantizeError(f"--model: {exc}") from None
    try:
        pairs = read_pairs(args.calib_data)
    except (DataError, OSError) as exc:
        raise QuantizeError(f"--calib-data: {exc}") from None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    export_dtype = getattr(torch, EXPORT_DTYPES[args.export_dtype]) if args.export_dtype else dtype
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    protocol = get_protocol(args.protocol, args.template_dir)
    prompts = calibration_prompts(tokenizer, protocol, pairs, args.calib_size, args.max_prompt_tokens)
    if not prompts:
        raise QuantizeError(f"--calib-data {args.calib_data}: no pair's judge prompt fits --max-prompt-tokens "
                            f"{args.max_prompt_tokens}")
    check = pairs[-args.check_pairs:] if args.check_pairs else []

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    if args.format == "int4_awq":
        check_awq_shapes(model, args.awq_block_size)
    t0 = time.perf_counter()
    base = judge_check(model, tokenizer, protocol, check, args.max_new_tokens, device) if check else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def forward_loop(m):
        with torch.no_grad():
            for i in range(0, len(prompts), args.batch_size):
                chunk = prompts[i:i + args.batch_size]
                width = max(len(p) for p in chunk)
                ids = torch.tensor([p + [pad] * (width - len(p)) for p in chunk], device=device)
                mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in chunk], device=device)
                m(input_ids=ids, attention_mask=mask)

    model = mtq.quantize(model, quant_config(mtq, args.format, args.awq_block_size), forward_loop)
    calib_s = time.perf_counter() - t0
    with atomic_output_dir(args.output, overwrite=args.overwrite) as tmp:
        export_hf_checkpoint(model, dtype=export_dtype, export_dir=str(tmp))
        tokenizer.save_pretrained(str(tmp))
    del model
    loaded, info = load_quantized_hf(args.output, dtype=torch.float32)
    quant = judge_check(loaded, tokenizer, protocol, check, args.max_new_tokens, device) if check else []
    size = lambda d: sum(f.stat().st_size for f in Path(d).glob("*.safetensors"))
    report = {"format": args.format, "quant_algo": info.quant_algo, "quantized_layers": len(info.layers),
              "calibration_prompts": len(prompts), "calibration_seconds": round(calib_s, 2),
              "weights_bytes_original": size(model_dir), "weights_bytes_quantized": size(args.output),
              "judge_check": _verdict_stats(base, quant)}
    (Path(args.output) / "quantization_report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        report = quantize(args)
    except QuantizeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    c = report["judge_check"]
    print(f"{args.output}: {report['quant_algo']} ({report['quantized_layers']} linear layers), calibrated on "
          f"{report['calibration_prompts']} judge prompts; weights {report['weights_bytes_original'] / 2 ** 20:.1f} MiB "
          f"-> {report['weights_bytes_quantized'] / 2 ** 20:.1f} MiB")
    if c["pairs"]:
        print(f"judge check on {c['pairs']} pairs (greedy): well-formed verdicts {c['well_formed_original']:.2f} "
              f"(original) -> {c['well_formed_quantized']:.2f} (quantized), verdict agreement "
              f"{c['verdict_agreement']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
