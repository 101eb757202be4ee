"""Refit: stream trained weights into generation engines as HF-named tensors, in buckets.

The trainer side (:func:`megatron_brrm.model.weights.iter_megatron_to_hf`) yields
``(hf_name, full tensor)`` one tensor at a time, gathering TP shards and broadcasting from
the owning PP stage per tensor (the mapping registry does the QKV de-interleave and the
gate/up split). This module groups that stream into size-bounded buckets and hands each
bucket to every engine's ``update_weights``, so neither side ever holds a second full copy
of the model: the extra memory at any moment is one bucket plus the tensor being added
(bound: ``bucket_bytes + largest tensor``), the design NeMo-RL and verl use for their
IPC/NCCL refit transports.

After a refit, :func:`refit_check` compares the engine's per-token logprobs with the
trainer's on a fixed batch (the train/inference mismatch check of NeMo-RL's
``refit_verifier``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Sequence, Tuple

import torch

NamedTensor = Tuple[str, torch.Tensor]


def tensor_nbytes(t: torch.Tensor) -> int:
    """Bytes held by ``t``'s elements (``numel * element_size``)."""
    return t.numel() * t.element_size()


def iter_buckets(named_tensors: Iterable[NamedTensor], bucket_bytes: int) -> Iterator[List[NamedTensor]]:
    """Group a stream of named tensors into lists of at most ``bucket_bytes`` bytes.

    A bucket is emitted as soon as adding the next tensor would exceed ``bucket_bytes``; a
    tensor larger than ``bucket_bytes`` travels alone. The stream is consumed lazily, so the
    tensors alive at once are one bucket plus the next tensor.

    Raises:
        ValueError: ``bucket_bytes`` < 1.
    """
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    bucket: List[NamedTensor] = []
    size = 0
    for name, tensor in named_tensors:
        n = tensor_nbytes(tensor)
        if bucket and size + n > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += n
    if bucket:
        yield bucket


@dataclass
class RefitStats:
    """What one refit moved: tensors, bytes, buckets and wall time (seconds).

    ``phases`` optionally breaks the time down (seconds per named phase, e.g. the
    shared-memory transport's ``alloc`` / ``write_wait`` / ``load``; phases may overlap).
    """

    num_tensors: int = 0
    num_bytes: int = 0
    num_buckets: int = 0
    seconds: float = 0.0
    phases: Dict[str, float] = field(default_factory=dict)

    @property
    def gb_per_s(self) -> float:
        return self.num_bytes / 1e9 / self.seconds if self.seconds > 0 else math.inf


def push_buckets(buckets: Iterable[List[NamedTensor]], engines: Sequence) -> RefitStats:
    """Load every bucket into every engine (``engine.update_weights(bucket)``).

    Args:
        buckets: lists of ``(hf_name, full tensor)``, e.g. from :func:`iter_buckets`.
        engines: :class:`~megatron_brrm.rollout.engine.GenerationEngine` objects (or anything
            with ``update_weights``).

    Returns:
        :class:`RefitStats` of the whole transfer.

    Raises:
        KeyError / ValueError: from an engine, for an unknown name or a shape mismatch.
    """
    stats = RefitStats()
    start = time.perf_counter()
    for bucket in buckets:
        for engine in engines:
            engine.update_weights(bucket)
        stats.num_buckets += 1
        stats.num_tensors += len(bucket)
        stats.num_bytes += sum(tensor_nbytes(t) for _, t in bucket)
    stats.seconds = time.perf_counter() - start
    return stats


def refit_engines(named_tensors: Iterable[NamedTensor], engines: Sequence, bucket_bytes: int) -> RefitStats:
    """Stream ``named_tensors`` into ``engines`` in buckets of at most ``bucket_bytes`` bytes."""
    return push_buckets(iter_buckets(named_tensors, bucket_bytes), engines)


@dataclass
class RefitCheck:
    """Engine vs trainer logprobs on the same tokens (natural log, generated positions only).

    ``max_abs_diff`` is the largest |engine - trainer| logprob difference; ``mismatch`` is
    ``mean(exp(|diff|))`` (1.0 = identical), NeMo-RL's ``token_mult_prob_error``.
    """

    max_abs_diff: float
    mismatch: float
    num_tokens: int


def refit_check(engine_logprobs: Sequence[Sequence[float]], trainer_logprobs: Sequence[Sequence[float]],
                masks: Sequence[Sequence[int]]) -> RefitCheck:
    """Compare per-token logprobs from the engine and the trainer on the same sequences.

    Args:
        engine_logprobs / trainer_logprobs: per sequence, one logprob per token position
            (same alignment on both sides).
        masks: per sequence, 1 where the position is compared (generated tokens).

    Raises:
        ValueError: the three inputs disagree in shape (the sequence index is named).
    """
    diffs: List[float] = []
    for i, (e, t, m) in enumerate(zip(engine_logprobs, trainer_logprobs, masks, strict=True)):
        if not (len(e) == len(t) == len(m)):
            raise ValueError(f"refit_check: sequence {i} has {len(e)} engine / {len(t)} trainer logprobs "
                             f"and {len(m)} mask entries")
        diffs.extend(abs(a - b) for a, b, keep in zip(e, t, m) if keep)
    if not diffs:
        return RefitCheck(0.0, 1.0, 0)
    return RefitCheck(max(diffs), sum(math.exp(d) for d in diffs) / len(diffs), len(diffs))
