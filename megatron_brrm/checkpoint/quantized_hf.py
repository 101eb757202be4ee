"""Read a quantised HF checkpoint written by ``tools/quantize.py`` (NVIDIA ModelOpt's unified HF export).

The export is what vLLM and TensorRT-LLM serve: ``config.json`` carries a ``quantization_config``
(``quant_method: modelopt``), ``hf_quant_config.json`` names the algorithm, and each quantised
linear layer ``<name>`` is stored as low-precision weights plus scales:

=====================  ==============================  =========================================================
quant_algo             ``<name>.weight``               scales
=====================  ==============================  =========================================================
``FP8``                float8_e4m3fn ``[out, in]``     ``weight_scale`` (scalar), ``input_scale`` (scalar)
``W8A8_SQ_PER_CHANNEL`` int8 ``[out, in]``             ``weight_scale [out]``, ``input_scale`` (scalar),
                                                       ``pre_quant_scale [in]`` (SmoothQuant)
``W4A16_AWQ``          uint8 ``[out / 2, in]``: rows   ``weight_scale [out, in / group]``, ``pre_quant_scale
                       2k (low nibble) and 2k+1 (high  [in]`` where AWQ's smoothing could not be folded into
                       nibble), signed 4-bit           the preceding norm
=====================  ==============================  =========================================================

Dequantisation: ``W = q * scale`` (broadcast per tensor, per output row, or per row and input
group of ``group_size``); a ``pre_quant_scale`` ``s`` multiplies the layer's input, which equals
using ``W * s[None, :]``. :func:`load_quantized_hf` rebuilds the HF model from these tensors
(weight-only emulation on any machine, no GPU or ModelOpt needed) and, by default, also applies
the static per-tensor activation quantisation of FP8 and INT8 (``input_scale``) with forward
pre-hooks, so the CPU model computes what the low-precision kernels compute up to rounding of
the accumulation. It fails, naming the tensor, when a quantised layer lacks a scale or a tensor
has the wrong dtype or shape: the check that an export is complete and self-consistent.

Imports nothing of the project.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from safetensors.torch import load_file

SUPPORTED = ("FP8", "W8A8_SQ_PER_CHANNEL", "W4A16_AWQ")
FP8_MAX = 448.0


class QuantizedCheckpointError(ValueError):
    """The folder is not a complete quantised export (the message names the file or tensor)."""


@dataclass
class QuantizedInfo:
    """What :func:`load_quantized_hf` found: the algorithm, the quantised layers and their input scales."""

    quant_algo: str
    group_size: int = 0
    layers: List[str] = field(default_factory=list)
    input_scales: Dict[str, float] = field(default_factory=dict)


def read_quant_config(folder) -> dict:
    """The ``quantization`` section of ``hf_quant_config.json``, checked against ``config.json``.

    Raises:
        QuantizedCheckpointError: a file is missing, the two disagree, or the algorithm is not supported.
    """
    folder = Path(folder)
    try:
        hq = json.loads((folder / "hf_quant_config.json").read_text())["quantization"]
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise QuantizedCheckpointError(f"{folder}: not a quantised HF export (hf_quant_config.json / config.json: "
                                       f"{exc})") from None
    qc = cfg.get("quantization_config") or {}
    if qc.get("quant_method") != "modelopt" or qc.get("quant_algo") != hq.get("quant_algo"):
        raise QuantizedCheckpointError(f"{folder}/config.json: quantization_config {qc.get('quant_method')!r}/"
                                       f"{qc.get('quant_algo')!r} does not match hf_quant_config.json "
                                       f"('modelopt'/{hq.get('quant_algo')!r})")
    if hq.get("quant_algo") not in SUPPORTED:
        raise QuantizedCheckpointError(f"{folder}: quant_algo {hq.get('quant_algo')!r} is not one of {list(SUPPORTED)}")
    return hq


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """``uint8 [out / 2, in]`` -> ``int8 [out, in]`` in ``[-8, 7]`` (ModelOpt's packing: row 2k in the
    low nibble, row 2k+1 in the high nibble, two's complement)."""
    p = packed.to(torch.int16)
    nibbles = torch.stack([p & 0x0F, (p >> 4) & 0x0F], dim=1)  # [out/2, 2, in]
    signed = torch.where(nibbles >= 8, nibbles - 16, nibbles)
    return signed.reshape(-1, packed.shape[1]).to(torch.int8)


def dequantize_weight(algo: str, tensors: Dict[str, torch.Tensor], name: str, group_size: int = 0,
                      fold_pre_quant_scale: bool = True) -> torch.Tensor:
    """fp32 weight of layer ``name`` from its stored tensors (``name.weight``, ``name.weight_scale``,
    and, folded in unless ``fold_pre_quant_scale`` is False, ``name.pre_quant_scale``).

    Raises:
        QuantizedCheckpointError: a tensor is missing or has the wrong dtype/shape (named).
    """
    def need(suffix: str) -> torch.Tensor:
        t = tensors.get(f"{name}.{suffix}")
        if t is None:
            raise QuantizedCheckpointError(f"{name}.{suffix} is missing from the {algo} export")
        return t

    q, scale = need("weight"), need("weight_scale").float()
    expect = {"FP8": torch.float8_e4m3fn, "W8A8_SQ_PER_CHANNEL": torch.int8, "W4A16_AWQ": torch.uint8}[algo]
    if q.dtype != expect:
        raise QuantizedCheckpointError(f"{name}.weight is {q.dtype}, expected {expect} for {algo}")
    if algo == "FP8":
        w = q.float() * scale
    elif algo == "W8A8_SQ_PER_CHANNEL":
        if scale.shape != (q.shape[0],):
            raise QuantizedCheckpointError(f"{name}.weight_scale has shape {tuple(scale.shape)}, expected ({q.shape[0]},)")
        w = q.float() * scale[:, None]
    else:
        w = unpack_int4(q).float()
        groups = q.shape[1] // group_size if group_size else 0
        if not group_size or q.shape[1] % group_size or scale.shape != (w.shape[0], groups):
            raise QuantizedCheckpointError(f"{name}.weight_scale has shape {tuple(scale.shape)}, expected "
                                           f"({w.shape[0]}, {groups}) for group_size {group_size}")
        w = w * scale.repeat_interleave(group_size, dim=1)
    pre = tensors.get(f"{name}.pre_quant_scale")
    if pre is not None and fold_pre_quant_scale:
        w = w * pre.float()[None, :]
    return w


def _fake_quant_input(algo: str, scale: float, pre_quant_scale=None):
    """A forward pre-hook: ``x -> quant(x * pre_quant_scale)`` with a static per-tensor ``scale``."""
    def hook(module, args):
        x = args[0].float()
        if pre_quant_scale is not None:
            x = x * pre_quant_scale
        if algo == "FP8":
            y = (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * scale
        else:
            y = (x / scale).round().clamp(-128, 127) * scale
        return (y.to(args[0].dtype),) + tuple(args[1:])
    return hook


def load_quantized_hf(folder, dtype: torch.dtype = torch.float32, emulate_activations: bool = True
                      ) -> Tuple[torch.nn.Module, QuantizedInfo]:
    """Rebuild a quantised export as a plain ``transformers`` model (module docstring).

    Args:
        folder: the export (``config.json``, ``hf_quant_config.json``, ``*.safetensors``).
        dtype: dtype of the rebuilt model.
        emulate_activations: fake-quantise the inputs of FP8 / INT8 layers with their ``input_scale``.

    Returns:
        ``(model in eval mode, QuantizedInfo)``.

    Raises:
        QuantizedCheckpointError: incomplete or inconsistent export (tensor or file named).
    """
    from transformers import AutoConfig, AutoModelForCausalLM  # lazy: heavy, only needed on this path

    folder = Path(folder)
    hq = read_quant_config(folder)
    algo, group = hq["quant_algo"], int(hq.get("group_size") or 0)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise QuantizedCheckpointError(f"{folder}: no *.safetensors")
    tensors: Dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_file(str(f)))
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")  # rebuilt in full precision
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    info = QuantizedInfo(quant_algo=algo, group_size=group)
    state = {}
    hooks = {}
    act_quant = emulate_activations and algo in ("FP8", "W8A8_SQ_PER_CHANNEL")
    linear_names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for name in sorted(linear_names):
        if f"{name}.weight_scale" not in tensors:
            continue
        info.layers.append(name)
        emulate = act_quant and f"{name}.input_scale" in tensors
        state[f"{name}.weight"] = dequantize_weight(algo, tensors, name, group,
                                                    fold_pre_quant_scale=not emulate).to(dtype)
        if f"{name}.input_scale" in tensors:
            info.input_scales[name] = float(tensors[f"{name}.input_scale"].float())
        if emulate:
            pre = tensors.get(f"{name}.pre_quant_scale")
            hooks[name] = _fake_quant_input(algo, info.input_scales[name], None if pre is None else pre.float())
    extra = {"weight_scale", "input_scale", "pre_quant_scale", "weight_scale_2", "k_scale", "v_scale"}
    for key, t in tensors.items():
        if key in state or key.rsplit(".", 1)[-1] in extra:
            continue
        state[key] = t.to(dtype) if t.is_floating_point() else t
    if not info.layers:
        raise QuantizedCheckpointError(f"{folder}: quant_algo {algo} but no layer has a weight_scale")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise QuantizedCheckpointError(f"{folder}: tensors missing {missing[:5]} / unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    modules = dict(model.named_modules())
    for name, hook in hooks.items():
        modules[name].register_forward_pre_hook(hook)
    return model.eval(), info
