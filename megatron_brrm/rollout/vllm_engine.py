"""``VLLMEngine``: vLLM's offline ``LLM`` as a :class:`GenerationEngine` (GPU only).

* Construction imports vLLM lazily; without it (CPU machines) a ``RuntimeError`` says how to
  install it or to select the HF engine.
* ``generate`` sends every (prompt, sample) as its own request with ``n=1`` and the per-sample
  seed of :func:`~megatron_brrm.rollout.sampling.derive_sample_seed`, so a sample does not
  depend on batch composition (the HF engine's contract); prefix caching shares the prompt's
  KV blocks between the ``n`` requests. Stop strings are kept (``include_stop_str_in_output``),
  ``logprobs=0`` returns the sampled token's logprob, and the engine is built with
  ``logprobs_mode="processed_logprobs"`` (vLLM >= 0.10.2) so they are the temperature-scaled
  values the trainer computes (equal to the HF engine's when ``top_p == 1``; see
  :mod:`.sampling`). On older vLLM, which reports raw (temperature 1) logprobs, a warning
  is emitted when ``temperature != 1``.
* ``update_weights`` streams ``(hf_name, tensor)`` pairs in size-bounded buckets through
  ``collective_rpc`` into :class:`~megatron_brrm.rollout.vllm_worker.BRRMWorkerExtension`
  (each worker calls its model's ``load_weights``); before the next generation the weights
  are finalised once and the prefix cache is reset (its KV blocks were computed with the
  old weights), however many ``update_weights`` calls (buckets) the refit made. Tensors travel through host
  memory (pickled RPC); names and shapes are checked first against the checkpoint's
  safetensors headers. For a tied-embedding checkpoint ``lm_head.weight`` is dropped (vLLM
  skips the alias; NeMo-RL does the same, vllm-project/vllm#51665).
* ``quantization="fp8"`` (``rollout.quantization``): block-FP8 linear layers; the workers
  quantise every loaded weight (start-up and each refit), see :mod:`.fp8`.
* ``sleep``/``wake`` map to ``LLM.sleep(level)`` / ``LLM.wake_up(tags)`` (needs
  ``enable_sleep_mode=True``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import torch

from .refit import iter_buckets
from .engine import GenerationEngine, GenerationOutput, SamplingParams
from .sampling import derive_sample_seed, validate_request
from .fp8 import vllm_fp8_overrides
from .vllm_worker import WORKER_EXTENSION_CLS
from .weights import check_against_manifest, hf_checkpoint_manifest, iter_checkpoint_tensors

VLLM_MISSING = ("VLLMEngine needs the gpu extra: pip install -e .[gpu] on a CUDA machine; "
                "use rollout.engine=hf on CPU")


def _import_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"{VLLM_MISSING} (import vllm failed: {exc})") from exc
    if not torch.cuda.is_available():
        raise RuntimeError(f"{VLLM_MISSING} (no CUDA device is visible)")
    return vllm


def _read_json(model_dir, name: str) -> dict:
    path = Path(str(model_dir)) / name
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def eos_ids_of(generation_config: dict, tokenizer) -> frozenset:
    """EOS ids vLLM stops on: ``generation_config.json``'s ``eos_token_id`` (int or list) and the tokenizer's."""
    ids = set()
    eos = generation_config.get("eos_token_id")
    if eos is not None:
        ids.update([eos] if isinstance(eos, int) else list(eos))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(int(i) for i in ids)


def convert_request_outputs(request_outputs: Sequence, tokenizer, n: int, want_logprobs: bool) -> List[List[GenerationOutput]]:
    """Regroup vLLM ``RequestOutput`` objects (one per (prompt, sample), prompt-major) into
    ``[num_prompts][n]`` :class:`GenerationOutput`.

    ``text`` is re-decoded from the token ids with special tokens kept (vLLM's own ``text``
    skips special tokens and cuts after a stop string), so ``text == decode(token_ids)`` as
    in the HF engine. Logprobs are read for the sampled token at each position.

    Raises:
        RuntimeError: the count is not a multiple of ``n``, a request was aborted, or a
            requested logprob is missing.
    """
    if len(request_outputs) % n:
        raise RuntimeError(f"vLLM returned {len(request_outputs)} outputs, not a multiple of n={n}")
    grouped: List[List[GenerationOutput]] = []
    for k, req in enumerate(request_outputs):
        comp = req.outputs[0]
        ids = [int(t) for t in comp.token_ids]
        reason = comp.finish_reason
        if reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM request {k} ended with finish_reason={reason!r} (expected 'stop' or 'length')")
        lps: List[float] = []
        if want_logprobs:
            if comp.logprobs is None or len(comp.logprobs) != len(ids):
                raise RuntimeError(f"vLLM request {k}: logprobs missing or misaligned "
                                   f"({None if comp.logprobs is None else len(comp.logprobs)} for {len(ids)} tokens)")
            lps = [float(comp.logprobs[i][t].logprob) for i, t in enumerate(ids)]
        out = GenerationOutput(token_ids=ids, text=tokenizer.decode(ids, skip_special_tokens=False,
                                                                    clean_up_tokenization_spaces=False),
                               logprobs=lps, finish_reason=reason)
        if k % n == 0:
            grouped.append([])
        grouped[-1].append(out)
    return grouped


class VLLMEngine(GenerationEngine):
    """vLLM ``LLM`` wrapper (see the module docstring for semantics).

    Args:
        model_path: HF model folder (or hub name, then names are not pre-checked).
        tensor_parallel_size: vLLM TP degree (GPUs per engine).
        gpu_memory_utilization: fraction of GPU memory vLLM may take.
        enable_prefix_caching: share KV blocks of common prefixes (the n samples of a prompt,
            turn 2 re-reading turn 1).
        seed: engine seed (per-request seeds are set on every request anyway).
        dtype: vLLM dtype string ("auto", "bfloat16", "float32", ...).
        max_model_len: longest prompt + generation (None: the model's maximum).
        enable_sleep_mode: needed for :meth:`sleep` / :meth:`wake`.
        refit_bucket_bytes: size bound of one ``collective_rpc`` weight batch.
        quantization: None, or ``"fp8"`` for block-FP8 rollouts (:mod:`.fp8`): vLLM starts
            from dummy weights and the checkpoint is loaded through the quantising refit path.
        **llm_kwargs: further ``vllm.LLM`` arguments.

    Raises:
        RuntimeError: vLLM is not installed or no CUDA device is visible.
    """

    def __init__(self, model_path: str, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.6,
                 enable_prefix_caching: bool = True, seed: int = 0, dtype: str = "auto",
                 max_model_len: Optional[int] = None, enable_sleep_mode: bool = True,
                 refit_bucket_bytes: int = 512 << 20, quantization: Optional[str] = None, **llm_kwargs):
        if quantization not in (None, "fp8"):
            raise ValueError(f"rollout.quantization={quantization!r} is not one of [None, 'fp8']")
        vllm = _import_vllm()
        from vllm.engine.arg_utils import EngineArgs

        arg_names = {f.name for f in dataclasses.fields(EngineArgs)}
        kwargs = dict(model=str(model_path), tensor_parallel_size=tensor_parallel_size,
                      gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=enable_prefix_caching,
                      seed=seed, dtype=dtype, max_model_len=max_model_len, enable_sleep_mode=enable_sleep_mode,
                      worker_extension_cls=WORKER_EXTENSION_CLS)
        self._processed_logprobs = "logprobs_mode" in arg_names
        if self._processed_logprobs:
            kwargs["logprobs_mode"] = "processed_logprobs"
        if quantization == "fp8":
            kwargs.update(vllm_fp8_overrides())
        kwargs.update(llm_kwargs)
        self.llm = vllm.LLM(**kwargs)
        self._vllm = vllm
        self._tokenizer = self.llm.get_tokenizer()
        self.refit_bucket_bytes = int(refit_bucket_bytes)
        self.manifest = hf_checkpoint_manifest(model_path) if os.path.isdir(str(model_path)) else None
        self.tied_embeddings = bool(_read_json(model_path, "config.json").get("tie_word_embeddings", False))
        self.eos_token_ids = eos_ids_of(_read_json(model_path, "generation_config.json"), self._tokenizer)
        self.last_update_stats = {"tensors": 0, "bytes": 0}
        self._weights_dirty = False
        self.quantization = quantization
        if quantization == "fp8":  # the real weights, quantised by the workers as every refit is
            self.update_weights(iter_checkpoint_tensors(model_path))
            self.finish_weight_update()

    @property
    def tokenizer(self):
        return self._tokenizer

    def generate(self, prompts: List[List[int]], params: SamplingParams) -> List[List[GenerationOutput]]:
        """Generate ``params.n`` samples per prompt (one request per sample, seeded per sample)."""
        validate_request(prompts, params)
        self.finish_weight_update()
        if params.temperature != 1.0 and params.logprobs and not self._processed_logprobs:
            warnings.warn("this vLLM has no logprobs_mode: it reports logprobs at temperature 1, which differ from "
                          "the trainer's temperature-scaled logprobs; upgrade to vLLM >= 0.10.2")
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        requests, sampling = [], []
        for p in prompts:
            ids = [int(t) for t in p]
            for j in range(params.n):
                requests.append({"prompt_token_ids": ids})
                sampling.append(self._vllm.SamplingParams(
                    n=1, temperature=params.temperature, top_p=params.top_p, max_tokens=int(params.max_new_tokens),
                    stop=list(params.stop) or None, include_stop_str_in_output=True,
                    logprobs=0 if params.logprobs else None, seed=derive_sample_seed(seed, ids, j)))
        outs = self.llm.generate(requests, sampling_params=sampling, use_tqdm=False)
        return convert_request_outputs(outs, self._tokenizer, params.n, params.logprobs)

    def _checked(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> Iterator[Tuple[str, torch.Tensor]]:
        for name, tensor in named_tensors:
            if self.tied_embeddings and name == "lm_head.weight":
                continue
            if self.manifest is not None:
                check_against_manifest(self.manifest, name, tensor, where="the vLLM engine's checkpoint")
            yield name, tensor

    def update_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> None:
        """Stream HF-named tensors into every vLLM worker in size-bounded buckets.

        May be called once with the whole model or once per bucket (``rollout.refit`` does the
        latter). vLLM's post-load processing and the prefix-cache reset run once, lazily, before
        the next :meth:`generate` / :meth:`sleep` (or on :meth:`finish_weight_update`), so a
        bucketed refit is finalised exactly once, after its last bucket.

        Raises:
            KeyError / ValueError: a name or shape that the checkpoint does not have.
        """
        count = nbytes = 0
        host = ((n, t.detach().cpu()) for n, t in self._checked(named_tensors))
        for bucket in iter_buckets(host, self.refit_bucket_bytes):
            self.llm.collective_rpc("brrm_load_weights", args=(bucket,))
            self._weights_dirty = True
            count += len(bucket)
            nbytes += sum(t.numel() * t.element_size() for _, t in bucket)
        self.last_update_stats = {"tensors": count, "bytes": nbytes}

    def finish_weight_update(self) -> None:
        """Finalise loaded weights (``process_weights_after_loading`` on every worker) and drop
        the prefix cache, whose KV blocks were computed with the old weights. No-op when no
        weights were loaded since the last call."""
        if getattr(self, "_weights_dirty", False):
            self.llm.collective_rpc("brrm_finish_weight_update")
            self.llm.reset_prefix_cache()
            self._weights_dirty = False

    def sleep(self, level: int = 1) -> None:
        """Release GPU memory: level 1 offloads weights to host and drops the KV cache; level 2 drops both."""
        self.finish_weight_update()
        self.llm.sleep(level=level)

    def wake(self, tags: Optional[List[str]] = None) -> None:
        """Restore GPU memory (``tags``: ``["weights"]`` then ``["kv_cache"]`` to refit in between)."""
        self.llm.wake_up(tags=tags)
