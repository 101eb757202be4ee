"""The generation-engine interface shared by the vLLM (GPU) and HF/torch (CPU/GPU) engines.

Shape of the contract (modelled on NeMo-RL's ``GenerationInterface``):

* ``generate(prompts, params)`` takes a batch of prompts as token-id lists and returns,
  for every prompt, ``params.n`` :class:`GenerationOutput` samples. Token ids in, token ids
  out: callers never re-tokenize generated text (the two-turn rollout depends on it).
* ``update_weights(named_tensors)`` loads an iterator of ``(hf_name, tensor)`` pairs
  (full, unsharded tensors with Hugging Face parameter names) into the engine's model.
* ``sleep()`` / ``wake()`` release and restore accelerator memory where supported
  (colocated training); engines that cannot do so implement them as no-ops.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Tuple

import torch


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


class GenerationEngine(ABC):
    """Abstract generation engine; see the module docstring for the contract."""

    @property
    @abstractmethod
    def tokenizer(self):
        """The HF tokenizer whose ids ``generate`` consumes and returns."""

    @abstractmethod
    def generate(self, prompts: List[List[int]], params: SamplingParams) -> List[List[GenerationOutput]]:
        """Generate ``params.n`` samples per prompt; returns ``[len(prompts)][params.n]`` outputs."""

    @abstractmethod
    def update_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> None:
        """Load full HF-named tensors into the model (refit). Unknown names raise ``KeyError``."""

    def sleep(self) -> None:
        """Free accelerator memory held by weights/KV cache (no-op where unsupported)."""

    def wake(self) -> None:
        """Undo :meth:`sleep` (no-op where unsupported)."""
