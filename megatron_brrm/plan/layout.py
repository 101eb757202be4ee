"""Layout validation: does a recipe's parallel layout fit the model, the batch and the allocation?

:func:`plan_layout` derives the data-parallel size and the generation fleet from the config and
the allocation (``nodes`` x ``gpus_per_node``), checks every rule below and raises
:class:`LayoutError` listing *all* the problems at once, each naming the config keys and the
numbers. The GRPO driver calls it at start-up (before loading the engine, then again with the
Ray cluster's real sizes), the planner CLI before submission.

Rules (Megatron-Core's own constraints, and this project's where stated):

- world size = TP x PP x CP x DP. On GPU the policy gets every GPU (colocated engines) or the
  GPUs the engines leave (``rollout.colocated=false``); on CPU (``gpus_per_node=0``) one model
  replica, DP = 1 (as :class:`~megatron_brrm.workers.cluster.Cluster` places it).
- ``num_attention_heads`` and ``num_query_groups`` divisible by TP (whole query groups per rank).
- ``num_layers`` divisible by PP x VPP (equal stages and model chunks); VPP needs PP > 1.
- ``grpo.global_batch_size`` divisible by DP x ``grpo.micro_batch_size``; the rollout batch
  (``num_prompts_per_step x num_generations``) divisible by ``global_batch_size``.
- CP > 1: ``rollout.max_total_sequence_length`` divisible by 2 x CP (Megatron's load-balanced
  CP splits each sequence into 2 x CP chunks).
- engines: ``rollout.tensor_parallel_size`` <= GPUs per node and divides it (an engine's TP group
  stays on one node), divides the heads, and divides or is divided by the KV heads (vLLM
  replicates KV heads when TP exceeds them); fleet: colocated engines share the policy GPUs
  (at most world / engine TP), split engines need GPUs of their own.
- FP8 (:mod:`megatron_brrm.model.fp8`): valid keys, per-rank GEMM sizes multiples of 16.

Warnings (printed, not fatal): TP larger than a node, SP with TP = 1, fewer micro-batches per
step than PP stages (pipeline bubble), rollout groups not divisible by the engine count.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from megatron_brrm.model.fp8 import FP8ConfigError, check_fp8_config, fp8_dim_problems
from megatron_brrm.plan.shapes import ModelShape

class LayoutError(ValueError):
    """The layout does not fit; ``problems`` holds one message per broken rule."""

    def __init__(self, problems: List[str]):
        self.problems = list(problems)
        super().__init__("layout check failed:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass
class Layout:
    """A validated layout.

    Attributes:
        tp, pp, cp, vpp (None = no virtual pipeline), dp: Megatron parallel sizes.
        world_size: policy ranks (TP x PP x CP x DP).
        nodes, gpus_per_node: the allocation (``gpus_per_node = 0``: a CPU run).
        sequence_parallel: SP in effect (requested and TP > 1).
        micro_batch_size, global_batch_size: trajectories per micro-batch / per optimizer step.
        num_microbatches: micro-batches per optimizer step per DP rank.
        rollout_batch: trajectories per GRPO step (prompts x generations).
        engine_tp: GPUs per generation engine; num_engines: engines; colocated: engines share
            the policy GPUs.
        warnings: non-fatal findings.
    """

    tp: int
    pp: int
    cp: int
    vpp: Optional[int]
    dp: int
    world_size: int
    nodes: int
    gpus_per_node: int
    sequence_parallel: bool
    micro_batch_size: int
    global_batch_size: int
    num_microbatches: int
    rollout_batch: int
    engine_tp: int
    num_engines: int
    colocated: bool
    warnings: List[str] = field(default_factory=list)

    @property
    def on_gpu(self) -> bool:
        return self.gpus_per_node > 0

    def describe(self) -> str:
        """One line: the sizes."""
        where = f"{self.nodes} node(s) x {self.gpus_per_node} GPU(s)" if self.on_gpu else "CPU"
        vpp = f" VPP={self.vpp}" if self.vpp else ""
        return (f"{where}: policy {self.world_size} rank(s) = TP {self.tp} x PP {self.pp} x CP {self.cp} x DP "
                f"{self.dp}{vpp}{' +SP' if self.sequence_parallel else ''}; {self.num_microbatches} micro-batch(es) "
                f"of {self.micro_batch_size} per optimizer step per DP rank; {self.num_engines} engine(s) x TP "
                f"{self.engine_tp} ({'colocated' if self.colocated else 'split'})")


def plan_layout(cfg, shape: ModelShape, nodes: Optional[int] = None, gpus_per_node: Optional[int] = None) -> Layout:
    """Validate ``cfg``'s layout for ``shape`` on ``nodes`` x ``gpus_per_node``.

    Args:
        cfg: :class:`megatron_brrm.config.RunConfig`.
        shape: the model's dimensions (:func:`megatron_brrm.plan.shapes.resolve_shape`).
        nodes: nodes of the allocation (default 1).
        gpus_per_node: GPUs per node; 0 = a CPU run (DP = 1; engines run in the driver).

    Returns:
        The :class:`Layout`, with warnings.

    Raises:
        LayoutError: every rule that fails, each message naming the keys and numbers.
    """
    p, g, r = cfg.parallel, cfg.grpo, cfg.rollout
    nodes = 1 if nodes is None else int(nodes)
    gpn = 0 if gpus_per_node is None else int(gpus_per_node)
    problems: List[str] = []
    warnings: List[str] = []
    tp, pp, cp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.context_parallel_size
    vpp = p.virtual_pipeline_model_parallel_size
    etp = r.tensor_parallel_size
    for key, val in (("parallel.tensor_model_parallel_size", tp), ("parallel.pipeline_model_parallel_size", pp),
                     ("parallel.context_parallel_size", cp), ("rollout.tensor_parallel_size", etp),
                     ("grpo.micro_batch_size", g.micro_batch_size), ("grpo.global_batch_size", g.global_batch_size),
                     ("grpo.num_prompts_per_step", g.num_prompts_per_step),
                     ("grpo.num_generations", g.num_generations)):
        if val < 1:
            problems.append(f"{key}={val} must be >= 1")
    if vpp is not None and vpp < 1:
        problems.append(f"parallel.virtual_pipeline_model_parallel_size={vpp} must be >= 1 (or null)")
    if nodes < 1 or gpn < 0:
        problems.append(f"allocation {nodes} node(s) x {gpn} GPU(s) per node: need >= 1 node and >= 0 GPUs")
    if problems:
        raise LayoutError(problems)
    mp = tp * pp * cp

    # ---- model vs TP / PP / VPP
    if shape.num_attention_heads % tp:
        problems.append(f"parallel.tensor_model_parallel_size={tp} does not divide num_attention_heads="
                        f"{shape.num_attention_heads} ({shape.name})")
    if shape.num_query_groups % tp:
        problems.append(f"parallel.tensor_model_parallel_size={tp} does not divide num_query_groups (KV heads)="
                        f"{shape.num_query_groups} ({shape.name}): each TP rank must hold whole query groups")
    if vpp is not None and pp == 1:
        problems.append(f"parallel.virtual_pipeline_model_parallel_size={vpp} needs "
                        "parallel.pipeline_model_parallel_size > 1")
    chunks = pp * (vpp or 1)
    if shape.num_layers % chunks:
        what = f"PP={pp} x VPP={vpp} = {chunks}" if vpp else f"PP={pp}"
        problems.append(f"num_layers={shape.num_layers} ({shape.name}) is not divisible by {what} "
                        "(parallel.pipeline_model_parallel_size"
                        + (", parallel.virtual_pipeline_model_parallel_size)" if vpp else ")"))
    sp = bool(p.sequence_parallel) and tp > 1
    if p.sequence_parallel and tp == 1:
        warnings.append("parallel.sequence_parallel=true has no effect with TP=1 (ignored, as Megatron-LM does)")
    if cp > 1 and r.max_total_sequence_length % (2 * cp):
        problems.append(f"rollout.max_total_sequence_length={r.max_total_sequence_length} is not divisible by "
                        f"2 x CP = {2 * cp} (parallel.context_parallel_size={cp})")

    # ---- world size, engines
    num_engines = r.num_engines
    if gpn > 0:
        total = nodes * gpn
        if tp > gpn:
            warnings.append(f"TP={tp} spans nodes (gpus_per_node={gpn}): tensor-parallel traffic would cross the "
                            "network every layer")
        if etp > gpn:
            problems.append(f"rollout.tensor_parallel_size={etp} exceeds the {gpn} GPU(s) of a node: an engine's TP "
                            "group must fit on one node")
        elif gpn % etp:
            problems.append(f"rollout.tensor_parallel_size={etp} does not divide gpus_per_node={gpn}: engine TP "
                            "groups would straddle nodes")
        if r.colocated:
            world = total
            max_engines = world // etp if etp <= world else 0
            if world % etp:
                problems.append(f"rollout.colocated=true: {world} GPU(s) are not a multiple of "
                                f"rollout.tensor_parallel_size={etp}")
            num_engines = max_engines if num_engines is None else num_engines
            if not 1 <= num_engines <= max(max_engines, 1):
                problems.append(f"rollout.num_engines={num_engines}: colocated engines share the {world} policy "
                                f"GPU(s), so 1 to {max_engines} fit (rollout.tensor_parallel_size={etp})")
        else:
            if num_engines is None:
                problems.append("rollout.colocated=false on GPU needs rollout.num_engines: how many GPUs go to "
                                "generation instead of training")
                num_engines = 0
            world = total - num_engines * etp
            if num_engines < 1 or world < 1:
                problems.append(f"rollout.num_engines={num_engines} x rollout.tensor_parallel_size={etp} leaves "
                                f"{world} of {total} GPU(s) for training: need >= 1 engine and >= 1 policy GPU")
    else:
        world = mp
        num_engines = 1 if num_engines is None else num_engines
    if world >= 1 and world % mp:
        problems.append(f"policy world size {world} is not a multiple of TP x PP x CP = {tp} x {pp} x {cp} = {mp} "
                        "(parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size, "
                        "parallel.context_parallel_size)")
    dp = max(world // mp, 1)
    if shape.num_attention_heads % etp:
        problems.append(f"rollout.tensor_parallel_size={etp} does not divide num_attention_heads="
                        f"{shape.num_attention_heads} ({shape.name}); vLLM splits heads evenly")
    if shape.num_query_groups % etp and etp % shape.num_query_groups:
        problems.append(f"rollout.tensor_parallel_size={etp} and num_query_groups={shape.num_query_groups} "
                        f"({shape.name}) do not divide one another; vLLM splits or replicates whole KV heads")

    # ---- batch sizes
    # (grpo.global_batch_size dividing the rollout batch and the enum-like keys are load-time rules:
    # megatron_brrm.config.validate_config)
    rollout_batch = g.num_prompts_per_step * g.num_generations
    per_step = dp * g.micro_batch_size
    if g.global_batch_size % per_step:
        problems.append(f"grpo.global_batch_size={g.global_batch_size} is not divisible by DP x micro-batch = "
                        f"{dp} x {g.micro_batch_size} = {per_step} (grpo.micro_batch_size; DP = {world} ranks / "
                        f"TP x PP x CP {mp})")
    num_mb = max(g.global_batch_size // per_step, 1)
    if pp > 1 and num_mb < pp:
        warnings.append(f"{num_mb} micro-batch(es) per optimizer step for {pp} pipeline stages: the pipeline never "
                        "fills (lower grpo.micro_batch_size or raise grpo.global_batch_size)")
    if vpp and num_mb % pp:
        problems.append(f"{num_mb} micro-batches per optimizer step is not a multiple of PP={pp}, which the "
                        "interleaved (virtual) pipeline schedule needs")
    if num_engines and g.num_prompts_per_step % num_engines:
        warnings.append(f"grpo.num_prompts_per_step={g.num_prompts_per_step} groups over {num_engines} engine(s): "
                        "the engines get unequal shares")

    # ---- FP8
    try:
        check_fp8_config(cfg.model, p)
    except FP8ConfigError as exc:
        problems.append(str(exc))
    else:
        if cfg.model.fp8 is not None:
            problems.extend(fp8_dim_problems(shape.linear_shapes(), tp))
    if getattr(r, "quantization", None) not in (None, "fp8"):
        problems.append(f"rollout.quantization={r.quantization!r} is not one of [null, 'fp8']")
    elif getattr(r, "quantization", None) == "fp8" and r.engine != "vllm":
        problems.append("rollout.quantization=fp8 needs rollout.engine=vllm (the HF engine runs the checkpoint dtype)")

    if problems:
        raise LayoutError(problems)
    return Layout(tp=tp, pp=pp, cp=cp, vpp=vpp, dp=dp, world_size=world, nodes=nodes, gpus_per_node=gpn,
                  sequence_parallel=sp, micro_batch_size=g.micro_batch_size, global_batch_size=g.global_batch_size,
                  num_microbatches=num_mb, rollout_batch=rollout_batch, engine_tp=etp, num_engines=num_engines,
                  colocated=bool(r.colocated), warnings=warnings)
