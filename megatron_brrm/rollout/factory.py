"""Build the generation engine named by the rollout config (``rollout.engine``: ``hf`` | ``vllm``)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from megatron_brrm.config import ENGINES

from .engine import GenerationEngine
from .hf_engine import HFEngine
from .vllm_engine import VLLMEngine

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "auto": "auto"}


def checkpoint_dtype(model_path: str) -> str:
    """The dtype an HF folder's ``config.json`` declares (``dtype`` or the older ``torch_dtype``),
    as a vLLM dtype string; ``"auto"`` when it declares none (or the folder is a hub id).

    vLLM's own ``"auto"`` runs a float32 checkpoint in half precision (bf16 on CPU), which puts
    the engine's logprobs ~1e-3 away from an fp32 trainer; resolving it here keeps the engine
    in the checkpoint's dtype, as ``rollout.dtype=auto`` promises.
    """
    path = Path(str(model_path)) / "config.json"
    if not path.is_file():
        return "auto"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    declared = cfg.get("dtype") or cfg.get("torch_dtype")
    return str(declared).replace("torch.", "") if declared else "auto"


def _resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def make_engine(rollout_cfg, model_path: str) -> GenerationEngine:
    """Construct the engine selected by ``rollout_cfg.engine`` for the HF folder ``model_path``.

    Args:
        rollout_cfg: a ``RolloutConfig`` (read by attribute: ``engine``, ``device``, ``dtype``,
            ``max_batch_size``; for vLLM also ``tensor_parallel_size``, ``gpu_memory_utilization``,
            ``enable_prefix_caching``, ``seed``, ``refit_bucket_size_mb``,
            ``max_total_sequence_length``, ``colocated``, ``kv_cache_memory_mb``, ``enforce_eager``,
            ``cpu_threads_bind``, ``quantization``).
        model_path: HF model folder.

    Returns:
        An ``HFEngine`` or a ``VLLMEngine``.

    Raises:
        ValueError: unknown ``rollout.engine`` or ``rollout.dtype`` (the message lists the choices).
        RuntimeError: ``vllm`` selected but vLLM is not installed (the message says how).
    """
    name = rollout_cfg.engine
    dtype = getattr(rollout_cfg, "dtype", "auto")
    if dtype not in _VLLM_DTYPES:
        raise ValueError(f"rollout.dtype={dtype!r} is not one of {sorted(_VLLM_DTYPES)}")
    if name == "hf":
        device = _resolve_device(getattr(rollout_cfg, "device", "auto"))
        torch_dtype = _DTYPES.get(dtype) or (torch.float32 if device == "cpu" else torch.bfloat16)
        return HFEngine(model_path, device=device, dtype=torch_dtype,
                        max_batch_size=getattr(rollout_cfg, "max_batch_size", 64))
    if name == "vllm":
        kv_mb = rollout_cfg.kv_cache_memory_mb
        return VLLMEngine(model_path, tensor_parallel_size=rollout_cfg.tensor_parallel_size,
                          gpu_memory_utilization=rollout_cfg.gpu_memory_utilization,
                          enable_prefix_caching=rollout_cfg.enable_prefix_caching, seed=rollout_cfg.seed,
                          dtype=_VLLM_DTYPES[dtype] if dtype != "auto" else checkpoint_dtype(model_path),
                          max_model_len=rollout_cfg.max_total_sequence_length,
                          enable_sleep_mode=bool(rollout_cfg.colocated),
                          refit_bucket_bytes=int(rollout_cfg.refit_bucket_size_mb) << 20,
                          kv_cache_memory_bytes=None if kv_mb is None else int(kv_mb) << 20,
                          enforce_eager=rollout_cfg.enforce_eager, cpu_threads_bind=rollout_cfg.cpu_threads_bind,
                          quantization=rollout_cfg.quantization)
    raise ValueError(f"rollout.engine={name!r} is not a known engine; choose one of {list(ENGINES)}")
