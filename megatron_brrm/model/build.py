"""Build a Megatron-Core ``GPTModel`` for this rank from a Hugging Face ``config.json``.

The HF -> Megatron config translation follows docs/design.md §8 (and Megatron-Bridge's
``CONFIG_MAPPING`` for Qwen3 / Llama): ``kv_channels = head_dim``, RMSNorm with
``layernorm_epsilon = rms_norm_eps``, SwiGLU (``gated_linear_unit`` + silu), no linear
biases, ``num_query_groups = num_key_value_heads``, ``qk_layernorm`` for Qwen3 only,
RoPE with ``rotary_base = rope_theta`` (a ``GPTModel`` argument), tied embeddings ->
``share_embeddings_and_output_weights``, vocab padded to a multiple of
``make_vocab_size_divisible_by * lcm(TP, 8)`` (:func:`padded_vocab_size`: Megatron-LM's
``_vocab_size_with_padding`` rule made TP-independent for TP <= 8).

Layer spec: Transformer Engine when TE imports and CUDA is present (or when
``model.transformer_impl == "transformer_engine"``), else Megatron's local spec. On the
local spec with sequence parallelism the norms are :class:`SequenceParallelTorchNorm`
(plain ``torch.nn.RMSNorm`` whose parameters carry ``sequence_parallel = True`` so
``finalize_model_grads`` all-reduces their grads): Megatron's torch-norm fallback refuses
``sequence_parallel`` (docs/design.md §7).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from megatron_brrm.model.architectures import ArchSpec, get_arch_spec, hf_get
from megatron_brrm.model.fp8 import FP8ConfigError, check_fp8_config, fp8_transformer_kwargs
from megatron_brrm.model.mapping import padded_vocab_size
from megatron_brrm.model.reward_head import attach_scalar_head

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ModelBuildError(ValueError):
    """The HF config or the model/parallel settings cannot be turned into a Megatron model."""


def load_hf_config(path: str | os.PathLike):
    """Load an HF ``PretrainedConfig`` from a model folder or a ``config.json`` file (no download).

    Raises:
        ModelBuildError: no ``config.json`` at ``path`` or it is not valid JSON.
        UnsupportedArchitectureError: the config's ``model_type`` is not supported.
    """
    from transformers import AutoConfig  # lazy: keeps train --help fast

    p = Path(path)
    cfg_file = p / "config.json" if p.is_dir() else p
    if not cfg_file.is_file():
        raise ModelBuildError(f"no HF config.json at {p}; pass a Hugging Face model folder (with config.json)")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelBuildError(f"{cfg_file}: not valid JSON ({exc})") from None
    get_arch_spec(raw)  # clear error before transformers' own
    return AutoConfig.from_pretrained(str(cfg_file.parent), local_files_only=True)


def rope_settings(hf_config: Any) -> dict:
    """RoPE arguments for ``GPTModel`` from an HF config (transformers 4.x or 5.x layout).

    transformers 5 keeps ``rope_theta`` and the scaling type in ``rope_parameters``; 4.x has
    ``rope_theta`` plus an optional ``rope_scaling`` dict. Supported scaling: none/"default"
    and Llama-3.1 "llama3" with Megatron's fixed ``low_freq_factor=1``,
    ``high_freq_factor=4``, ``original_max_position_embeddings=8192``
    (``RotaryEmbedding._apply_scaling``).

    Returns:
        ``{"rotary_base": float, "rope_scaling": bool, "rope_scaling_factor": float}``.

    Raises:
        ModelBuildError: no rope_theta, or a scaling type/parameters Megatron cannot express.
    """
    params = hf_get(hf_config, "rope_parameters") or {}
    scaling = hf_get(hf_config, "rope_scaling") or {}
    merged = {**scaling, **params} if isinstance(params, dict) else dict(scaling)
    theta = merged.get("rope_theta", hf_get(hf_config, "rope_theta"))
    if theta is None:
        raise ModelBuildError("HF config has no rope_theta (neither top-level nor in rope_parameters)")
    rope_type = merged.get("rope_type", merged.get("type", "default")) or "default"
    out = {"rotary_base": float(theta), "rope_scaling": False, "rope_scaling_factor": 8.0}
    if rope_type == "default":
        return out
    if rope_type == "llama3":
        expected = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        for key, value in expected.items():
            if float(merged.get(key, value)) != value:
                raise ModelBuildError(
                    f"rope_parameters.{key}={merged.get(key)} is not supported: Megatron's llama3 RoPE scaling "
                    f"uses {key}={value}")
        out.update(rope_scaling=True, rope_scaling_factor=float(merged.get("factor", 8.0)))
        return out
    raise ModelBuildError(f"rope_type={rope_type!r} is not supported (supported: 'default', 'llama3')")


def use_transformer_engine(model_cfg) -> bool:
    """Whether to build with the Transformer Engine spec.

    ``auto``: TE imports and CUDA is present. ``local``: never. ``transformer_engine``:
    always (raises when unavailable).

    Raises:
        ModelBuildError: TE requested but not importable or no CUDA; unknown value.
    """
    impl = model_cfg.transformer_impl
    if impl not in ("auto", "local", "transformer_engine"):
        raise ModelBuildError(f"model.transformer_impl={impl!r} is not one of 'auto', 'local', 'transformer_engine'")
    if impl == "local":
        return False
    try:
        # optional: transformer_engine (GPU-only)
        import transformer_engine  # noqa: F401

        have_te = torch.cuda.is_available()
    except Exception:  # TE missing or broken (e.g. CPU install): fall back to the local spec
        have_te = False
    if impl == "transformer_engine" and not have_te:
        raise ModelBuildError("model.transformer_impl='transformer_engine' needs Transformer Engine and CUDA; "
                              "use 'auto' or 'local' on this machine")
    return have_te


def _check_hf_config(hf_config: Any, arch: ArchSpec) -> None:
    act = hf_get(hf_config, "hidden_act", "silu")
    if act != "silu":
        raise ModelBuildError(f"hidden_act={act!r} is not supported for {arch.model_type} (only 'silu' / SwiGLU)")
    if hf_get(hf_config, "mlp_bias", False):
        raise ModelBuildError("mlp_bias=true is not supported (Megatron add_bias_linear would also bias the "
                              "attention output projection)")
    if hf_get(hf_config, "attention_bias", False):
        raise ModelBuildError("attention_bias=true is not supported (Qwen3 and Llama 3 have no attention biases)")
    if hf_get(hf_config, "use_sliding_window", False):
        raise ModelBuildError("use_sliding_window=true is not supported")
    heads, groups = hf_get(hf_config, "num_attention_heads"), hf_get(hf_config, "num_key_value_heads")
    if groups is not None and heads % groups != 0:
        raise ModelBuildError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={groups}")


def transformer_config_from_hf(hf_config: Any, model_cfg, parallel_cfg, cpu_init: Optional[bool] = None):
    """Translate an HF Qwen3/Llama config plus our model/parallel config into a ``TransformerConfig``.

    Args:
        hf_config: HF ``PretrainedConfig`` (or its ``config.json`` dict).
        model_cfg: :class:`megatron_brrm.config.ModelConfig` (dtype, recompute, impl).
        parallel_cfg: :class:`megatron_brrm.config.ParallelConfig` (TP/PP/VPP/CP/SP).

    Returns:
        ``megatron.core.transformer.TransformerConfig``. Fusion flags are off on CPU (and
        with the local spec); on CUDA + TE the bias-activation, rope and masked-softmax
        fusions are on.

    Raises:
        UnsupportedArchitectureError: unknown ``model_type``.
        ModelBuildError: unsupported HF options, bad dtype, heads/groups not divisible by TP.
    """
    from megatron.core.transformer import TransformerConfig  # lazy: keeps train --help fast

    arch = get_arch_spec(hf_config)
    _check_hf_config(hf_config, arch)
    if model_cfg.params_dtype not in _DTYPES:
        raise ModelBuildError(f"model.params_dtype={model_cfg.params_dtype!r} is not one of {sorted(_DTYPES)}")
    dtype = _DTYPES[model_cfg.params_dtype]
    tp = parallel_cfg.tensor_model_parallel_size
    heads = hf_get(hf_config, "num_attention_heads")
    groups = hf_get(hf_config, "num_key_value_heads") or heads
    hidden = hf_get(hf_config, "hidden_size")
    head_dim = hf_get(hf_config, "head_dim") or hidden // heads
    if groups % tp != 0:
        raise ModelBuildError(
            f"num_key_value_heads={groups} is not divisible by parallel.tensor_model_parallel_size={tp}: "
            "each TP rank must hold whole query groups")
    sequence_parallel = bool(parallel_cfg.sequence_parallel)
    if sequence_parallel and tp == 1:
        log.warning("parallel.sequence_parallel ignored with tensor_model_parallel_size=1 (as Megatron-LM does)")
        sequence_parallel = False
    try:
        check_fp8_config(model_cfg, parallel_cfg)
    except FP8ConfigError as exc:
        raise ModelBuildError(str(exc)) from None
    te = use_transformer_engine(model_cfg)
    if model_cfg.fp8 is not None and not te:
        raise ModelBuildError(f"model.fp8={model_cfg.fp8!r} needs Transformer Engine on CUDA")
    fuse = te and torch.cuda.is_available()
    kwargs = dict(
        num_layers=hf_get(hf_config, "num_hidden_layers"),
        hidden_size=hidden,
        ffn_hidden_size=hf_get(hf_config, "intermediate_size"),
        num_attention_heads=heads,
        num_query_groups=groups,
        kv_channels=head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=float(hf_get(hf_config, "rms_norm_eps", 1e-6)),
        qk_layernorm=arch.qk_layernorm,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=float(hf_get(hf_config, "attention_dropout", 0.0) or 0.0),
        init_method_std=float(hf_get(hf_config, "initializer_range", 0.02)),
        attention_softmax_in_fp32=True,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=parallel_cfg.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel_cfg.virtual_pipeline_model_parallel_size,
        context_parallel_size=parallel_cfg.context_parallel_size,
        sequence_parallel=sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu_initialization=(not torch.cuda.is_available()) if cpu_init is None else bool(cpu_init),
        bias_activation_fusion=fuse,
        bias_dropout_fusion=fuse,
        masked_softmax_fusion=fuse,
        apply_rope_fusion=fuse,
        gradient_accumulation_fusion=fuse,
        persist_layer_norm=False,
        recompute_granularity=model_cfg.recompute_granularity,
        recompute_method=model_cfg.recompute_method,
        recompute_num_layers=model_cfg.recompute_num_layers,
        batch_p2p_comm=False,  # gloo + interleaved PP silently swaps buffers with the batched path (DESIGN 4.3)
    )
    kwargs.update(fp8_transformer_kwargs(model_cfg))
    try:
        return TransformerConfig(**kwargs)
    except (AssertionError, ValueError) as exc:
        raise ModelBuildError(f"invalid Megatron TransformerConfig for this model/layout: {exc}") from None


class SequenceParallelTorchNorm:
    """A plain ``torch.nn.RMSNorm`` / ``LayerNorm`` usable with sequence parallelism.

    Same constructor as Megatron's ``WrappedTorchNorm`` (which asserts
    ``not config.sequence_parallel``). Under SP each TP rank normalizes its own sequence
    shard with the replicated weight, so the weight's grad is partial per rank; marking the
    parameters ``sequence_parallel = True`` makes Megatron's ``finalize_model_grads``
    all-reduce them over the TP group (docs/design.md §7).
    """

    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, persist_layer_norm: bool = False,
                zero_centered_gamma: bool = False, normalization: str = "LayerNorm"):
        if config.normalization == "RMSNorm":
            norm = torch.nn.RMSNorm(hidden_size, eps=eps, dtype=config.params_dtype)
        elif config.normalization == "LayerNorm":
            norm = torch.nn.LayerNorm(hidden_size, eps=eps, dtype=config.params_dtype)
        else:
            raise ModelBuildError(f"normalization={config.normalization!r} is not supported by the CPU norm")
        for param in norm.parameters():
            param.sequence_parallel = bool(config.sequence_parallel)
        return norm


def _replace_norms(spec, norm_cls):
    """Return a copy of a ModuleSpec tree with every torch-norm fallback replaced by ``norm_cls``."""
    from megatron.core.transformer.spec_utils import ModuleSpec  # lazy: keeps train --help fast
    from megatron.core.transformer.torch_norm import WrappedTorchNorm  # lazy: keeps train --help fast

    if spec is WrappedTorchNorm:
        return norm_cls
    if isinstance(spec, ModuleSpec):
        spec = copy.copy(spec)
        if spec.module is WrappedTorchNorm:
            spec.module = norm_cls
        if spec.submodules is not None:
            spec.submodules = _replace_norms(spec.submodules, norm_cls)
        return spec
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        changes = {f.name: _replace_norms(getattr(spec, f.name), norm_cls) for f in dataclasses.fields(spec)}
        return dataclasses.replace(spec, **changes)
    return spec


def layer_spec(config, model_cfg, vp_stage: Optional[int] = None, pp_rank: Optional[int] = None):
    """The decoder spec for this rank: TE layer spec, or the local spec (SP-safe norms on CPU).

    Returns a ``ModuleSpec`` (TE or local without SP) or ``TransformerBlockSubmodules``
    (local with SP, to also replace the final norm).
    """
    from megatron.core.models.gpt.gpt_layer_specs import (  # lazy: keeps train --help fast
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    if use_transformer_engine(model_cfg):
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=config.qk_layernorm)
    spec = get_gpt_layer_local_spec(qk_layernorm=config.qk_layernorm, normalization=config.normalization)
    if not config.sequence_parallel:
        return spec
    # lazy: keeps train --help fast
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    spec = _replace_norms(spec, SequenceParallelTorchNorm)
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage, pp_rank=pp_rank)
    return TransformerBlockSubmodules(layer_specs=[spec] * num_layers, layer_norm=SequenceParallelTorchNorm)


def build_gpt_model(hf_config: Any, model_cfg, parallel_cfg, pre_process: Optional[bool] = None,
                    post_process: Optional[bool] = None, vp_stage: Optional[int] = None,
                    padded_vocab: Optional[int] = None, cpu_init: Optional[bool] = None, head: str = "lm"):
    """Build this rank's ``GPTModel`` chunk (random init; load weights with ``mapping``).

    Requires :func:`megatron_brrm.parallel.initialize_parallel` to have run with the same
    ``parallel_cfg``. The model's vocabulary is the padded vocabulary
    (:func:`padded_vocab_size`); logits have that many columns (``/ TP`` per rank: they are
    vocab-parallel, ``parallel_output=True``) and shape ``[batch, seq, vocab_padded / TP]``.

    Args:
        hf_config: HF ``PretrainedConfig`` or ``config.json`` dict (see :func:`load_hf_config`).
        model_cfg: :class:`megatron_brrm.config.ModelConfig`.
        parallel_cfg: :class:`megatron_brrm.config.ParallelConfig`.
        pre_process / post_process: whether this chunk holds the embedding / output layer;
            default: first / last pipeline stage (and VPP chunk).
        vp_stage: virtual pipeline chunk index (with VPP).
        padded_vocab: embedding / output rows to use instead of :func:`padded_vocab_size`
            (e.g. the rows recorded in a checkpoint); must be >= the HF vocab and divisible by TP.
        cpu_init: initialise the parameters on the CPU (Megatron's ``use_cpu_initialization``);
            default: when no GPU is visible. The converters pass True to build meta-device
            layouts on any machine.
        head: ``lm`` (vocab-parallel output layer) or ``scalar`` (a Bradley-Terry reward head
            :class:`~megatron_brrm.model.reward_head.ScalarRewardHead` in place of the output layer,
            embeddings never tied: the last stage then returns values ``[batch, seq, 1]``).

    Returns:
        ``megatron.core.models.gpt.GPTModel`` in ``model_cfg.params_dtype``.

    Raises:
        ModelBuildError / UnsupportedArchitectureError: see :func:`transformer_config_from_hf`.
    """
    from megatron.core import parallel_state as mpu  # lazy: keeps train --help fast
    from megatron.core.models.gpt import GPTModel  # lazy: keeps train --help fast

    if head not in ("lm", "scalar"):
        raise ModelBuildError(f"unknown model head {head!r}; expected 'lm' or 'scalar'")
    config = transformer_config_from_hf(hf_config, model_cfg, parallel_cfg, cpu_init=cpu_init)
    if pre_process is None:
        pre_process = mpu.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    if post_process is None:
        post_process = mpu.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    rope = rope_settings(hf_config)
    vocab = padded_vocab or padded_vocab_size(hf_get(hf_config, "vocab_size"), model_cfg.make_vocab_size_divisible_by,
                                              parallel_cfg.tensor_model_parallel_size)
    if vocab < hf_get(hf_config, "vocab_size") or vocab % parallel_cfg.tensor_model_parallel_size:
        raise ModelBuildError(f"padded vocab {vocab} must be >= vocab_size={hf_get(hf_config, 'vocab_size')} and "
                              f"divisible by TP={parallel_cfg.tensor_model_parallel_size}")
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(config, model_cfg, vp_stage=vp_stage),
        vocab_size=vocab,
        max_sequence_length=hf_get(hf_config, "max_position_embeddings"),
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=head == "lm" and bool(hf_get(hf_config, "tie_word_embeddings", False)),
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=rope["rotary_base"],
        rope_scaling=rope["rope_scaling"],
        rope_scaling_factor=rope["rope_scaling_factor"],
        vp_stage=vp_stage,
    )
    if head == "scalar":
        attach_scalar_head(model)
    return model.to(config.params_dtype)
