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
        hf_reward_class: HF ``architectures[0]`` of the scalar reward model (a
            ``*ForSequenceClassification`` with ``num_labels=1``: the backbone plus a bias-free
            ``score`` linear layer ``[1, hidden]``).
    """

    model_type: str
    hf_class: str
    qk_layernorm: bool
    hf_reward_class: str = ""


ARCHITECTURES: Dict[str, ArchSpec] = {
    "qwen3": ArchSpec(model_type="qwen3", hf_class="Qwen3ForCausalLM", qk_layernorm=True,
                      hf_reward_class="Qwen3ForSequenceClassification"),
    "llama": ArchSpec(model_type="llama", hf_class="LlamaForCausalLM", qk_layernorm=False,
                      hf_reward_class="LlamaForSequenceClassification"),
}

# Model heads: ``lm`` (the causal LM's vocab-parallel output layer) or ``scalar`` (a Bradley-Terry
# reward head: one value per position, read at the last real token).
HEADS = ("lm", "scalar")
SEQ_CLS_SUFFIX = "ForSequenceClassification"


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


def config_head(hf_config: Any) -> str:
    """The head an HF config describes: ``scalar`` for a ``*ForSequenceClassification`` config, else ``lm``.

    Raises:
        UnsupportedArchitectureError: a sequence-classification config with ``num_labels`` != 1
            (a Bradley-Terry reward model has one output).
    """
    archs = hf_get(hf_config, "architectures") or []
    if not any(str(a).endswith(SEQ_CLS_SUFFIX) for a in archs):
        return "lm"
    id2label = hf_get(hf_config, "id2label")
    # transformers: the label count is len(id2label); a config without id2label has 2 labels
    labels = len(id2label) if id2label else (hf_get(hf_config, "num_labels") or 2)
    if int(labels) != 1:
        raise UnsupportedArchitectureError(
            f"{archs[0]} with num_labels={labels}: only scalar reward models (num_labels=1) are supported")
    return "scalar"


def hf_class_for(hf_config: Any, head: str) -> str:
    """HF ``architectures[0]`` for a model of this config with ``head`` (``lm`` or ``scalar``).

    Raises:
        ValueError: unknown head.
    """
    spec = get_arch_spec(hf_config)
    if head == "lm":
        return spec.hf_class
    if head == "scalar":
        return spec.hf_reward_class
    raise ValueError(f"unknown model head {head!r}; expected one of {HEADS}")
