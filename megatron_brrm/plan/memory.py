"""Per-GPU memory of a layout: training (weights, gradients, optimizer, activations), the
generation engines (weights, KV cache), and their sum at each phase of the colocated lifecycle.

All sizes are bytes; :data:`GIB` = 2**30. The model is a dense Qwen3/Llama decoder
(:class:`~megatron_brrm.plan.shapes.ModelShape`); ``e`` is the bytes of ``model.params_dtype``.

**Weights, gradients, optimizer** (Megatron-LM ``theoretical_memory_usage.py``: 18 bytes per
parameter with bf16 mixed precision, ``6 + 12 / DP`` with the distributed optimizer): per
parameter of the most loaded pipeline stage, ``e`` for the weights, 4 for the fp32 gradient
buffer (this project's DDP sets ``grad_reduce_in_fp32``), and Adam's state: fp32 main weights
(4, only when ``e < 4``) + first and second moments (4 + 4), divided by DP under the distributed
optimizer. Stage parameters: ``L/PP`` layers (split part / TP + norms), the embedding on the first
stage and the output layer + final norm on the last (``V_pad * h / TP`` each, ``V_pad`` Megatron's
padded vocabulary). The KL reference weights live on the host (not counted).

**Activations** (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models", section 4 and Table 2), per token and layer, in elements, for a pre-norm
layer with GQA (``q = heads * d``, ``kv = groups * d``), SwiGLU (``f``), q/k norms (Qwen3: ``n = 1``)
and no dropout, with fused/flash attention (no ``s^2`` softmax terms are stored, which is what
Korthikanti's *selective* recomputation achieves, so ``selective`` equals ``none`` here):

    replicated  R = 4h                          two norm inputs, the QKV and FC1 GEMM inputs
    split       S = (2 + n)(q + kv) + 3f        Q, K, V (+ their pre-norm copies), the projection
                                                input, FC1's gate/up outputs and FC2's input

    per layer   A = e * (R + S) / t             with sequence parallelism (everything sharded)
                A = e * (R + S / t)             without

For a GPT layer (``q = kv = h``, ``n = 0``, GeLU with ``f = 4h`` storing its input and output: ``2f``)
this is ``e * 16h / t`` = ``32 h / t`` bytes, Korthikanti's ``34 sbh / t`` less the two dropout
masks. Full recomputation keeps only each checkpointed chunk's input, ``e * h / t`` (SP) per
chunk, plus one chunk's ``A`` while it is recomputed; ``uniform`` with ``n`` layers per chunk keeps
``ceil(L_stage / n)`` inputs, ``block`` with ``n`` keeps ``n`` inputs and ``L_stage - n`` full layers.
Under the 1F1B schedule stage ``i`` holds ``min(PP - i, M)`` micro-batches (``M`` per optimizer
step); the interleaved schedule multiplies that by ``1 + (PP - 1) / (PP * VPP)`` (Megatron-LM).
Tokens per micro-batch: ``micro_batch_size * rollout.max_total_sequence_length`` (the longest
sequence; ``max_tokens_per_microbatch`` when set), divided by CP. The last stage also holds the
final norm's and the output layer's inputs ``2 e h / t`` and the logits: ``e`` bytes of logits plus two fp32 softmax
buffers (this project's vocab-parallel logprob, :mod:`megatron_brrm.rl.logprobs`) per token and
local vocabulary row: ``(e + 8) * V_pad / t``.

**Engines** (vLLM): weights at engine TP (``e_gen`` bytes per parameter, vocabulary padded to 64
rows; with ``rollout.quantization=fp8`` the GEMM weights take 1 byte plus an fp32 scale per 128 x
128 block); KV cache ``2 * L * max(1, groups / TP_gen) * d * 2`` bytes per token (bf16); each engine
holds ``ceil(P * G / engines)`` sequences of at most ``max_total_sequence_length`` tokens. vLLM takes
``gpu_memory_utilization`` of the GPU for weights + KV + its own activations (not modelled here;
the per-GPU reserve covers it, the CUDA contexts and fragmentation).

**Colocation** (``rollout.colocated``, per GPU): *generation* = the engine's share +
what the policy keeps on the GPU (``rollout.colocated_offload``: ``all`` nothing, ``optimizer``
weights + gradients, ``none`` weights + gradients + optimizer); *training* = the whole training
footprint (engines asleep: weights on the host, KV cache freed); *refit* = the policy's weights
(+ what it keeps) + the engine's weights + one refit bucket. Each phase + reserve must fit the GPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from megatron_brrm.model.mapping import padded_vocab_size
from megatron_brrm.plan.layout import Layout
from megatron_brrm.plan.shapes import ModelShape

GIB = 2 ** 30
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
VLLM_VOCAB_PADDING = 64
FP8_BLOCK = 128


def gib(n: float) -> float:
    """Bytes -> GiB."""
    return n / GIB


@dataclass
class StageMemory:
    """Training memory of one pipeline stage's rank (bytes).

    Attributes:
        stage: pipeline stage index; params: parameters held by one rank of it.
        weights, grads, optimizer: model state (``optimizer`` as configured).
        optimizer_distributed / optimizer_replicated: Adam state with and without the
            distributed optimizer.
        activations: as configured (``model.recompute_granularity``), logits included.
        activations_by_recompute: ``{"none", "selective", "full"}`` for this stage (full:
            uniform, one layer per chunk, unless the config says otherwise).
        inflight_microbatches: micro-batches whose activations the stage holds at its peak.
    """

    stage: int
    params: int
    weights: int
    grads: int
    optimizer: int
    optimizer_distributed: int
    optimizer_replicated: int
    activations: int
    activations_by_recompute: Dict[str, int]
    inflight_microbatches: float

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations


@dataclass
class TrainingMemory:
    """Per-rank training memory of every stage; :attr:`peak` is the most loaded one."""

    stages: List[StageMemory]
    tokens_per_microbatch: int
    padded_vocab: int

    @property
    def peak(self) -> StageMemory:
        return max(self.stages, key=lambda s: s.total)


@dataclass
class EngineMemory:
    """Per-GPU memory of one generation engine rank (bytes).

    Attributes:
        weights: model weights at engine TP.
        kv_bytes_per_token: K and V of every layer for one token on one engine rank.
        sequences: sequences one engine holds per rollout (``ceil(P * G / engines)``).
        kv_needed: KV cache for all of them at full length.
        budget: ``gpu_memory_utilization`` x GPU memory (vLLM's share).
        kv_budget: what is left of it for the KV cache after the weights.
        concurrent_full_sequences: full-length sequences the KV budget holds at once.
    """

    weights: int
    kv_bytes_per_token: int
    sequences: int
    kv_needed: int
    budget: int
    kv_budget: int
    concurrent_full_sequences: int


@dataclass
class Phase:
    """One lifecycle phase on one GPU: its parts (name -> bytes) and their sum."""

    name: str
    parts: Dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def _layer_activation(shape: ModelShape, tp: int, sp: bool, e: int) -> float:
    """Bytes per token of one layer with nothing recomputed (module docstring: ``A``)."""
    n = 1 if shape.qk_layernorm else 0
    rep = 4 * shape.hidden_size
    split = (2 + n) * (shape.q_size + shape.kv_size) + 3 * shape.ffn_hidden_size
    return e * (rep + split) / tp if sp else e * (rep + split / tp)


def _stored_per_microbatch(layers: int, granularity: Optional[str], method: Optional[str], num_layers: Optional[int],
                           a_layer: float, a_input: float) -> (float, float):
    """(bytes per token kept per in-flight micro-batch, bytes per token of the recompute working set)."""
    if granularity != "full":  # none, or selective == none with fused attention
        return layers * a_layer, 0.0
    n = max(int(num_layers or 1), 1)
    if method == "block":
        n = min(n, layers)
        return n * a_input + (layers - n) * a_layer, (a_layer if n else 0.0)
    chunks = math.ceil(layers / n)
    return chunks * a_input, min(n, layers) * a_layer


def training_memory(shape: ModelShape, layout: Layout, cfg) -> TrainingMemory:
    """Per-rank training memory of each pipeline stage (module docstring for the formulas).

    Args:
        shape: model dimensions; layout: a validated :class:`Layout`; cfg: the run config
            (``model.params_dtype``, ``model.recompute_*``, ``parallel.use_distributed_optimizer``,
            ``grpo.*``, ``rollout.max_total_sequence_length``).

    Raises:
        KeyError: unknown ``model.params_dtype``.
    """
    m, g = cfg.model, cfg.grpo
    e = DTYPE_BYTES[m.params_dtype]
    tp, pp, dp = layout.tp, layout.pp, layout.dp
    v_pad = padded_vocab_size(shape.vocab_size, m.make_vocab_size_divisible_by, tp)
    layers = shape.num_layers // pp
    s_max = cfg.rollout.max_total_sequence_length
    if g.sequence_packing and g.max_tokens_per_microbatch:
        tokens = max(g.max_tokens_per_microbatch, s_max)
    elif g.max_tokens_per_microbatch:
        tokens = max(s_max, min(g.micro_batch_size * s_max, g.max_tokens_per_microbatch))
    else:
        tokens = g.micro_batch_size * s_max
    tokens = math.ceil(tokens / layout.cp)
    sp = layout.sequence_parallel
    a_layer = _layer_activation(shape, tp, sp, e)
    a_input = e * shape.hidden_size / (tp if sp else 1)
    vpp_penalty = 1 + (pp - 1) / (pp * layout.vpp) if layout.vpp else 1.0
    opt_per_param = 8 + (4 if e < 4 else 0)  # Adam moments (+ fp32 main weights under mixed precision)
    stages = []
    for i in range(pp):
        params = layers * (shape.layer_split_params // tp + shape.layer_replicated_params)
        if i == 0:
            params += v_pad * shape.hidden_size // tp
        if i == pp - 1 and (not shape.tied_embeddings or pp > 1):
            params += v_pad * shape.hidden_size // tp
        if i == pp - 1:
            params += shape.hidden_size
        inflight = min(pp - i, layout.num_microbatches) * vpp_penalty
        logits = (2 * e * shape.hidden_size / (tp if sp else 1) + (e + 8) * v_pad / tp) if i == pp - 1 else 0.0
        by = {}
        for gran in ("none", "selective", "full"):
            kept, work = _stored_per_microbatch(layers, gran, m.recompute_method if gran == "full" else None,
                                                m.recompute_num_layers if gran == "full" else None, a_layer, a_input)
            by[gran] = int(round(tokens * (inflight * kept + work + logits)))
        configured = by[m.recompute_granularity or "none"]
        opt_rep = params * opt_per_param
        opt_dist = int(math.ceil(params * opt_per_param / dp))
        stages.append(StageMemory(
            stage=i, params=params, weights=params * e, grads=params * 4,
            optimizer=opt_dist if cfg.parallel.use_distributed_optimizer else opt_rep,
            optimizer_distributed=opt_dist, optimizer_replicated=opt_rep, activations=configured,
            activations_by_recompute=by, inflight_microbatches=inflight))
    return TrainingMemory(stages=stages, tokens_per_microbatch=tokens, padded_vocab=v_pad)


def engine_memory(shape: ModelShape, layout: Layout, cfg, gpu_bytes: int) -> EngineMemory:
    """Per-GPU memory of one engine rank (module docstring).

    Args:
        gpu_bytes: memory of one GPU.
    """
    r = cfg.rollout
    etp = layout.engine_tp
    e_gen = 2 if r.dtype == "auto" else DTYPE_BYTES[r.dtype]  # auto: the checkpoint's bf16
    rows = math.ceil(shape.vocab_size / (VLLM_VOCAB_PADDING * etp)) * VLLM_VOCAB_PADDING * etp
    emb = rows * shape.hidden_size * (1 if shape.tied_embeddings else 2) // etp
    norms = shape.num_layers * shape.layer_replicated_params + shape.hidden_size
    split = shape.num_layers * shape.layer_split_params // etp
    if getattr(r, "quantization", None) == "fp8":
        scales = 0
        for out_f, in_f in shape.linear_shapes().values():
            scales += math.ceil(out_f / FP8_BLOCK) * math.ceil(in_f / FP8_BLOCK)
        weights = split * 1 + shape.num_layers * scales * 4 // etp + (emb + norms) * e_gen
    else:
        weights = (split + emb + norms) * e_gen
    kv_heads = max(1, shape.num_query_groups // etp)
    kv_tok = 2 * shape.num_layers * kv_heads * shape.head_dim * 2
    seqs = math.ceil(layout.rollout_batch / max(layout.num_engines, 1))
    kv_needed = seqs * r.max_total_sequence_length * kv_tok
    budget = int(r.gpu_memory_utilization * gpu_bytes)
    kv_budget = budget - weights
    concurrent = max(kv_budget, 0) // (r.max_total_sequence_length * kv_tok)
    return EngineMemory(weights=weights, kv_bytes_per_token=kv_tok, sequences=seqs, kv_needed=kv_needed,
                        budget=budget, kv_budget=kv_budget, concurrent_full_sequences=int(concurrent))


def lifecycle_phases(train: StageMemory, engine: Optional[EngineMemory], layout: Layout, cfg,
                     reserve: int) -> List[Phase]:
    """The per-GPU phases that must each fit (module docstring: colocation). ``train``: the peak stage."""
    r = cfg.rollout
    keep = {"all": {}, "optimizer": {"policy weights": train.weights, "policy gradients": train.grads},
            "none": {"policy weights": train.weights, "policy gradients": train.grads,
                     "policy optimizer": train.optimizer}}[r.colocated_offload]
    training = Phase("training", {"policy weights": train.weights, "policy gradients": train.grads,
                                  "policy optimizer": train.optimizer, "activations": train.activations,
                                  "reserve": reserve})
    if engine is None:  # CPU run: the HF engine lives in the driver's host memory
        return [training]
    if not layout.colocated:
        return [training, Phase("generation (engine GPUs)", {"engine (gpu_memory_utilization)": engine.budget,
                                                              "reserve": reserve})]
    generation = Phase("generation", {"engine (gpu_memory_utilization)": engine.budget, **keep, "reserve": reserve})
    refit = Phase("refit", {"policy weights": train.weights, **keep, "engine weights": engine.weights,
                            "refit bucket": r.refit_bucket_size_mb << 20, "reserve": reserve})
    return [generation, training, refit]
