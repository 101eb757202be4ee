"""The policy worker: a Megatron-Core model + frozen reference + optimizer, as a plain class.

One :class:`PolicyWorker` lives in every training process (one per GPU, or per CPU rank in
tests). All ranks call the same methods with the same arguments, SPMD-style, as NeMo-RL's
``MegatronPolicyWorker`` and verl's ``ActorRolloutRefWorker`` do; a Ray actor wrapper only
forwards calls. Every rank of a data-parallel group receives the same policy batch (its DP
share of the global batch, layout in :mod:`megatron_brrm.workers.policy_data`).

* Model: :func:`megatron_brrm.model.build.build_gpt_model` (one chunk, or one per virtual
  pipeline stage), weights from the HF folder through the mapping helper, wrapped in
  Megatron DDP (``finalize_model_grads_func`` set, so sequence-parallel / q-k-norm / tied
  embedding grads are reduced: DESIGN.md 4.3).
* Reference policy: the initial weights, kept as a CPU copy of this rank's shards and swapped
  into the same model for :meth:`get_reference_logprobs` (NeMo-RL's
  ``use_reference_model``), so no second model is built.
* Optimizer: ``get_megatron_optimizer`` (Adam with decoupled weight decay = AdamW, no decay
  on 1-D parameters, distributed optimizer per ``parallel.use_distributed_optimizer``),
  global-norm gradient clipping, and ``OptimizerParamScheduler`` with a linear warm-up from
  ``lr_warmup_init_factor * lr`` to ``lr`` over ``lr_warmup_steps`` steps, then ``lr_decay_style``
  (constant, or linear / cosine down to ``min_lr`` at ``max_num_steps``).
* Forward/backward through ``get_forward_backward_func`` (no pipelining / 1F1B /
  interleaved); ``batch_p2p_comm=False`` is set by the model config (DESIGN.md 4.3).
  Micro-batches come from :mod:`megatron_brrm.workers.policy_data` (padding, or sequence
  packing with ``grpo.sequence_packing``); with a virtual pipeline, empty micro-batches are
  appended so their number is a multiple of PP (the interleaved schedule requires it).
  Batches are given on CPU; each micro-batch moves to the model's device in the forward step.
* Loss normalisation: the loss function receives the global valid-token / sequence counts
  (summed over micro-batches and all-reduced over DP) and its micro-batch loss is multiplied
  by ``num_microbatches * dp_size`` to cancel Megatron's per-micro-batch division and DDP's
  gradient averaging: the summed gradient is exactly that of the global-batch loss.
* A non-finite loss or gradient norm skips the optimizer step (and the LR schedule) with a
  logged warning; ``skipped_steps`` counts them, and the step number does not advance.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from megatron_brrm.rl.logprobs import token_logprobs
from megatron_brrm.rl.loss import Normalizer, reduce_metrics
from megatron_brrm.workers.policy_data import (Batch, MicroBatch, make_microbatches, make_packed_microbatches,
                                                pad_microbatch_count)

log = logging.getLogger(__name__)

LR_DECAY_STYLES = ("constant", "linear", "cosine")  # OptimizerParamScheduler styles offered by grpo.lr_decay_style
LossFn = Callable[..., Any]  # (logprobs [b,s], micro-batch dict, Normalizer, entropy=None) -> (loss, metrics)


class PolicyError(RuntimeError):
    """A policy worker call got inconsistent input (named in the message)."""


def _checked_decay_style(g) -> str:
    if g.lr_decay_style not in LR_DECAY_STYLES:
        raise ValueError(f"grpo.lr_decay_style must be one of {LR_DECAY_STYLES}, got {g.lr_decay_style!r}")
    return g.lr_decay_style


def build_lr_scheduler(optimizer, g):
    """Megatron-Core's ``OptimizerParamScheduler`` for the GRPO config ``g``, stepped once per optimizer step.

    Learning rate: a linear warm-up from ``lr_warmup_init_factor * lr`` to ``lr`` over
    ``lr_warmup_steps`` steps (none when 0), then ``lr_decay_style`` over the remaining steps up
    to ``max_num_steps``: ``constant`` (stays at ``lr``), ``linear`` or ``cosine``
    (``min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2``, ``t`` the fraction of the decay done)
    down to ``min_lr`` (default ``lr``). Weight decay is constant.

    Args:
        optimizer: a Megatron optimizer (or any object with torch-style ``param_groups``).
        g: :class:`megatron_brrm.config.GRPOConfig`.

    Raises:
        ValueError: an unknown ``lr_decay_style``.
    """
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    style = _checked_decay_style(g)
    warmup = int(g.lr_warmup_steps)
    min_lr = min(g.min_lr if g.min_lr is not None else g.lr, g.lr)
    return OptimizerParamScheduler(
        optimizer, init_lr=g.lr * g.lr_warmup_init_factor if warmup > 0 else g.lr, max_lr=g.lr,
        min_lr=min_lr, lr_warmup_steps=warmup, lr_decay_steps=max(int(g.max_num_steps), warmup + 1),
        lr_decay_style=style, start_wd=g.weight_decay, end_wd=g.weight_decay,
        wd_incr_steps=max(int(g.max_num_steps), 1), wd_incr_style="constant")


def hf_weight_getter(hf_path) -> Callable[[str], torch.Tensor]:
    """A lazy ``name -> tensor`` reader over an HF folder's safetensors (single or sharded).

    Raises:
        FileNotFoundError: no ``*.safetensors`` in the folder.
    """
    from safetensors import safe_open

    folder = Path(hf_path)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
        weight_map = None
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}; pass an HF model folder")
    handles = {f: safe_open(str(folder / f), framework="pt") for f in files}
    if weight_map is None:
        weight_map = {k: f for f, h in handles.items() for k in h.keys()}

    def get(name: str) -> torch.Tensor:
        if name not in weight_map:
            raise KeyError(name)
        return handles[weight_map[name]].get_tensor(name)

    return get


@dataclass
class TrainResult:
    """Outcome of :meth:`PolicyWorker.train` (identical on every rank).

    Attributes:
        metrics: reduced loss metrics (global means; ``*_max`` = global max) plus ``grad_norm``
            (before clipping), ``lr`` (used for this step), ``num_microbatches``,
            ``padding_fraction``.
        skipped: True when a non-finite loss / grad norm skipped the update.
    """

    metrics: Dict[str, float]
    skipped: bool


class PolicyWorker:
    """Megatron policy with reference weights, optimizer and LR schedule (module docstring).

    Args:
        cfg: :class:`megatron_brrm.config.RunConfig` (``model``, ``parallel``, ``grpo``,
            ``rollout.temperature``).
        hf_path: HF folder with the config and, unless ``cfg.model.megatron_path`` is set, the
            initial (and reference) weights; default ``cfg.model.hf_path``. With
            ``cfg.model.megatron_path`` the weights come from that converted Megatron checkpoint.
        init_parallel: call :func:`megatron_brrm.parallel.initialize_parallel` (False when the
            caller already did, with the same ``cfg.parallel``).

    Raises:
        PolicyError: no HF path; ModelBuildError / MappingError from the model helpers.
    """

    def __init__(self, cfg, hf_path: Optional[str] = None, init_parallel: bool = True):
        from megatron.core import parallel_state as mpu
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.distributed import finalize_model_grads
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        from megatron_brrm.model.build import build_gpt_model, load_hf_config
        from megatron_brrm.model.mapping import get_mapping
        from megatron_brrm.model.weights import load_hf_weights_into_megatron
        from megatron_brrm.parallel import initialize_parallel

        self.cfg = cfg
        _checked_decay_style(cfg.grpo)  # fail before the model is built
        hf_path = hf_path or cfg.model.hf_path
        if not hf_path:
            raise PolicyError("model.hf_path is not set: the policy needs an HF folder for its initial weights")
        self.hf_path = str(hf_path)
        self.state = initialize_parallel(cfg.parallel) if init_parallel else None
        self.hf_config = load_hf_config(self.hf_path)
        self.vocab_size = int(self.hf_config.vocab_size)
        self.tp_size = mpu.get_tensor_model_parallel_world_size()
        self.pp_size = mpu.get_pipeline_model_parallel_world_size()
        self.dp_size = mpu.get_data_parallel_world_size()
        self.vp_size = cfg.parallel.virtual_pipeline_model_parallel_size
        self.temperature = float(cfg.rollout.temperature)
        # batches arrive on CPU; micro-batches move to the model's device in the forward step
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else \
            torch.device("cpu")
        g = cfg.grpo

        if g.sequence_packing:
            from megatron_brrm.model.build import use_transformer_engine

            if not g.max_tokens_per_microbatch:
                raise PolicyError("grpo.sequence_packing needs grpo.max_tokens_per_microbatch (the pack size)")
            if use_transformer_engine(cfg.model):
                raise PolicyError("grpo.sequence_packing uses an explicit attention mask (local spec); with "
                                  "Transformer Engine it needs THD PackedSeqParams, not implemented: turn it off")
        chunks = [build_gpt_model(self.hf_config, cfg.model, cfg.parallel, vp_stage=v, head=self.head)
                  for v in (range(self.vp_size) if self.vp_size else [None])]
        self.mapping = get_mapping(self.hf_config, make_vocab_size_divisible_by=cfg.model.make_vocab_size_divisible_by,
                                   tp_size=self.tp_size, head=self.head)
        if cfg.model.megatron_path:  # a converted Megatron checkpoint (tools/convert_hf_to_megatron.py)
            from megatron_brrm.checkpoint.model_load import load_model_weights

            load_model_weights(chunks, cfg.model.megatron_path)
        else:
            load_hf_weights_into_megatron(chunks, self._initial_hf_weights(), self.mapping, vp_size=self.vp_size)
        self.model_config = chunks[0].config
        ddp_cfg = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                                use_distributed_optimizer=cfg.parallel.use_distributed_optimizer)
        self.model = [DistributedDataParallel(config=c.config, ddp_config=ddp_cfg, module=c,
                                              disable_bucketing=i > 0) for i, c in enumerate(chunks)]
        self.model_config.finalize_model_grads_func = finalize_model_grads
        no_sync = [m.no_sync for m in self.model]
        self.model_config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync

        min_lr = g.min_lr if g.min_lr is not None else g.lr
        opt_cfg = OptimizerConfig(
            optimizer="adam", lr=g.lr, min_lr=min_lr, weight_decay=g.weight_decay, adam_beta1=g.adam_beta1,
            adam_beta2=g.adam_beta2, adam_eps=g.adam_eps, clip_grad=g.clip_grad, decoupled_weight_decay=True,
            use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
            params_dtype=self.model_config.params_dtype,
            bf16=self.model_config.bf16, fp16=self.model_config.fp16)
        self.optimizer = get_megatron_optimizer(opt_cfg, self.model)
        self.scheduler = build_lr_scheduler(self.optimizer, g)
        self.step = 0
        self.skipped_steps = 0
        self._params = [p for m in self.model for p in m.parameters()]
        self._reference = [p.detach().to("cpu", copy=True) for p in self._params] if self.keeps_reference else None

    # Subclass hooks (e.g. the Bradley-Terry reward worker, megatron_brrm/workers/reward_worker.py):
    # the model head (megatron_brrm.model.build.build_gpt_model's ``head``), whether the initial
    # weights are kept as the reference policy, and the HF tensors the initial weights come from.
    head = "lm"
    keeps_reference = True

    def _initial_hf_weights(self) -> Callable[[str], torch.Tensor]:
        """``hf_name -> tensor`` reader of the initial weights (default: the HF folder's safetensors)."""
        return hf_weight_getter(self.hf_path)

    # ----------------------------------------------------------------- helpers
    def _microbatches(self, batch: Batch):
        g = self.cfg.grpo
        pad = self.tp_size if self.model_config.sequence_parallel else 1
        if g.sequence_packing:
            mbs, stats = make_packed_microbatches(batch, g.max_tokens_per_microbatch, pad_multiple=pad,
                                                  fixed_shape=self.pp_size > 1)
        else:
            mbs, stats = make_microbatches(batch, g.micro_batch_size, g.max_tokens_per_microbatch, pad_multiple=pad,
                                           fixed_shape=self.pp_size > 1)
        if self.vp_size:
            mbs = pad_microbatch_count(mbs, self.pp_size)
            stats["num_microbatches"] = len(mbs)
        return mbs, stats

    def _forward_step(self, loss_func_factory, data_iterator, model):
        mb = next(data_iterator)
        mb = MicroBatch(mb.rows, {k: v.to(self.device, non_blocking=True) for k, v in mb.data.items()}, mb.segments)
        ids = mb.data["input_ids"]
        pos = torch.arange(ids.shape[1], dtype=torch.long, device=ids.device).unsqueeze(0).expand_as(ids)
        output = model(ids, pos, mb.data.get("attention_mask"))
        return output, partial(loss_func_factory, mb)

    def _logprobs_of(self, logits: torch.Tensor, ids: torch.Tensor, with_entropy: bool):
        from megatron.core import parallel_state as mpu

        v_local = logits.shape[-1]
        return token_logprobs(logits, ids, temperature=self.temperature,
                              vocab_start=mpu.get_tensor_model_parallel_rank() * v_local, vocab_size=self.vocab_size,
                              group=mpu.get_tensor_model_parallel_group(), with_entropy=with_entropy)

    def _run(self, mbs, stats, loss_func_factory, forward_only: bool):
        from megatron.core.pipeline_parallel import get_forward_backward_func

        iters = [iter(mbs) for _ in self.model] if len(self.model) > 1 else iter(mbs)
        fb = get_forward_backward_func()
        return fb(forward_step_func=partial(self._forward_step, loss_func_factory), data_iterator=iters,
                  model=self.model if len(self.model) > 1 else self.model[0], num_microbatches=len(mbs),
                  seq_length=stats["seq_length"], micro_batch_size=mbs[0].data["input_ids"].shape[0],
                  forward_only=forward_only)

    def _broadcast_from_last_stage(self, obj):
        from megatron.core import parallel_state as mpu

        if self.pp_size == 1:
            return obj
        group = mpu.get_pipeline_model_parallel_group()
        src = torch.distributed.get_global_rank(group, self.pp_size - 1)
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=src, group=group)
        return box[0]

    # ------------------------------------------------------------------ logprobs
    @torch.no_grad()
    def get_logprobs(self, batch: Batch, with_entropy: bool = False):
        """Current-policy logprobs of ``batch['input_ids']`` (forward only, vocab-parallel).

        Args:
            batch: policy batch (``input_ids`` ``[B, T]``, ``input_lengths`` ``[B]``).
            with_entropy: also return per-position entropies.
        Returns:
            float32 ``[B, T]`` aligned to input positions (``[:, 0] = 0``, positions at or after
            ``input_lengths`` are 0), on every rank; with ``with_entropy`` a tuple ``(logprobs, entropy)``.
        """
        for m in self.model:
            m.eval()
        mbs, stats = self._microbatches(batch)

        def loss_func(mb, output_tensor):
            lp, ent = self._logprobs_of(output_tensor, mb.data["input_ids"], with_entropy)
            out = {"logprobs": lp}
            if ent is not None:
                out["entropy"] = ent
            return output_tensor.new_zeros(()), out

        store = self._run(mbs, stats, loss_func, forward_only=True)
        b, t = batch["input_ids"].shape
        lp = torch.zeros(b, t)
        ent = torch.zeros(b, t) if with_entropy else None
        if store:  # last pipeline stage
            for mb, out in zip(mbs, store):
                for row, j, st, n in mb.segments:
                    lp[row, :n] = out["logprobs"][j, st:st + n].float()
                    lp[row, 0] = 0.0  # a packed sequence's first token has no prediction of its own
                    if ent is not None:
                        ent[row, :n] = out["entropy"][j, st:st + n].float()
                        ent[row, 0] = 0.0
        if self.pp_size > 1:  # every stage returns the last stage's result (tensor broadcast)
            from megatron.core import parallel_state as mpu

            group = mpu.get_pipeline_model_parallel_group()
            src = torch.distributed.get_global_rank(group, self.pp_size - 1)
            for tensor in (lp, ent) if ent is not None else (lp,):
                buf = tensor.to(self.device)
                torch.distributed.broadcast(buf, src=src, group=group)
                tensor.copy_(buf.cpu())
        return (lp, ent) if with_entropy else lp

    @contextlib.contextmanager
    def reference_weights(self):
        """Context manager: the frozen initial weights are swapped into the model inside it
        (the current weights wait in CPU memory and are copied back bit-exactly on exit)."""
        if self._reference is None:
            raise PolicyError(f"{type(self).__name__} keeps no reference weights")
        current = [p.detach().to("cpu", copy=True) for p in self._params]
        with torch.no_grad():
            for p, r in zip(self._params, self._reference):
                p.copy_(r)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, c in zip(self._params, current):
                    p.copy_(c)

    @torch.no_grad()
    def get_reference_logprobs(self, batch: Batch, with_entropy: bool = False):
        """Logprobs under the frozen reference policy (the initial weights); as :meth:`get_logprobs`."""
        with self.reference_weights():
            return self.get_logprobs(batch, with_entropy)

    # --------------------------------------------------------------------- train
    def _global_normalizer(self, batch: Batch) -> Normalizer:
        from megatron.core import parallel_state as mpu

        if "loss_mask" not in batch:
            raise PolicyError("train batch is missing 'loss_mask' ([B, T], 1 on generated tokens)")
        counts = Normalizer.local_counts(batch["loss_mask"]).to(self.device)
        if self.dp_size > 1:
            torch.distributed.all_reduce(counts, group=mpu.get_data_parallel_group())
        counts = counts.cpu()
        return Normalizer(float(counts[0]), float(counts[1]))

    def _reduce_over_dp(self, metrics: Dict[str, float]) -> Dict[str, float]:
        from megatron.core import parallel_state as mpu

        if self.dp_size == 1 or not metrics:
            return metrics
        keys = sorted(metrics)
        group = mpu.get_data_parallel_group()
        sums = torch.tensor([metrics[k] if not k.endswith("_max") else 0.0 for k in keys], dtype=torch.float64,
                            device=self.device)
        maxes = torch.tensor([metrics[k] if k.endswith("_max") else -math.inf for k in keys], dtype=torch.float64,
                             device=self.device)
        torch.distributed.all_reduce(sums, group=group)
        torch.distributed.all_reduce(maxes, op=torch.distributed.ReduceOp.MAX, group=group)
        return {k: float(maxes[i] if k.endswith("_max") else sums[i]) for i, k in enumerate(keys)}

    def train(self, batch: Batch, loss_fn: LossFn) -> TrainResult:
        """One optimizer step on this DP rank's share of the global batch.

        Args:
            batch: policy batch with ``loss_mask`` and whatever ``loss_fn`` reads
                (GRPO: ``advantages``, ``old_logprobs``, ``ref_logprobs``, ``rollout_logprobs``).
            loss_fn: ``(logprobs [b, s], micro-batch dict, Normalizer, entropy=[b, s]) -> (loss, metrics)``,
                e.g. ``partial(clipped_pg_loss, cfg=ClippedPGConfig(...))`` via :class:`PGLoss`.
        Returns:
            :class:`TrainResult` (same on every rank).
        """
        from megatron.core import parallel_state as mpu
        from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

        for m in self.model:
            m.train()
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        norm = self._global_normalizer(batch)
        mbs, stats = self._microbatches(batch)
        scale = float(len(mbs) * self.dp_size)

        def loss_func(mb, output_tensor):
            lp, ent = self._logprobs_of(output_tensor, mb.data["input_ids"], with_entropy=True)
            loss, met = loss_fn(lp, mb.data, norm, entropy=ent)
            return loss * scale, met

        store = self._run(mbs, stats, loss_func, forward_only=False)
        local = reduce_metrics(store) if store else None
        metrics = self._broadcast_from_last_stage(self._reduce_over_dp(local) if store else None)
        lr = float(self.optimizer.param_groups[0]["lr"])
        found_inf = bool(self.optimizer.prepare_grads())
        grad_norm = float(self.optimizer.get_grad_norm())
        metrics = dict(metrics or {})
        metrics.update(grad_norm=grad_norm, lr=lr, num_microbatches=float(len(mbs)),
                       padding_fraction=stats["padding_fraction"])
        loss_value = metrics.get("loss", 0.0)
        if found_inf or not math.isfinite(grad_norm) or not math.isfinite(loss_value):
            self.skipped_steps += 1
            if mpu.get_data_parallel_rank() == 0 and mpu.get_tensor_model_parallel_rank() == 0:
                log.warning("policy step %d skipped: non-finite loss (%s) or grad norm (%s); weights unchanged",
                            self.step, loss_value, grad_norm)
            for m in self.model:
                m.zero_grad_buffer()
            self.optimizer.zero_grad()
            return TrainResult(metrics, skipped=True)
        clip = self.cfg.grpo.clip_grad
        for sub in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
            params = sub.get_parameters()
            if clip > 0 and params:
                decoupled = sub.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8
                clip_grad_by_total_norm_fp32(params, max_norm=clip, total_norm=grad_norm, use_decoupled_grad=decoupled)
        self.optimizer.step_with_ready_grads()
        self.scheduler.step(increment=1)
        self.step += 1
        return TrainResult(metrics, skipped=False)

    # --------------------------------------------------------------- checkpoints
    def save_checkpoint(self, save_dir, extra_state: Optional[dict] = None, keep_last_k: Optional[int] = None):
        """Save model + optimizer + LR schedule + RNG + ``extra_state`` (e.g. the data-loader
        position) + step as ``save_dir/step_<step>`` (collective; atomic, see
        :mod:`megatron_brrm.checkpoint.train_ckpt`). ``keep_last_k`` defaults to
        ``cfg.checkpoint.keep_last_k``. Returns the committed folder."""
        from megatron_brrm.checkpoint.train_ckpt import save_train_checkpoint

        extra = dict(extra_state or {})
        extra["skipped_steps"] = self.skipped_steps
        k = self.cfg.checkpoint.keep_last_k if keep_last_k is None else keep_last_k
        return save_train_checkpoint(save_dir, self.step, self.model, self.optimizer, self.scheduler, extra,
                                     keep_last_k=k, strategy=self.cfg.checkpoint.format)

    def load_checkpoint(self, path) -> Optional[dict]:
        """Resume from ``path``: a ``step_N`` folder, or a save_dir (its ``latest``). Works
        across TP/PP/DP layouts. Returns the saved ``extra_state`` plus ``optimizer_step``
        (the restored :attr:`step`), or None when ``path`` is a save_dir without any
        checkpoint (fresh start)."""
        from megatron_brrm.checkpoint.train_ckpt import STATE_FILE, latest_checkpoint, load_train_checkpoint

        path = Path(path)
        if not (path / STATE_FILE).is_file():
            path = latest_checkpoint(path)
            if path is None:
                return None
        info = load_train_checkpoint(path, self.model, self.optimizer, self.scheduler)
        self.step = info["step"]
        extra = dict(info["extra_state"])
        self.skipped_steps = int(extra.pop("skipped_steps", 0))
        extra["optimizer_step"] = self.step
        return extra

    # ----------------------------------------------------------------- weights
    def hf_state_dict(self) -> Dict[str, torch.Tensor]:
        """The current weights as full HF tensors on every rank (collective; small models / tests)."""
        from megatron_brrm.model.weights import megatron_state_to_hf

        return megatron_state_to_hf(self.model, self.mapping, vp_size=self.vp_size)


class PGLoss:
    """Adapter: :func:`megatron_brrm.rl.loss.clipped_pg_loss` as a worker ``loss_fn``."""

    def __init__(self, cfg):
        self.cfg = cfg

    def __call__(self, logprobs, data, norm, entropy=None):
        from megatron_brrm.rl.loss import clipped_pg_loss

        return clipped_pg_loss(logprobs, data, self.cfg, norm, entropy=entropy)


class SFTLoss:
    """Adapter: :func:`megatron_brrm.rl.loss.sft_nll_loss` as a worker ``loss_fn``."""

    def __init__(self, aggregation: str = "token_mean"):
        self.aggregation = aggregation

    def __call__(self, logprobs, data, norm, entropy=None):
        from megatron_brrm.rl.loss import sft_nll_loss

        return sft_nll_loss(logprobs, data, norm, self.aggregation)
