"""Supported Hugging Face architectures and their Megatron-relevant traits.

One entry per HF ``model_type``. ``build.py`` reads the traits to fill a
``TransformerConfig``; ``mapping.py`` reads them to know which tensors exist. Adding an
architecture means adding an entry here (and, if its tensors differ, a mapping rule).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict


@dataclass(frozen=True)
class ArchSpec:
    """Traits of one decoder-only architecture (all dense, RMSNorm, SwiGLU, RoPE, GQA).

    Attributes:
        model_type: HF ``config.model_type`` ("qwen3", "llama").
        hf_class: HF ``architectures[0]`` name, used in exported ``config.json``.
        qk_layernorm: per-head RMSNorm on queries and keys (Qwen3: ``q_norm``/``k_norm``).
    """

    model_type: str
    hf_class: str
    qk_layernorm: bool


ARCHITECTURES: Dict[str, ArchSpec] = {
    "qwen3": ArchSpec(model_type="qwen3", hf_class="Qwen3ForCausalLM", qk_layernorm=True),
    "llama": ArchSpec(model_type="llama", hf_class="LlamaForCausalLM", qk_layernorm=False),
}


class UnsupportedArchitectureError(ValueError):
    """The HF config names an architecture this project cannot map to Megatron."""


def hf_get(hf_config: Any, key: str, default: Any = None) -> Any:
    """Read ``key`` from an HF ``PretrainedConfig`` or a plain ``config.json`` dict."""
    if isinstance(hf_config, dict):
        return hf_config.get(key, default)
    return getattr(hf_config, key, default)


def get_arch_spec(hf_config: Any) -> ArchSpec:
    """The :class:`ArchSpec` for an HF config (object or dict).

    Raises:
        UnsupportedArchitectureError: ``model_type`` is not supported; the message lists
            the supported ones and their HF classes.
    """
    model_type = hf_get(hf_config, "model_type")
    spec = ARCHITECTURES.get(model_type)
    if spec is None:
        arch = hf_get(hf_config, "architectures") or ["?"]
        supported = ", ".join(f"{k} ({v.hf_class})" for k, v in ARCHITECTURES.items())
        raise UnsupportedArchitectureError(
            f"unsupported architecture: model_type={model_type!r} ({arch[0]}); supported model types: {supported}")
    return spec
