"""Declarative HF <-> Megatron parameter mapping: the one place that knows every tensor.

Each supported architecture (``architectures.py``) has a list of :class:`ParamRule`: a
Megatron name pattern, the HF name pattern(s) feeding it, and a *kind* that fixes both the
transform and the tensor-parallel split (docs/design.md §8; the same rules as
Megatron-Bridge's ``QKVMapping`` / ``GatedMLPMapping`` / ``ColumnParallelMapping`` /
``RowParallelMapping`` / ``ReplicatedMapping``):

========== =========================================== ======================================
kind       full Megatron tensor from HF                TP split (``shard`` / ``gather``)
========== =========================================== ======================================
replicated identity (norms, q/k norms)                 none, every rank holds the whole tensor
row        identity (``linear_proj``, ``linear_fc2``)   columns (dim 1)
vocab      HF rows + zero padding rows to the padded   rows (dim 0), incl. the padding rows
           vocab (embedding, output layer)
qkv        per query group g: the group's H/G query    rows (dim 0): contiguous, i.e. whole
           heads, then k_g, then v_g                   query groups per rank (G % TP == 0)
gated      ``[gate; up]`` (``linear_fc1``)             gate and up are split separately; rank
                                                       r holds ``[gate_r; up_r]``
========== =========================================== ======================================

Heads: a causal LM's ``output_layer`` (kind ``vocab``, HF ``lm_head``) or, for a scalar
(Bradley-Terry) reward model (``get_mapping(..., head="scalar")``, the default for an HF
``*ForSequenceClassification`` config), a ``[1, hidden]`` reward head kept under the same
Megatron name ``output_layer.weight`` and mapped to HF's ``score.weight`` as kind
``replicated``: every TP rank holds the whole head, only the last pipeline stage has it, and a
reward model never ties it to the embedding.

Names are *global* Megatron names (``decoder.layers.{i}`` with the global layer index, as
Megatron's ``sharded_state_dict`` uses); :func:`local_to_global_layer` converts a rank's
``state_dict`` names. The local layer spec keeps ``input_layernorm`` / ``pre_mlp_layernorm``
modules; the Transformer Engine spec fuses them into ``linear_qkv.layer_norm_weight`` /
``linear_fc1.layer_norm_weight``. Every method accepts both name sets;
``megatron_param_names`` lists the set chosen with ``get_mapping(..., fused_norms=...)``.

All transforms are pure re-indexing (``cat`` / ``reshape`` / slicing), so
``to_hf(to_megatron(x)) == x`` and ``gather(shard(x)) == x`` bit for bit, in any dtype.
The module needs only torch (the rollout side imports it without Megatron).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from megatron_brrm.model.architectures import HEADS, ArchSpec, config_head, get_arch_spec, hf_get

Tensor = torch.Tensor

KINDS = ("replicated", "row", "vocab", "qkv", "gated")
_SPLIT_AXIS = {"replicated": None, "row": 1, "vocab": 0, "qkv": 0, "gated": 0}

# Local-spec norm names <-> Transformer Engine fused names (suffix after "decoder.layers.{i}.").
_TE_FUSED = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
}
_TE_UNFUSED = {v: k for k, v in _TE_FUSED.items()}
_LAYER_RE = re.compile(r"^(.*?\bdecoder\.layers\.)(\d+)(\..+)$")


class MappingError(KeyError):
    """A tensor name, shape or set of tensors does not fit the architecture's mapping."""

    def __str__(self) -> str:  # KeyError repr-quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ParamRule:
    """One mapping rule. ``{i}`` in a pattern is the (global) layer index."""

    megatron: str
    hf: Tuple[str, ...]
    kind: str


def _llama_rules(qk_layernorm: bool, head: str = "lm") -> List[ParamRule]:
    L, H = "decoder.layers.{i}.", "model.layers.{i}."
    rules = [
        ParamRule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "vocab"),
        ParamRule(L + "input_layernorm.weight", (H + "input_layernorm.weight",), "replicated"),
        ParamRule(L + "self_attention.linear_qkv.weight",
                  (H + "self_attn.q_proj.weight", H + "self_attn.k_proj.weight", H + "self_attn.v_proj.weight"), "qkv"),
    ]
    if qk_layernorm:
        rules += [
            ParamRule(L + "self_attention.q_layernorm.weight", (H + "self_attn.q_norm.weight",), "replicated"),
            ParamRule(L + "self_attention.k_layernorm.weight", (H + "self_attn.k_norm.weight",), "replicated"),
        ]
    rules += [
        ParamRule(L + "self_attention.linear_proj.weight", (H + "self_attn.o_proj.weight",), "row"),
        ParamRule(L + "pre_mlp_layernorm.weight", (H + "post_attention_layernorm.weight",), "replicated"),
        ParamRule(L + "mlp.linear_fc1.weight", (H + "mlp.gate_proj.weight", H + "mlp.up_proj.weight"), "gated"),
        ParamRule(L + "mlp.linear_fc2.weight", (H + "mlp.down_proj.weight",), "row"),
        ParamRule("decoder.final_layernorm.weight", ("model.norm.weight",), "replicated"),
    ]
    if head == "scalar":  # the Bradley-Terry reward head (HF *ForSequenceClassification ``score``)
        rules.append(ParamRule("output_layer.weight", ("score.weight",), "replicated"))
    else:
        rules.append(ParamRule("output_layer.weight", ("lm_head.weight",), "vocab"))
    return rules


def _pattern_regex(pattern: str) -> re.Pattern:
    return re.compile("^" + re.escape(pattern).replace(r"\{i\}", r"(\d+)") + "$")


# TP sizes whose padded vocabulary is the same: a checkpoint written at any of them loads at any other.
PORTABLE_TP = 8


def padded_vocab_size(vocab_size: int, make_vocab_size_divisible_by: int = 128, tp_size: int = 1) -> int:
    """Megatron's padded vocabulary rows: the next multiple of ``divisible_by * lcm(TP, 8)``.

    Megatron-LM (``_vocab_size_with_padding``) pads to a multiple of ``divisible_by * TP``,
    so the embedding's shape depends on TP: Qwen3's 151936 tokens become 151936 rows at
    TP=1 but 152064 at TP=2, and a training checkpoint written at TP=2 cannot resume at
    TP=1. Padding to ``divisible_by * lcm(TP, PORTABLE_TP)`` instead gives the same rows for
    every TP in {1, 2, 4, 8} (Qwen3: 152576 = 149 * 1024, i.e. 640 zero rows, 6.5 MB of a
    14B model in bf16) and is still divisible by TP, which vocab-parallel layers need. The
    padding rows are zero and are excluded from logprobs (:mod:`megatron_brrm.rl.logprobs`)
    and from HF exports.

    Raises:
        ValueError: ``vocab_size`` < 1 or ``tp_size`` < 1.
    """
    if vocab_size < 1 or tp_size < 1:
        raise ValueError(f"padded_vocab_size: vocab_size={vocab_size} and tp_size={tp_size} must be >= 1")
    multiple = max(1, make_vocab_size_divisible_by) * math.lcm(tp_size, PORTABLE_TP)
    return ((vocab_size + multiple - 1) // multiple) * multiple


_pad_vocab = padded_vocab_size


def to_unfused_name(name: str) -> str:
    """TE fused-norm name -> local-spec name (other names unchanged)."""
    m = _LAYER_RE.match(name)
    if m and m.group(3)[1:] in _TE_UNFUSED:
        return f"{m.group(1)}{m.group(2)}.{_TE_UNFUSED[m.group(3)[1:]]}"
    return name


def to_fused_name(name: str) -> str:
    """Local-spec norm name -> TE fused-norm name (other names unchanged)."""
    m = _LAYER_RE.match(name)
    if m and m.group(3)[1:] in _TE_FUSED:
        return f"{m.group(1)}{m.group(2)}.{_TE_FUSED[m.group(3)[1:]]}"
    return name


def _strip_module_prefix(name: str) -> str:
    """Drop DDP / Float16Module wrappers' ``module.`` prefixes from a state_dict name."""
    while name.startswith("module."):
        name = name[len("module."):]
    return name


class ArchMapping:
    """Mapping of one model (architecture + sizes) between HF and Megatron tensors.

    Build with :func:`get_mapping`. Shapes are those of ``weight`` matrices
    ``[out_features, in_features]``; dtypes are preserved by every method.

    Attributes:
        arch: the :class:`ArchSpec`.
        num_layers, hidden_size, ffn_hidden_size, num_heads, num_query_groups, head_dim,
        vocab_size (HF), padded_vocab_size (Megatron rows, >= vocab_size), tied (bool),
        fused_norms (bool: ``megatron_param_names`` uses TE names), head (``lm`` or ``scalar``).
    """

    def __init__(self, arch: ArchSpec, rules: Sequence[ParamRule], *, num_layers: int, hidden_size: int,
                 ffn_hidden_size: int, num_heads: int, num_query_groups: int, head_dim: int, vocab_size: int,
                 padded_vocab_size: int, tied: bool, fused_norms: bool = False, head: str = "lm"):
        if num_heads % num_query_groups:
            raise MappingError(f"num_attention_heads={num_heads} is not a multiple of num_key_value_heads={num_query_groups}")
        if padded_vocab_size < vocab_size:
            raise MappingError(f"padded_vocab_size={padded_vocab_size} < vocab_size={vocab_size}")
        self.arch = arch
        self.rules = list(rules)
        self.num_layers, self.hidden_size, self.ffn_hidden_size = num_layers, hidden_size, ffn_hidden_size
        self.num_heads, self.num_query_groups, self.head_dim = num_heads, num_query_groups, head_dim
        self.vocab_size, self.padded_vocab_size, self.tied = vocab_size, padded_vocab_size, tied
        self.fused_norms = fused_norms
        self.head = head
        self._mg = [(_pattern_regex(r.megatron), r) for r in self.rules]
        self._hf = [(_pattern_regex(h), r, j) for r in self.rules for j, h in enumerate(r.hf)]
        # name -> match, filled on use: a refit asks about every tensor on every call
        self._mg_cache: Dict[str, Tuple[ParamRule, Optional[int]]] = {}
        self._hf_cache: Dict[str, Tuple[str, int]] = {}

    # ---------------------------------------------------------------- names
    def _match(self, megatron_name: str) -> Tuple[ParamRule, Optional[int]]:
        hit = self._mg_cache.get(megatron_name)
        if hit is not None:
            return hit
        name = to_unfused_name(_strip_module_prefix(megatron_name))
        for regex, rule in self._mg:
            m = regex.match(name)
            if m:
                layer = int(m.group(1)) if m.groups() else None
                if layer is not None and not 0 <= layer < self.num_layers:
                    raise MappingError(f"{megatron_name}: layer {layer} is outside 0..{self.num_layers - 1} "
                                       "(is this a per-rank local name? use local_to_global_layer first)")
                self._mg_cache[megatron_name] = (rule, layer)
                return rule, layer
        raise MappingError(f"{megatron_name}: not a {self.arch.model_type} Megatron parameter name "
                           f"(expected one of: {', '.join(r.megatron for r in self.rules)})")

    def kind(self, megatron_name: str) -> str:
        """The rule kind of ``megatron_name`` (see the module table)."""
        return self._match(megatron_name)[0].kind

    def megatron_param_names(self, num_layers: Optional[int] = None) -> List[str]:
        """All global Megatron parameter names, in model order.

        ``output_layer.weight`` is left out when embeddings are tied (it is the embedding).
        Norm names follow ``fused_norms`` (TE names) or the local spec.
        """
        n = self.num_layers if num_layers is None else num_layers
        names: List[str] = []
        for rule in self.rules:
            if rule.megatron == "output_layer.weight" and self.tied:
                continue
            if "{i}" not in rule.megatron:
                names.append(rule.megatron)
        # model order: embedding, layers..., final norm, output
        head = [x for x in names if x.startswith("embedding.")]
        tail = [x for x in names if not x.startswith("embedding.")]
        layer_rules = [r.megatron for r in self.rules if "{i}" in r.megatron]
        layers = [p.format(i=i) for i in range(n) for p in layer_rules]
        if self.fused_norms:
            layers = [to_fused_name(x) for x in layers]
        return head + layers + tail

    def hf_param_names(self, num_layers: Optional[int] = None) -> List[str]:
        """All HF tensor names the model has (``lm_head.weight`` left out when tied)."""
        out: List[str] = []
        for name in self.megatron_param_names(num_layers):
            out += self.hf_names_for(name)
        return out

    def hf_names_for(self, megatron_name: str) -> List[str]:
        """HF names feeding ``megatron_name``: [q, k, v] for ``linear_qkv``, [gate, up] for
        ``linear_fc1``, one name otherwise. A tied ``output_layer.weight`` (held by the last
        pipeline stage) reads ``model.embed_tokens.weight``."""
        rule, layer = self._match(megatron_name)
        if rule.megatron == "output_layer.weight" and self.tied:
            return ["model.embed_tokens.weight"]
        return [h.format(i=layer) for h in rule.hf]

    def megatron_name_for_hf(self, hf_name: str) -> Tuple[str, int]:
        """``(global Megatron name, position among its HF inputs)`` for an HF tensor name.

        Raises:
            MappingError: the name is not part of this architecture.
        """
        hit = self._hf_cache.get(hf_name)
        if hit is not None:
            return hit
        for regex, rule, j in self._hf:
            m = regex.match(hf_name)
            if m:
                name = rule.megatron.format(i=int(m.group(1))) if m.groups() else rule.megatron
                if self.fused_norms:
                    name = to_fused_name(name)
                self._hf_cache[hf_name] = (name, j)
                return name, j
        raise MappingError(f"{hf_name}: not a {self.arch.model_type} HF tensor name")

    # --------------------------------------------------------------- shapes
    def hf_shape(self, hf_name: str) -> Tuple[int, ...]:
        """Expected shape of an HF tensor (``weight`` is ``[out, in]``)."""
        name, j = self.megatron_name_for_hf(hf_name)
        kind = self.kind(name)
        d, h, q, g = self.head_dim, self.hidden_size, self.num_heads, self.num_query_groups
        if kind == "vocab":
            return (self.vocab_size, h)
        if kind == "qkv":
            return ((q if j == 0 else g) * d, h)
        if kind == "gated":
            return (self.ffn_hidden_size, h)
        return self.full_shape(name)

    def full_shape(self, megatron_name: str) -> Tuple[int, ...]:
        """Shape of the full (unsharded) Megatron tensor, incl. vocab padding rows."""
        rule, _ = self._match(megatron_name)
        d, h, q, g, f = self.head_dim, self.hidden_size, self.num_heads, self.num_query_groups, self.ffn_hidden_size
        base = to_unfused_name(_strip_module_prefix(megatron_name))
        if rule.kind == "vocab":
            return (self.padded_vocab_size, h)
        if rule.kind == "qkv":
            return ((q + 2 * g) * d, h)
        if rule.kind == "gated":
            return (2 * f, h)
        if base.endswith("linear_proj.weight"):
            return (h, q * d)
        if base.endswith("linear_fc2.weight"):
            return (h, f)
        if base.endswith(("q_layernorm.weight", "k_layernorm.weight")):
            return (d,)
        if base == "output_layer.weight":  # the scalar reward head (one output)
            return (1, h)
        return (h,)

    def shard_shape(self, megatron_name: str, tp_size: int) -> Tuple[int, ...]:
        """Shape of one TP rank's shard."""
        shape = list(self.full_shape(megatron_name))
        axis = self.tp_split_axis(megatron_name)
        if axis is not None:
            shape[axis] //= tp_size
        return tuple(shape)

    def _check(self, what: str, tensor: Tensor, expected: Tuple[int, ...]) -> None:
        if tuple(tensor.shape) != tuple(expected):
            raise MappingError(f"{what}: shape {tuple(tensor.shape)} does not match the config's {tuple(expected)}")

    # ------------------------------------------------------------ transforms
    def to_megatron(self, megatron_name: str, hf_tensors: Mapping[str, Tensor]) -> Tensor:
        """Full (unsharded) Megatron tensor from its HF tensors.

        Args:
            megatron_name: global Megatron name (either norm name set).
            hf_tensors: ``{hf_name: tensor}`` holding at least :meth:`hf_names_for`'s names.

        Returns:
            A new tensor of :meth:`full_shape`, same dtype (vocab padding rows are zero).

        Raises:
            MappingError: a needed HF tensor is missing or has the wrong shape.
        """
        rule, _ = self._match(megatron_name)
        names = self.hf_names_for(megatron_name)
        missing = [n for n in names if n not in hf_tensors]
        if missing:
            raise MappingError(f"{megatron_name}: missing HF tensor(s) {missing}")
        ts = [hf_tensors[n] for n in names]
        for n, t in zip(names, ts):
            self._check(n, t, self.hf_shape(n))
        if rule.kind == "vocab":
            out = ts[0].new_zeros(self.full_shape(megatron_name))
            out[: self.vocab_size] = ts[0]
            return out
        if rule.kind == "qkv":
            q, k, v = ts
            g, d, hidden = self.num_query_groups, self.head_dim, self.hidden_size
            per = self.num_heads // g
            grouped = torch.cat([q.reshape(g, per, d, hidden), k.reshape(g, 1, d, hidden), v.reshape(g, 1, d, hidden)], dim=1)
            return grouped.reshape((per + 2) * g * d, hidden)
        if rule.kind == "gated":
            return torch.cat(ts, dim=0)
        return ts[0].clone()

    def to_hf(self, megatron_name: str, full: Tensor) -> Dict[str, Tensor]:
        """HF tensors from a full Megatron tensor (exact inverse of :meth:`to_megatron`).

        A tied ``output_layer.weight`` maps to nothing (``{}``): HF ties ``lm_head`` itself.

        Raises:
            MappingError: ``full`` does not have :meth:`full_shape`.
        """
        rule, _ = self._match(megatron_name)
        self._check(megatron_name, full, self.full_shape(megatron_name))
        if rule.megatron == "output_layer.weight" and self.tied:
            return {}
        names = self.hf_names_for(megatron_name)
        if rule.kind == "vocab":
            return {names[0]: full[: self.vocab_size].clone()}
        if rule.kind == "qkv":
            g, d, hidden = self.num_query_groups, self.head_dim, self.hidden_size
            per = self.num_heads // g
            grouped = full.reshape(g, per + 2, d, hidden)
            q = grouped[:, :per].reshape(g * per * d, hidden).clone()
            k = grouped[:, per].reshape(g * d, hidden).clone()
            v = grouped[:, per + 1].reshape(g * d, hidden).clone()
            return dict(zip(names, (q, k, v)))
        if rule.kind == "gated":
            gate, up = full.chunk(2, dim=0)
            return {names[0]: gate.clone(), names[1]: up.clone()}
        return {names[0]: full.clone()}

    # ------------------------------------------------------------ TP split
    def tp_split_axis(self, megatron_name: str) -> Optional[int]:
        """Axis along which TP ranks split the tensor; None when replicated."""
        return _SPLIT_AXIS[self.kind(megatron_name)]

    def shard(self, megatron_name: str, full: Tensor, tp_rank: int, tp_size: int) -> Tensor:
        """TP rank ``tp_rank``'s shard of a full Megatron tensor (a new contiguous tensor).

        Raises:
            MappingError: wrong full shape, or the split axis is not divisible by ``tp_size``
                (for ``linear_qkv``: query groups not divisible by TP).
        """
        if not 0 <= tp_rank < tp_size:
            raise MappingError(f"tp_rank={tp_rank} outside 0..{tp_size - 1}")
        kind = self.kind(megatron_name)
        self._check(megatron_name, full, self.full_shape(megatron_name))
        if kind == "replicated" or tp_size == 1:
            return full.clone()
        if kind == "qkv" and self.num_query_groups % tp_size:
            raise MappingError(f"{megatron_name}: {self.num_query_groups} query groups cannot be split over TP={tp_size}")
        if kind == "gated":
            gate, up = full.chunk(2, dim=0)
            if gate.shape[0] % tp_size:
                raise MappingError(f"{megatron_name}: ffn size {gate.shape[0]} not divisible by TP={tp_size}")
            return torch.cat([gate.chunk(tp_size, 0)[tp_rank], up.chunk(tp_size, 0)[tp_rank]], dim=0)
        axis = _SPLIT_AXIS[kind]
        if full.shape[axis] % tp_size:
            raise MappingError(f"{megatron_name}: dim {axis} of size {full.shape[axis]} not divisible by TP={tp_size}")
        return full.chunk(tp_size, dim=axis)[tp_rank].clone()

    def gather(self, megatron_name: str, shards: Sequence[Tensor]) -> Tensor:
        """Full Megatron tensor from all TP ranks' shards (in TP rank order); inverse of :meth:`shard`.

        For replicated tensors the first shard is returned (they are equal by construction).
        """
        kind = self.kind(megatron_name)
        tp_size = len(shards)
        if tp_size == 0:
            raise MappingError(f"{megatron_name}: no shards to gather")
        expected = self.shard_shape(megatron_name, tp_size)
        for r, s in enumerate(shards):
            self._check(f"{megatron_name} (TP rank {r} of {tp_size})", s, expected)
        if kind == "replicated" or tp_size == 1:
            return shards[0].clone()
        if kind == "gated":
            halves = [s.chunk(2, dim=0) for s in shards]
            return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
        return torch.cat(list(shards), dim=_SPLIT_AXIS[kind])


def get_mapping(hf_config: Any, *, padded_vocab_size: Optional[int] = None, make_vocab_size_divisible_by: int = 128,
                tp_size: int = 1, fused_norms: bool = False, head: Optional[str] = None) -> ArchMapping:
    """The :class:`ArchMapping` for an HF config (``PretrainedConfig`` or ``config.json`` dict).

    Args:
        hf_config: the HF config.
        padded_vocab_size: Megatron's vocab rows; default
            ``padded_vocab_size(vocab, make_vocab_size_divisible_by, tp_size)`` (what
            :func:`megatron_brrm.model.build.build_gpt_model` builds for that TP).
        fused_norms: list names with the Transformer Engine fused-norm names.
        head: ``lm`` (causal LM) or ``scalar`` (reward model); default: what the config
            describes (:func:`~megatron_brrm.model.architectures.config_head`). A scalar head is
            never tied to the embedding.

    Raises:
        UnsupportedArchitectureError: unknown ``model_type`` (lists the supported ones), or a
            sequence-classification config with ``num_labels`` != 1.
        ValueError: unknown ``head``.
    """
    arch = get_arch_spec(hf_config)
    head = config_head(hf_config) if head is None else head
    if head not in HEADS:
        raise ValueError(f"unknown model head {head!r}; expected one of {HEADS}")
    heads = hf_get(hf_config, "num_attention_heads")
    hidden = hf_get(hf_config, "hidden_size")
    vocab = hf_get(hf_config, "vocab_size")
    if padded_vocab_size is None:
        padded_vocab_size = _pad_vocab(vocab, make_vocab_size_divisible_by, tp_size)
    return ArchMapping(
        arch, _llama_rules(arch.qk_layernorm, head),
        num_layers=hf_get(hf_config, "num_hidden_layers"), hidden_size=hidden,
        ffn_hidden_size=hf_get(hf_config, "intermediate_size"), num_heads=heads,
        num_query_groups=hf_get(hf_config, "num_key_value_heads") or heads,
        head_dim=hf_get(hf_config, "head_dim") or hidden // heads, vocab_size=vocab,
        padded_vocab_size=padded_vocab_size,
        tied=head == "lm" and bool(hf_get(hf_config, "tie_word_embeddings", False)),
        fused_norms=fused_norms, head=head,
    )


# ------------------------------------------------------------ pipeline layers
def layer_offset(pp_rank: int, pp_size: int, num_layers: int, vp_stage: Optional[int] = None,
                 vp_size: Optional[int] = None) -> int:
    """Global index of the first layer held by ``(pp_rank, vp_stage)`` with an even split.

    Megatron's ``get_transformer_layer_offset`` for an even split: each of the
    ``pp_size * vp_size`` chunks holds ``num_layers / (pp_size * vp_size)`` layers and
    chunk ``(pp_rank, vp_stage)`` starts at ``vp_stage * num_layers / vp_size +
    pp_rank * num_layers / (pp_size * vp_size)``.

    Raises:
        MappingError: ``num_layers`` not divisible by ``pp_size * vp_size``; missing vp_stage.
    """
    vp = vp_size or 1
    if num_layers % (pp_size * vp):
        raise MappingError(f"num_layers={num_layers} is not divisible by PP*VPP={pp_size}*{vp}")
    if vp_size is not None and vp_stage is None:
        raise MappingError("vp_stage is required with virtual pipeline parallelism")
    per_chunk = num_layers // (pp_size * vp)
    return (vp_stage or 0) * (num_layers // vp) + pp_rank * per_chunk


def local_to_global_layer(local_name: str, pp_rank: int, pp_size: int, num_layers: int,
                          vp_stage: Optional[int] = None, vp_size: Optional[int] = None) -> str:
    """Rewrite a rank's ``decoder.layers.{local}`` name to the global layer index.

    Names without a layer index (embedding, final norm, output layer) and wrapper prefixes
    (``module.``) are returned without the prefix and otherwise unchanged.
    """
    name = _strip_module_prefix(local_name)
    m = _LAYER_RE.match(name)
    if not m:
        return name
    per_chunk = num_layers // (pp_size * (vp_size or 1))
    local = int(m.group(2))
    if local >= per_chunk:
        raise MappingError(f"{local_name}: local layer {local} >= {per_chunk} layers per pipeline chunk")
    glob = layer_offset(pp_rank, pp_size, num_layers, vp_stage, vp_size) + local
    return f"{m.group(1)}{glob}{m.group(3)}"


def global_to_local_layer(global_name: str, pp_size: int, num_layers: int,
                          vp_size: Optional[int] = None) -> Tuple[int, Optional[int], str]:
    """Owner and local name of a global Megatron name: ``(pp_rank, vp_stage, local_name)``.

    The embedding lives on the first chunk ``(0, 0)``; the final norm and output layer on
    the last chunk ``(pp_size - 1, vp_size - 1)``. ``vp_stage`` is None without VPP.
    """
    vp = vp_size or 1
    name = _strip_module_prefix(global_name)
    m = _LAYER_RE.match(name)
    last_vp = (vp - 1) if vp_size is not None else None
    first_vp = 0 if vp_size is not None else None
    if not m:
        if name.startswith("embedding."):
            return 0, first_vp, name
        return pp_size - 1, last_vp, name
    glob = int(m.group(2))
    if not 0 <= glob < num_layers:
        raise MappingError(f"{global_name}: layer {glob} outside 0..{num_layers - 1}")
    layer_offset(0, pp_size, num_layers, 0 if vp_size else None, vp_size)  # divisibility check
    per_chunk = num_layers // (pp_size * vp)
    chunk = glob // per_chunk  # chunk index in model order: vp_stage * pp_size + pp_rank
    vp_stage, pp_rank = divmod(chunk, pp_size)
    return pp_rank, (vp_stage if vp_size is not None else None), f"{m.group(1)}{glob % per_chunk}{m.group(3)}"
