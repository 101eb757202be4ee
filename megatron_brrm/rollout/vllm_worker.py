"""vLLM worker extension: the receiving side of a refit (runs inside every vLLM worker process).

vLLM mixes the class named by ``LLM(worker_extension_cls="megatron_brrm.rollout.vllm_worker.
BRRMWorkerExtension")`` into its GPU worker, so ``llm.collective_rpc(method, args=...)`` runs
these methods on every worker (all TP ranks). Pattern from vLLM's
``examples/offline_inference/rlhf_utils.py`` and NeMo-RL's ``VllmInternalWorkerExtension``:
the worker hands full, HF-named tensors to the model's own ``load_weights``, which applies
vLLM's name mapping (q/k/v -> qkv_proj, gate/up -> gate_up_proj) and slices each tensor for
its TP rank; after the last batch, ``process_weights_after_loading`` finalises kernel layouts
(as vLLM's example does once per update).

All vLLM internals used by this project live in this module (a single place to adapt when
vLLM changes). Nothing here imports vLLM at module import time.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

WORKER_EXTENSION_CLS = f"{__name__}.BRRMWorkerExtension"


class BRRMWorkerExtension:
    """Methods mixed into vLLM's worker; ``self.model_runner``, ``self.device`` and
    ``self.model_config`` are provided by the vLLM worker they are mixed into."""

    def brrm_load_weights(self, named_tensors: Sequence[Tuple[str, torch.Tensor]]) -> int:
        """Load one bucket of ``(hf_name, full tensor)`` pairs; returns how many were given.

        Tensors arrive on the host (they were pickled across the RPC); they are moved to this
        worker's device one at a time before ``load_weights`` shards them. With FP8 rollouts
        (``quantization == "fp8"``) each GEMM weight is quantised on the device into an FP8 tensor
        and its block scales first (:func:`megatron_brrm.rollout.fp8.quantize_named_weights`).
        """
        weights: List[Tuple[str, torch.Tensor]] = [(name, t.to(self.device, non_blocking=True)) for name, t in named_tensors]
        if getattr(getattr(self, "model_config", None), "quantization", None) == "fp8":
            from megatron_brrm.rollout.fp8 import quantize_named_weights

            weights = list(quantize_named_weights(weights))
        self.model_runner.model.load_weights(weights=weights)
        del weights
        return len(named_tensors)

    def brrm_finish_weight_update(self) -> bool:
        """Run vLLM's post-load processing once after all buckets (kernel layouts, scales)."""
        from vllm.model_executor.model_loader.utils import process_weights_after_loading

        process_weights_after_loading(self.model_runner.model, self.model_config, self.device)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return True
