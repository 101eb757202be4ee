"""The generation-engine interface shared by the vLLM (GPU) and HF/torch (CPU/GPU) engines.

Shape of the contract (modelled on NeMo-RL's ``GenerationInterface``):

* ``generate(prompts, params)`` takes a batch of prompts as token-id lists and returns,
  for every prompt, ``params.n`` :class:`GenerationOutput` samples. Token ids in, token ids
  out: callers never re-tokenize generated text (the two-turn rollout depends on it).
* ``update_weights(named_tensors)`` loads an iterator of ``(hf_name, tensor)`` pairs
  (full, unsharded tensors with Hugging Face parameter names) into the engine's model.
* ``load_shm_bucket(path, nbytes, entries)`` loads a bucket that already sits in a
  shared-memory file (the same-node refit): by default views of the file go through
  ``update_weights``; a vLLM engine hands the file itself to its worker processes.
* ``score(sequences)`` returns the per-token logprobs of given sequences (temperature 1):
  the engine side of a refit check.
* ``sleep()`` / ``wake()`` release and restore accelerator memory where supported
  (colocated training); engines that cannot do so implement them as no-ops.
* ``abilities`` (:class:`EngineAbilities`) declares what the engine can do, so drivers never
  probe engines with ``getattr``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import FrozenSet, Iterable, List, Optional, Sequence, Tuple

import torch

from .shm import BucketEntry, bucket_views, map_buffer


@dataclass
class SamplingParams:
    """Sampling settings of one ``generate`` call.

    ``stop`` strings end a sample when its decoded text contains one; the stop string is
    kept in the output (vLLM ``include_stop_str_in_output=True``). ``seed`` makes a call
    reproducible: the same prompts, params and weights give the same samples.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: List[str] = field(default_factory=list)
    seed: Optional[int] = None
    logprobs: bool = True


@dataclass
class GenerationOutput:
    """One generated sample.

    Attributes:
        token_ids: generated token ids (prompt excluded), including the EOS token or the
            tokens of the stop string when generation ended on one.
        text: ``tokenizer.decode(token_ids)`` (special tokens kept).
        logprobs: per generated token, the sampling log-probability (natural log, after
            temperature scaling), ``len(logprobs) == len(token_ids)``; empty when
            ``SamplingParams.logprobs`` is False.
        finish_reason: ``"stop"`` (EOS or stop string) or ``"length"`` (max_new_tokens hit).
    """

    token_ids: List[int]
    text: str
    logprobs: List[float]
    finish_reason: str


@dataclass(frozen=True)
class EngineAbilities:
    """What a generation engine can do, declared by the engine itself.

    Attributes:
        eos_token_ids: token ids that end a sample (``generation_config.json``'s and the
            tokenizer's); the two-turn rollout needs them to splice turn 2.
        supports_sleep: ``sleep()`` really releases accelerator memory and ``wake()`` restores
            it. False: both are no-ops (CPU engines, vLLM on CPU) and a colocated driver must
            not count on them to make room for training.
        shares_weights: the weights are contiguous CPU tensors of a torch module, the engine's
            ``model`` attribute, in the engine's own process, named by HF parameter names; a
            same-node refit may move them into shared memory once and have the policy ranks
            write into them directly (``megatron_brrm.workers.refit_shm``).
    """

    eos_token_ids: FrozenSet[int]
    supports_sleep: bool = False
    shares_weights: bool = False


class WeightReceiver(ABC):
    """Anything a refit can load weights into: generation engines, and sinks such as the HF-folder
    exporter. ``update_weights`` takes named tensors; ``load_shm_bucket`` a bucket already in shared
    memory; ``shares_weights`` says whether the weights are CPU tensors of a torch ``model`` that a
    same-node refit may write directly (see :class:`EngineAbilities`)."""

    @abstractmethod
    def update_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> None:
        """Load full HF-named tensors into the model (refit). Unknown names raise ``KeyError``."""

    def load_shm_bucket(self, path: str, nbytes: int, entries: Sequence[BucketEntry]) -> int:
        """Load one refit bucket that sits in the shared-memory file ``path`` (``nbytes`` bytes,
        laid out by ``entries``); returns the bytes loaded.

        The default maps the file once per process (:func:`~megatron_brrm.rollout.shm.map_buffer`)
        and passes views of it to :meth:`update_weights` (one copy, no pickling).

        Raises:
            FileNotFoundError / ValueError: the file is missing or too small; ``KeyError`` /
            ``ValueError`` from :meth:`update_weights`.
        """
        views = bucket_views(map_buffer(path, nbytes), entries)
        self.update_weights(iter(views))
        del views
        return int(sum(e.nbytes for e in entries))

    @property
    def shares_weights(self) -> bool:
        """True when a same-node refit may move the weights (``self.model``) into shared memory and
        write them directly; False (the default) loads buckets."""
        return False


class GenerationEngine(WeightReceiver):
    """Abstract generation engine; see the module docstring for the contract."""

    @property
    @abstractmethod
    def tokenizer(self):
        """The HF tokenizer whose ids ``generate`` consumes and returns."""

    @property
    @abstractmethod
    def abilities(self) -> EngineAbilities:
        """What this engine can do (see :class:`EngineAbilities`)."""

    @abstractmethod
    def generate(self, prompts: List[List[int]], params: SamplingParams,
                 group_ids: Optional[Sequence[int]] = None) -> List[List[GenerationOutput]]:
        """Generate ``params.n`` samples per prompt; returns ``[len(prompts)][params.n]`` outputs.

        ``group_ids`` (optional, one per prompt) says which prompts belong to one GRPO group and
        share a prefix; a single engine ignores it, a multi-engine fleet keeps a group on one engine.
        Samples never depend on it."""

    def score(self, sequences: Sequence[Sequence[int]]) -> List[List[float]]:
        """Per-token logprobs of whole sequences at temperature 1 (teacher forcing).

        Returns, per sequence, ``len(seq)`` floats: entry ``t`` is ``log p(seq[t] | seq[:t])``
        (natural log) for ``t >= 1`` and ``0.0`` at ``t = 0``, aligned like the trainer's
        logprobs. Used to check that a refit left the engine computing what the trainer does.

        Raises:
            NotImplementedError: the engine cannot score (the HF and vLLM engines can).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement score()")

    @property
    def shares_weights(self) -> bool:
        return self.abilities.shares_weights

    def sleep(self) -> None:
        """Free accelerator memory held by weights/KV cache (no-op unless ``abilities.supports_sleep``)."""

    def wake(self, tags: Optional[List[str]] = None) -> None:
        """Undo :meth:`sleep` (no-op unless ``abilities.supports_sleep``); ``tags`` restores only part
        (vLLM: ``["weights"]`` before a refit, then ``["kv_cache"]``)."""

    def shutdown(self) -> None:
        """Release the engine's processes and memory (no-op for in-process engines)."""
