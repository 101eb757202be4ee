"""FP8 rollouts: block-wise FP8 weights for vLLM, quantised when weights are loaded (start and every refit).

``rollout.quantization=fp8`` starts vLLM with FP8 linear layers in the block-wise format of
DeepSeek-V3 / vLLM's ``Fp8Config(weight_block_size=[128, 128])``: every GEMM weight ``W [out, in]``
is stored as ``float8_e4m3fn`` with one fp32 ``weight_scale_inv`` per 128 x 128 block, and
activations are quantised per token-group on the fly. vLLM is told the checkpoint is in that
format (:func:`vllm_fp8_overrides`), starts with dummy weights, and every weight load -- the
checkpoint at start-up and each refit after an update -- goes through :func:`quantize_named_weights`
inside the vLLM worker, which turns the trainer's bf16 tensors into ``(fp8 weight, scale)``
pairs under the checkpoint names vLLM expects (the approach of NeMo-RL's and verl's FP8 rollouts).

Block quantisation (per block ``B``): ``s = max(|B|) / 448`` (448 = the largest E4M3 value),
``q = round_to_e4m3(B / s)``, stored ``scale_inv = s``; dequantised ``B ~ q * s``. Edge blocks of a
dimension that is not a multiple of 128 are smaller; an all-zero block gets ``s = 1``.

Pure torch (``torch.float8_e4m3fn`` exists on CPU), so the format is tested without a GPU.
"""
from __future__ import annotations

import math
import re
from typing import Dict, Iterable, Iterator, Tuple

import torch

FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
BLOCK = 128
# HF names of the GEMM weights vLLM quantises in a Qwen3 / Llama decoder layer (embeddings,
# norms and lm_head stay in the checkpoint dtype).
_LINEAR = re.compile(r"^model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)\.weight$")


def is_fp8_linear(name: str) -> bool:
    """Whether the HF tensor ``name`` is a GEMM weight that FP8 rollouts quantise."""
    return bool(_LINEAR.match(name))


def scale_name(name: str) -> str:
    """Checkpoint name of the block scales of weight ``name`` (``...proj.weight_scale_inv``)."""
    return name[: -len("weight")] + "weight_scale_inv"


def quantize_fp8_blockwise(w: torch.Tensor, block: int = BLOCK) -> Tuple[torch.Tensor, torch.Tensor]:
    """Quantise a 2-D weight to E4M3 with one scale per ``block`` x ``block`` tile.

    Args:
        w: ``[out, in]`` floating tensor (any float dtype, any device).
        block: tile edge (128 in vLLM's block FP8).

    Returns:
        ``(q, scale_inv)``: ``q`` ``float8_e4m3fn [out, in]``, ``scale_inv`` ``float32
        [ceil(out / block), ceil(in / block)]`` with ``w ~ q.float() * scale_inv`` tile-wise.

    Raises:
        ValueError: ``w`` is not 2-D or ``block`` < 1.
    """
    if w.dim() != 2 or block < 1:
        raise ValueError(f"quantize_fp8_blockwise: need a 2-D weight and block >= 1, got shape {tuple(w.shape)}, "
                         f"block {block}")
    out_f, in_f = w.shape
    rows, cols = math.ceil(out_f / block), math.ceil(in_f / block)
    padded = torch.zeros(rows * block, cols * block, dtype=torch.float32, device=w.device)
    padded[:out_f, :in_f] = w.float()
    tiles = padded.view(rows, block, cols, block)
    amax = tiles.abs().amax(dim=(1, 3))
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (tiles / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).view(rows * block, cols * block)
    return q[:out_f, :in_f].to(torch.float8_e4m3fn).contiguous(), scale.contiguous()


def dequantize_fp8_blockwise(q: torch.Tensor, scale_inv: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """Inverse of :func:`quantize_fp8_blockwise` (fp32 result, shape of ``q``)."""
    out_f, in_f = q.shape
    expanded = scale_inv.repeat_interleave(block, 0).repeat_interleave(block, 1)[:out_f, :in_f]
    return q.float() * expanded


def quantize_named_weights(named: Iterable[Tuple[str, torch.Tensor]], block: int = BLOCK
                           ) -> Iterator[Tuple[str, torch.Tensor]]:
    """HF-named tensors -> what a block-FP8 vLLM model loads: each GEMM weight becomes its FP8
    tensor plus ``<name>_scale_inv``; other tensors pass through unchanged (same order)."""
    for name, tensor in named:
        if is_fp8_linear(name):
            q, s = quantize_fp8_blockwise(tensor, block)
            yield name, q
            yield scale_name(name), s
        else:
            yield name, tensor


def vllm_fp8_overrides(block: int = BLOCK) -> Dict[str, object]:
    """``vllm.LLM`` arguments for block-FP8 rollouts from a bf16 checkpoint: the checkpoint is
    declared FP8-serialised (so vLLM allocates FP8 weights and block scales) and vLLM starts from
    dummy weights; :class:`~megatron_brrm.rollout.vllm_engine.VLLMEngine` then loads the real
    checkpoint through :func:`quantize_named_weights`."""
    return {"quantization": "fp8", "load_format": "dummy",
            "hf_overrides": {"quantization_config": {"quant_method": "fp8", "fmt": "e4m3",
                                                     "activation_scheme": "dynamic",
                                                     "weight_block_size": [block, block]}}}
