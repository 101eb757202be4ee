"""Model dimensions for planning, read without loading weights or downloading anything.

:func:`resolve_shape` finds the shape of ``model.hf_path``: the tiny factory's fields for
``tiny``, the ``config.json`` of a local folder, the local Hugging Face cache, or a built-in
table of the models this project's recipes name (Qwen3-8B, Qwen3-14B and the released BR-RM
judges built on them). Another model: pass its ``config.json`` (``--hf-config``).

Parameter counts follow Megatron-Core's GPT layer for Qwen3/Llama (no biases, SwiGLU, GQA):
per layer ``h * (q + 2 kv)`` (``linear_qkv``) + ``q * h`` (``linear_proj``) + ``h * 2f``
(``linear_fc1``, gate and up) + ``f * h`` (``linear_fc2``), all split by TP, plus the
replicated norms ``2h`` (+ ``2 d`` for Qwen3's q/k norms); embedding and output layer
``V * h`` each (one when tied), split by TP; final norm ``h``. With ``q = heads * d`` and
``kv = groups * d``. This reproduces the published sizes (Qwen3-8B: 8.19e9, Qwen3-14B: 14.77e9).

Imports nothing of the project but :mod:`megatron_brrm.config` names in docstrings.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from megatron_brrm.model.architectures import UnsupportedArchitectureError, get_arch_spec


class ShapeError(ValueError):
    """The model's dimensions cannot be found or are inconsistent (the message says which and how to fix)."""


@dataclass(frozen=True)
class ModelShape:
    """Dimensions of a dense decoder (Qwen3 / Llama layout).

    Attributes:
        name: where the numbers came from (hub id, folder or ``tiny``).
        num_layers, hidden_size, num_attention_heads, num_query_groups (KV heads), head_dim,
        ffn_hidden_size (SwiGLU intermediate size), vocab_size (unpadded): the HF config values.
        tied_embeddings: input and output embeddings shared.
        qk_layernorm: per-head q/k RMSNorm (Qwen3).
    """

    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    ffn_hidden_size: int
    vocab_size: int
    tied_embeddings: bool = False
    qk_layernorm: bool = True

    @property
    def q_size(self) -> int:
        """Query projection width: heads * head_dim."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Key (= value) projection width: query groups * head_dim."""
        return self.num_query_groups * self.head_dim

    def linear_shapes(self) -> Dict[str, tuple]:
        """``{name: (out_features, in_features)}`` of one layer's four GEMM weights (Megatron names, unsplit)."""
        h, f = self.hidden_size, self.ffn_hidden_size
        return {"linear_qkv": (self.q_size + 2 * self.kv_size, h), "linear_proj": (h, self.q_size),
                "linear_fc1": (2 * f, h), "linear_fc2": (h, f)}

    @property
    def layer_split_params(self) -> int:
        """Parameters of one layer that TP splits (the four GEMM weights)."""
        return sum(o * i for o, i in self.linear_shapes().values())

    @property
    def layer_replicated_params(self) -> int:
        """Parameters of one layer every TP rank holds whole: the two RMSNorms (+ q/k norms)."""
        return 2 * self.hidden_size + (2 * self.head_dim if self.qk_layernorm else 0)

    def num_params(self, vocab_rows: Optional[int] = None) -> int:
        """All parameters, with ``vocab_rows`` embedding rows (default: the unpadded vocabulary)."""
        rows = self.vocab_size if vocab_rows is None else vocab_rows
        emb = rows * self.hidden_size * (1 if self.tied_embeddings else 2)
        return self.num_layers * (self.layer_split_params + self.layer_replicated_params) + emb + self.hidden_size

    @classmethod
    def from_hf_config(cls, cfg: Dict[str, Any], name: str) -> "ModelShape":
        """From a ``config.json`` dict (Qwen3 / Llama keys).

        Raises:
            ShapeError: an architecture the project cannot train, or a required key is missing (named).
        """
        try:
            get_arch_spec(cfg)
        except UnsupportedArchitectureError as exc:
            raise ShapeError(f"{name}: {exc}") from None
        missing = [k for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
                               "vocab_size") if k not in cfg]
        if missing:
            raise ShapeError(f"{name}: config.json lacks {', '.join(missing)}")
        heads = int(cfg["num_attention_heads"])
        return cls(name=name, num_layers=int(cfg["num_hidden_layers"]), hidden_size=int(cfg["hidden_size"]),
                   num_attention_heads=heads, num_query_groups=int(cfg.get("num_key_value_heads") or heads),
                   head_dim=int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads),
                   ffn_hidden_size=int(cfg["intermediate_size"]), vocab_size=int(cfg["vocab_size"]),
                   tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                   qk_layernorm=cfg.get("model_type") == "qwen3")


# The models the shipped recipes and the released judges use (their config.json values).
_QWEN3_8B = dict(num_layers=36, hidden_size=4096, num_attention_heads=32, num_query_groups=8, head_dim=128,
                 ffn_hidden_size=12288, vocab_size=151936, tied_embeddings=False, qk_layernorm=True)
_QWEN3_14B = dict(num_layers=40, hidden_size=5120, num_attention_heads=40, num_query_groups=8, head_dim=128,
                  ffn_hidden_size=17408, vocab_size=151936, tied_embeddings=False, qk_layernorm=True)
KNOWN_SHAPES: Dict[str, Dict[str, Any]] = {
    "Qwen/Qwen3-8B": _QWEN3_8B, "nvidia/Qwen3-Nemotron-8B-BRRM": _QWEN3_8B,
    "Qwen/Qwen3-14B": _QWEN3_14B, "nvidia/Qwen3-Nemotron-14B-BRRM": _QWEN3_14B,
}


def _read_config(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ShapeError(f"{path}: cannot read config.json ({exc})") from None


def _cached_config(repo_id: str) -> Optional[Path]:
    """``config.json`` of ``repo_id`` from the local HF cache, if it is there (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache  # optional: huggingface_hub (extra)
    except ImportError:
        return None
    try:
        hit = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id the hub library rejects: not cached
        return None
    return Path(hit) if isinstance(hit, str) else None


def resolve_shape(model_cfg, hf_config: Optional[str] = None) -> ModelShape:
    """The :class:`ModelShape` of ``model_cfg`` (a :class:`megatron_brrm.config.ModelConfig`).

    Order: ``hf_config`` (a ``config.json`` or a folder holding one), ``hf_path == "tiny"``
    (the ``tiny_*`` fields), a local folder, the local HF cache, :data:`KNOWN_SHAPES`.

    Raises:
        ShapeError: none of these knows the model; the message says to pass ``--hf-config``.
    """
    if hf_config:
        p = Path(hf_config)
        p = p / "config.json" if p.is_dir() else p
        if not p.is_file():
            raise ShapeError(f"--hf-config {hf_config}: no such config.json")
        return ModelShape.from_hf_config(_read_config(p), str(hf_config))
    ref = model_cfg.hf_path
    if not ref:
        raise ShapeError("model.hf_path is unset: name the model (an HF folder or hub id) or pass --hf-config")
    if ref == "tiny":
        m = model_cfg
        return ModelShape(name="tiny", num_layers=m.tiny_num_layers, hidden_size=m.tiny_hidden_size,
                          num_attention_heads=m.tiny_num_attention_heads,
                          num_query_groups=m.tiny_num_key_value_heads, head_dim=m.tiny_head_dim,
                          ffn_hidden_size=m.tiny_intermediate_size, vocab_size=m.tiny_vocab_size,
                          tied_embeddings=m.tiny_tie_word_embeddings, qk_layernorm=True)
    folder = Path(ref).expanduser()
    if (folder / "config.json").is_file():
        return ModelShape.from_hf_config(_read_config(folder / "config.json"), ref)
    cached = _cached_config(ref)
    if cached is not None:
        return ModelShape.from_hf_config(_read_config(cached), ref)
    if ref in KNOWN_SHAPES:
        return ModelShape(name=ref, **KNOWN_SHAPES[ref])
    raise ShapeError(f"model.hf_path={ref!r}: no local folder, not in the local HF cache, and not one of the "
                     f"built-in shapes ({', '.join(sorted(KNOWN_SHAPES))}); pass --hf-config PATH/config.json")
