"""FP8 training with Transformer Engine: the config keys, their checks, and Megatron's arguments.

Keys (``model.*``, all validated on any machine, no GPU needed):

- ``fp8``: ``null`` (off) | ``e4m3`` (E4M3 everywhere) | ``hybrid`` (E4M3 forward, E5M2 for
  gradients) -- Megatron's ``TransformerConfig.fp8``.
- ``fp8_recipe``: how scales are chosen (``TransformerConfig.fp8_recipe``, TE recipes):
  ``delayed`` (``DelayedScaling``: per-tensor scale from an amax history of
  ``fp8_amax_history_len`` steps reduced by ``fp8_amax_compute_algo``), ``tensorwise``
  (``Float8CurrentScaling``: per-tensor scale from the current amax), ``blockwise``
  (``Float8BlockScaling``: 1x128 activation and 128x128 weight blocks, Hopper),
  ``mxfp8`` (``MXFP8BlockScaling``: 1x32 blocks with E8M0 scales, Blackwell).
- ``fp8_param``: keep the GEMM weights in FP8 between steps (Megatron's ``fp8_param``;
  needs the distributed optimizer, whose FP32 main weights it quantises after each step).

FP8 runs only with the Transformer Engine layer spec on CUDA; the checks here are the ones
that can fail before any GPU is involved (a typo, an unsupported combination, a layer width
that TE's FP8 GEMMs cannot take). TE's GEMM shape rule (``check_dim_for_fp8_exec``): the
last dimension a multiple of 16 and the product of the others a multiple of 8; so every
per-rank weight dimension must be a multiple of 16 (:func:`fp8_dim_problems`) and token
counts are padded to :func:`fp8_token_multiple` by the policy's micro-batching.

Imports nothing of the project.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

FP8_FORMATS = ("e4m3", "hybrid")
FP8_RECIPES = ("delayed", "tensorwise", "blockwise", "mxfp8")
AMAX_ALGOS = ("max", "most_recent")
# Lowest CUDA compute capability TE runs each recipe on (Ada/Hopper FP8 tensor cores; blockwise
# scaling on Hopper and later; MXFP8 on Blackwell).
MIN_CAPABILITY = {"delayed": (8, 9), "tensorwise": (8, 9), "blockwise": (9, 0), "mxfp8": (10, 0)}


class FP8ConfigError(ValueError):
    """An FP8 setting is invalid; the message names the ``model.*`` key and the allowed values."""


def check_fp8_config(model_cfg, parallel_cfg=None) -> None:
    """Validate the ``model.fp8*`` keys (no-op when ``model.fp8`` is null).

    Args:
        model_cfg: :class:`megatron_brrm.config.ModelConfig`.
        parallel_cfg: :class:`megatron_brrm.config.ParallelConfig` (for ``fp8_param``), optional.

    Raises:
        FP8ConfigError: unknown format/recipe/amax algorithm, history < 1, ``fp8_param`` without
            ``fp8`` or without the distributed optimizer, FP8 with fp32 parameters, or FP8 with
            the local layer spec.
    """
    fmt = model_cfg.fp8
    if fmt is None:
        if getattr(model_cfg, "fp8_param", False):
            raise FP8ConfigError("model.fp8_param=true needs model.fp8 (e4m3 or hybrid)")
        return
    if fmt not in FP8_FORMATS:
        raise FP8ConfigError(f"model.fp8={fmt!r} is not one of {list(FP8_FORMATS)} (or null for off)")
    recipe = getattr(model_cfg, "fp8_recipe", "delayed")
    if recipe not in FP8_RECIPES:
        raise FP8ConfigError(f"model.fp8_recipe={recipe!r} is not one of {list(FP8_RECIPES)}")
    algo = getattr(model_cfg, "fp8_amax_compute_algo", "max")
    if algo not in AMAX_ALGOS:
        raise FP8ConfigError(f"model.fp8_amax_compute_algo={algo!r} is not one of {list(AMAX_ALGOS)}")
    hist = getattr(model_cfg, "fp8_amax_history_len", 1)
    if not isinstance(hist, int) or hist < 1:
        raise FP8ConfigError(f"model.fp8_amax_history_len={hist!r} must be an integer >= 1")
    if model_cfg.params_dtype == "fp32":
        raise FP8ConfigError("model.fp8 needs model.params_dtype=bf16 (FP8 GEMMs inside a bf16 model, as Megatron-LM's "
                             "FP8 recipes run); fp32 parameters would be cast to FP8 from fp32 at every step")
    if model_cfg.transformer_impl == "local":
        raise FP8ConfigError("model.fp8 needs the Transformer Engine layer spec: set model.transformer_impl to "
                             "'auto' or 'transformer_engine' (the local spec has no FP8 GEMMs)")
    if getattr(model_cfg, "fp8_param", False) and parallel_cfg is not None \
            and not parallel_cfg.use_distributed_optimizer:
        raise FP8ConfigError("model.fp8_param=true needs parallel.use_distributed_optimizer=true (Megatron keeps the "
                             "FP32 main weights in the distributed optimizer and re-quantises them after each step)")


def fp8_dim_problems(linear_shapes: Dict[str, Tuple[int, int]], tp: int) -> List[str]:
    """Per-rank GEMM weight dimensions that TE's FP8 GEMM cannot take (not multiples of 16).

    Args:
        linear_shapes: ``{name: (out_features, in_features)}`` of one layer, unsplit (Megatron
            names: ``linear_qkv`` and ``linear_fc1`` split their output by TP, ``linear_proj``
            and ``linear_fc2`` their input).
        tp: tensor-parallel size.

    Returns:
        One message per offending weight (empty when all fit).
    """
    problems = []
    for name, (out_f, in_f) in linear_shapes.items():
        col = name in ("linear_qkv", "linear_fc1")
        local = (out_f // tp, in_f) if col else (out_f, in_f // tp)
        bad = [d for d in local if d % 16]
        if bad:
            problems.append(f"model.fp8: {name} is {local[0]} x {local[1]} per TP rank (TP={tp}); TE's FP8 GEMMs need "
                            f"every dimension to be a multiple of 16")
    return problems


def fp8_token_multiple(recipe: str) -> int:
    """Token counts per rank are padded to a multiple of this under FP8 (32 for MXFP8's 1x32 blocks, else 16)."""
    return 32 if recipe == "mxfp8" else 16


def fp8_device_problem(recipe: str, capability: Optional[Sequence[int]]) -> Optional[str]:
    """Why this GPU cannot run ``recipe`` (None when it can). ``capability``: ``torch.cuda.get_device_capability()``."""
    if capability is None:
        return "no CUDA device"
    need = MIN_CAPABILITY[recipe]
    if tuple(capability) < need:
        return (f"model.fp8_recipe={recipe!r} needs compute capability >= {need[0]}.{need[1]}; this GPU has "
                f"{capability[0]}.{capability[1]}")
    return None


def fp8_transformer_kwargs(model_cfg) -> Dict[str, object]:
    """``TransformerConfig`` keyword arguments for the ``model.fp8*`` keys (empty when FP8 is off)."""
    if model_cfg.fp8 is None:
        return {}
    kwargs: Dict[str, object] = dict(fp8=model_cfg.fp8, fp8_recipe=model_cfg.fp8_recipe,
                                     fp8_param=bool(model_cfg.fp8_param))
    if model_cfg.fp8_recipe == "delayed":
        kwargs.update(fp8_amax_history_len=model_cfg.fp8_amax_history_len,
                      fp8_amax_compute_algo=model_cfg.fp8_amax_compute_algo)
    return kwargs
