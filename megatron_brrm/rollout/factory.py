"""Build the generation engine named by the rollout config (``rollout.engine``: ``hf`` | ``vllm``)."""
from __future__ import annotations

import torch

from .engine import GenerationEngine

ENGINES = ("hf", "vllm")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "auto": "auto"}


def _resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def make_engine(rollout_cfg, model_path: str) -> GenerationEngine:
    """Construct the engine selected by ``rollout_cfg.engine`` for the HF folder ``model_path``.

    Args:
        rollout_cfg: a ``RolloutConfig`` (read by attribute: ``engine``, ``device``, ``dtype``,
            ``max_batch_size``, ``tensor_parallel_size``, ``gpu_memory_utilization``,
            ``enable_prefix_caching``, ``seed``, ``refit_bucket_size_mb``,
            ``max_total_sequence_length``, ``colocated``).
        model_path: HF model folder.

    Returns:
        An ``HFEngine`` or a ``VLLMEngine``.

    Raises:
        ValueError: unknown ``rollout.engine`` or ``rollout.dtype`` (the message lists the choices).
        RuntimeError: ``vllm`` selected on a machine without vLLM/CUDA.
    """
    name = rollout_cfg.engine
    dtype = getattr(rollout_cfg, "dtype", "auto")
    if dtype not in _VLLM_DTYPES:
        raise ValueError(f"rollout.dtype={dtype!r} is not one of {sorted(_VLLM_DTYPES)}")
    if name == "hf":
        from .hf_engine import HFEngine

        device = _resolve_device(getattr(rollout_cfg, "device", "auto"))
        torch_dtype = _DTYPES.get(dtype) or (torch.float32 if device == "cpu" else torch.bfloat16)
        return HFEngine(model_path, device=device, dtype=torch_dtype,
                        max_batch_size=getattr(rollout_cfg, "max_batch_size", 64))
    if name == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(model_path, tensor_parallel_size=rollout_cfg.tensor_parallel_size,
                          gpu_memory_utilization=rollout_cfg.gpu_memory_utilization,
                          enable_prefix_caching=rollout_cfg.enable_prefix_caching, seed=rollout_cfg.seed,
                          dtype=_VLLM_DTYPES[dtype], max_model_len=rollout_cfg.max_total_sequence_length,
                          enable_sleep_mode=bool(getattr(rollout_cfg, "colocated", True)),
                          refit_bucket_bytes=int(rollout_cfg.refit_bucket_size_mb) << 20,
                          quantization=getattr(rollout_cfg, "quantization", None))
    raise ValueError(f"rollout.engine={name!r} is not a known engine; choose one of {list(ENGINES)}")
