"""Refit: stream trained weights into generation engines as HF-named tensors, in buckets.

The trainer side (:func:`megatron_brrm.model.weights.iter_megatron_to_hf`) yields
``(hf_name, full tensor)`` one tensor at a time, gathering TP shards and broadcasting from
the owning PP stage per tensor (the mapping registry does the QKV de-interleave and the
gate/up split). This module groups that stream into size-bounded buckets and hands each
bucket to every engine's ``update_weights``, so neither side ever holds a second full copy
of the model: the extra memory at any moment is one bucket plus the group being added
(bound: ``bucket_bytes + largest fused module``), the design NeMo-RL and verl use for their
IPC/NCCL refit transports. Buckets never split the tensors of one fused module
(:func:`fused_module_key`): vLLM reloads a module from the tensors of one call.

After a refit, :func:`refit_check` compares the engine's per-token logprobs with the
trainer's on a fixed batch (the train/inference mismatch check of NeMo-RL's
``refit_verifier``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

NamedTensor = Tuple[str, torch.Tensor]


def tensor_nbytes(t: torch.Tensor) -> int:
    """Bytes held by ``t``'s elements (``numel * element_size``)."""
    return t.numel() * t.element_size()


PACKED_MODULES: Dict[str, Tuple[str, ...]] = {"qkv_proj": ("q_proj", "k_proj", "v_proj"),
                                             "gate_up_proj": ("gate_proj", "up_proj")}
"""HF sub-modules that vLLM fuses into one module (the ``packed_modules_mapping`` its Llama and
Qwen models declare; Megatron fuses the same ones into ``linear_qkv`` and ``linear_fc1``)."""


def fused_module_key(hf_name: str, packed: Mapping[str, Sequence[str]] = PACKED_MODULES) -> str:
    """The engine module an HF tensor belongs to, with fused sub-modules merged.

    ``model.layers.3.self_attn.k_proj.weight`` -> ``model.layers.3.self_attn.qkv_proj``;
    ``model.layers.3.mlp.up_proj.weight`` -> ``model.layers.3.mlp.gate_up_proj``;
    ``model.norm.weight`` -> ``model.norm``. Refit buckets never split a key's tensors: vLLM's
    in-place reload processes a module from the tensors of one load call, and a module loaded
    in two calls comes out corrupted (measured: logprob error 1.6 on the tiny model).

    Args:
        hf_name: an HF parameter name.
        packed: ``{fused module: its HF sub-modules}`` (default :data:`PACKED_MODULES`; vLLM
            engines pass their model's own ``packed_modules_mapping``).
    """
    module = hf_name.rpartition(".")[0]
    parent, _, last = module.rpartition(".")
    for fused, parts in packed.items():
        if last in parts:
            return f"{parent}.{fused}" if parent else fused
    return module


def iter_buckets(named_tensors: Iterable[NamedTensor], bucket_bytes: int,
                 group_key: Optional[Callable[[str], str]] = None) -> Iterator[List[NamedTensor]]:
    """Group a stream of named tensors into lists of at most ``bucket_bytes`` bytes.

    A bucket is emitted as soon as adding the next tensor (or the next *group*) would exceed
    ``bucket_bytes``; a tensor or group larger than ``bucket_bytes`` travels alone. With
    ``group_key``, consecutive tensors with the same key form a group that is never split
    across buckets (pass :func:`fused_module_key` for engines that fuse modules, e.g. vLLM).
    The stream is consumed lazily: the tensors alive at once are one bucket plus the next
    tensor, or with ``group_key`` one bucket, one group and the first tensor of the next group.

    Raises:
        ValueError: ``bucket_bytes`` < 1.
    """
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    bucket: List[NamedTensor] = []
    size = 0
    group: List[NamedTensor] = []
    group_size, key = 0, None

    def close_group() -> Optional[List[NamedTensor]]:
        """Move the finished group into the bucket; returns the previous bucket when it is full."""
        nonlocal bucket, size, group, group_size
        full = None
        if bucket and size + group_size > bucket_bytes:
            full, bucket, size = bucket, [], 0
        bucket += group
        size += group_size
        group, group_size = [], 0
        return full

    for name, tensor in named_tensors:
        if group_key is not None:  # a group is known complete when the next key arrives
            k = group_key(name)
            if group and k != key:
                full = close_group()
                if full:
                    yield full
            key = k
        group.append((name, tensor))
        group_size += tensor_nbytes(tensor)
        if group_key is None:  # every tensor is its own group: no look-ahead
            full = close_group()
            if full:
                yield full
    if group:
        full = close_group()
        if full:
            yield full
    if bucket:
        yield bucket


def order_fused_modules(named_tensors: Iterable[NamedTensor],
                        packed: Mapping[str, Sequence[str]] = PACKED_MODULES) -> Iterator[NamedTensor]:
    """Pass a stream through with the tensors of each fused module made adjacent.

    A fused sub-module's tensor (e.g. ``k_proj.weight``) is held until its siblings
    (``q_proj.weight``, ``v_proj.weight`` of the same layer) have arrived, then the three are
    yielded together in ``packed`` order; every other tensor passes at once. Streams in model
    order (the trainer's) hold nothing; a state dict in alphabetical order holds at most a
    layer's partial groups. Use before :func:`iter_buckets` with ``group_key=fused_module_key``.

    Raises:
        ValueError: the stream ended with a fused module incomplete (its missing tensors named).
    """
    pending: Dict[str, Dict[str, NamedTensor]] = {}
    for name, tensor in named_tensors:
        module, _, param = name.rpartition(".")
        parent, _, last = module.rpartition(".")
        parts = next((p for p in packed.values() if last in p), None)
        if parts is None:
            yield name, tensor
            continue
        prefix = f"{parent}." if parent else ""
        siblings = [f"{prefix}{p}.{param}" for p in parts]
        held = pending.setdefault(siblings[0], {})
        held[name] = (name, tensor)
        if all(s in held for s in siblings):
            del pending[siblings[0]]
            for s in siblings:
                yield held[s]
    if pending:
        missing = missing_fused_members([n for held in pending.values() for n in held], packed)
        module, absent = sorted(missing.items())[0]
        raise ValueError(f"refit: the weights end with vLLM's fused module {module} incomplete: {absent} never came; "
                         "an engine that fuses modules must receive each module's tensors in one update_weights call")


def missing_fused_members(names: Iterable[str], packed: Mapping[str, Sequence[str]] = PACKED_MODULES) -> Dict[str, List[str]]:
    """For tensors of fused modules among ``names``: ``{fused module key: the sibling names absent
    from names}`` (empty when every fused module is complete), e.g. a bucket holding
    ``...q_proj.weight`` but not ``...k_proj.weight`` / ``...v_proj.weight``.

    Only fused sub-modules are checked (the ones :func:`fused_module_key` merges); a module
    that is not fused is complete with any one of its tensors.
    """
    present = set(names)
    missing: Dict[str, set] = {}
    for name in present:
        module, _, param = name.rpartition(".")
        parent, _, last = module.rpartition(".")
        parts = next((p for p in packed.values() if last in p), None)
        if parts is None:
            continue
        prefix = f"{parent}." if parent else ""
        absent = {f"{prefix}{p}.{param}" for p in parts} - present
        if absent:
            missing.setdefault(fused_module_key(name, packed), set()).update(absent)
    return {k: sorted(v) for k, v in missing.items()}


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
    """Stream ``named_tensors`` into ``engines`` in buckets of at most ``bucket_bytes`` bytes
    (fused modules kept whole, :func:`fused_module_key`)."""
    return push_buckets(iter_buckets(named_tensors, bucket_bytes, group_key=fused_module_key), engines)


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
