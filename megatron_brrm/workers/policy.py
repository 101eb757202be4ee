"""The policy worker: a Megatron-Core model + frozen reference + optimizer, as a plain class.

One :class:`PolicyWorker` lives in every training process (one per GPU, or per CPU rank in
tests). All ranks call the same methods with the same arguments, SPMD-style, as NeMo-RL's
``MegatronPolicyWorker`` and verl's ``ActorRolloutRefWorker`` do; a Ray actor wrapper only
forwards calls. Every rank of a data-parallel group receives the same policy batch (its DP
share of the global batch, layout in :mod:`megatron_brrm.workers.policy_data`).

* Model: :func:`megatron_brrm.model.build.build_gpt_model` (one chunk, or one per virtual
  pipeline stage), weights from the HF folder through the mapping helper, wrapped in
  Megatron DDP (``finalize_model_grads_func`` set, so sequence-parallel / q-k-norm / tied
  embedding grads are reduced: docs/design.md §7).
* Reference policy: the initial weights, kept as a CPU copy of this rank's shards and swapped
  into the same model for :meth:`get_reference_logprobs` (NeMo-RL's
  ``use_reference_model``), so no second model is built.
* Optimizer: ``get_megatron_optimizer`` (Adam with decoupled weight decay = AdamW, no decay
  on 1-D parameters, distributed optimizer per ``parallel.use_distributed_optimizer``),
  global-norm gradient clipping, and ``OptimizerParamScheduler``: the trainer's own
  :class:`~megatron_brrm.config.OptimizerConfig` (``grpo.optimizer``, ``sft.optimizer``) over
  its run's optimizer steps (:func:`build_lr_scheduler`: warm-up, then constant, linear,
  cosine or WSD).
* Forward/backward through ``get_forward_backward_func`` (no pipelining / 1F1B /
  interleaved); ``batch_p2p_comm=False`` is set by the model config (docs/design.md §7).
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
import logging
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from megatron.core import parallel_state as mpu
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_brrm.checkpoint.hf_io import HFSafetensorsReader
from megatron_brrm.checkpoint.model_load import load_model_weights
from megatron_brrm.checkpoint.train_ckpt import (STATE_FILE, latest_checkpoint, load_train_checkpoint,
                                                 save_train_checkpoint)
from megatron_brrm.config import OFFLOAD_MODES, optimizer_steps_per_rollout
from megatron_brrm.model.build import build_gpt_model, load_hf_config, use_transformer_engine
from megatron_brrm.model.fp8 import fp8_token_multiple
from megatron_brrm.model.mapping import get_mapping
from megatron_brrm.model.weights import load_hf_weights_into_megatron, megatron_state_to_hf
from megatron_brrm.parallel import initialize_parallel
from megatron_brrm.rl.logprobs import token_logprobs
from megatron_brrm.rl.loss import Normalizer, reduce_metrics
from megatron_brrm.workers.lr_schedule import build_lr_scheduler
from megatron_brrm.workers.offload import StorageOffloader, distinct_storages, model_tensors, optimizer_tensors
from megatron_brrm.workers.policy_data import (Batch, MicroBatch, make_microbatches, make_packed_microbatches,
                                                pad_microbatch_count)

log = logging.getLogger(__name__)

LossFn = Callable[..., Any]  # (logprobs [b,s], micro-batch dict, Normalizer, entropy=None) -> (loss, metrics)


class PolicyError(RuntimeError):
    """A policy worker call got inconsistent input (named in the message)."""


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
        cfg: :class:`megatron_brrm.config.RunConfig` (``model``, ``parallel``, ``grpo``'s
            micro-batching, ``rollout.temperature``).
        hf_path: HF folder with the config and, unless ``cfg.model.megatron_path`` is set, the
            initial (and reference) weights; default ``cfg.model.hf_path``. With
            ``cfg.model.megatron_path`` the weights come from that converted Megatron checkpoint.
        init_parallel: call :func:`megatron_brrm.parallel.initialize_parallel` (False when the
            caller already did, with the same ``cfg.parallel``).
        optimizer: the trainer's :class:`~megatron_brrm.config.OptimizerConfig` (default
            ``cfg.grpo.optimizer``; the SFT driver passes ``cfg.sft.optimizer``).
        total_steps: optimizer steps of the whole run, the length of the LR schedule (default:
            ``grpo.max_num_steps`` x the optimizer steps per rollout batch).

    Raises:
        PolicyError: no HF path; ModelBuildError / MappingError from the model helpers.
    """

    def __init__(self, cfg, hf_path: Optional[str] = None, init_parallel: bool = True, optimizer=None,
                 total_steps: Optional[int] = None):
        self.cfg = cfg
        self.optim_cfg = optimizer if optimizer is not None else cfg.grpo.optimizer
        self.total_steps = int(total_steps) if total_steps is not None else \
            cfg.grpo.max_num_steps * max(optimizer_steps_per_rollout(cfg), 1)
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

        o = self.optim_cfg
        min_lr = o.min_lr if o.min_lr is not None else o.lr
        opt_cfg = OptimizerConfig(
            optimizer="adam", lr=o.lr, min_lr=min_lr, weight_decay=o.weight_decay, adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2, adam_eps=o.adam_eps, clip_grad=o.clip_grad, decoupled_weight_decay=True,
            use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
            params_dtype=self.model_config.params_dtype,
            bf16=self.model_config.bf16, fp16=self.model_config.fp16)
        self.optimizer = get_megatron_optimizer(opt_cfg, self.model)
        self.scheduler = build_lr_scheduler(self.optimizer, o, self.total_steps)
        self.step = 0
        self.skipped_steps = 0
        self._params = [p for m in self.model for p in m.parameters()]
        self._reference = [p.detach().to("cpu", copy=True) for p in self._params] if self.keeps_reference else None
        self._offloader = StorageOffloader()

    # Subclass hooks (e.g. the Bradley-Terry reward worker, megatron_brrm/workers/reward_worker.py):
    # the model head (megatron_brrm.model.build.build_gpt_model's ``head``), whether the initial
    # weights are kept as the reference policy, and the HF tensors the initial weights come from.
    head = "lm"
    keeps_reference = True

    def _initial_hf_weights(self):
        """The initial weights by HF name: a ``Mapping`` or a callable raising ``KeyError`` for an
        absent name (default: the HF folder's safetensors, read a tensor at a time)."""
        return HFSafetensorsReader(self.hf_path)

    # ----------------------------------------------------------------- helpers
    def _microbatches(self, batch: Batch):
        g = self.cfg.grpo
        pad = self.tp_size if self.model_config.sequence_parallel else 1
        if self.model_config.fp8:  # TE's FP8 GEMMs take token counts in multiples of 16 (MXFP8: 32)
            pad *= fp8_token_multiple(self.model_config.fp8_recipe)
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

    def _logprobs_of(self, logits: torch.Tensor, ids: torch.Tensor, with_entropy: bool,
                     temperature: Optional[float] = None):
        v_local = logits.shape[-1]
        return token_logprobs(logits, ids, temperature=self.temperature if temperature is None else temperature,
                              vocab_start=mpu.get_tensor_model_parallel_rank() * v_local, vocab_size=self.vocab_size,
                              group=mpu.get_tensor_model_parallel_group(), with_entropy=with_entropy)

    def _run(self, mbs, stats, loss_func_factory, forward_only: bool):
        iters = [iter(mbs) for _ in self.model] if len(self.model) > 1 else iter(mbs)
        fb = get_forward_backward_func()
        return fb(forward_step_func=partial(self._forward_step, loss_func_factory), data_iterator=iters,
                  model=self.model if len(self.model) > 1 else self.model[0], num_microbatches=len(mbs),
                  seq_length=stats["seq_length"], micro_batch_size=mbs[0].data["input_ids"].shape[0],
                  forward_only=forward_only)

    def _from_last_stage(self, obj=None, tensors: Sequence[torch.Tensor] = ()):
        """The last pipeline stage's ``obj`` (pickled; other stages pass anything) on every stage, and
        its ``tensors`` copied in place into every stage's tensors of the same shapes; returns the
        last stage's ``obj``. Collective over the pipeline group; a no-op at PP=1."""
        if self.pp_size == 1:
            return obj
        group = mpu.get_pipeline_model_parallel_group()
        src = torch.distributed.get_global_rank(group, self.pp_size - 1)
        for tensor in tensors:
            buf = tensor.to(self.device)
            torch.distributed.broadcast(buf, src=src, group=group)
            tensor.copy_(buf.cpu())
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=src, group=group)
        return box[0]

    # ------------------------------------------------------------------ logprobs
    @torch.no_grad()
    def get_logprobs(self, batch: Batch, with_entropy: bool = False, temperature: Optional[float] = None):
        """Current-policy logprobs of ``batch['input_ids']`` (forward only, vocab-parallel).

        Args:
            batch: policy batch (``input_ids`` ``[B, T]``, ``input_lengths`` ``[B]``).
            with_entropy: also return per-position entropies.
            temperature: logits are divided by it (default ``rollout.temperature``; 1.0 for the
                raw distribution, e.g. to compare with an engine's ``score``).
        Returns:
            float32 ``[B, T]`` aligned to input positions (``[:, 0] = 0``, positions at or after
            ``input_lengths`` are 0), on every rank; with ``with_entropy`` a tuple ``(logprobs, entropy)``.
        """
        for m in self.model:
            m.eval()
        mbs, stats = self._microbatches(batch)

        def loss_func(mb, output_tensor):
            lp, ent = self._logprobs_of(output_tensor, mb.data["input_ids"], with_entropy, temperature)
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
        self._from_last_stage(tensors=(lp, ent) if ent is not None else (lp,))  # every stage returns the result
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
        if "loss_mask" not in batch:
            raise PolicyError("train batch is missing 'loss_mask' ([B, T], 1 on generated tokens)")
        counts = Normalizer.local_counts(batch["loss_mask"]).to(self.device)
        if self.dp_size > 1:
            torch.distributed.all_reduce(counts, group=mpu.get_data_parallel_group())
        counts = counts.cpu()
        return Normalizer(float(counts[0]), float(counts[1]))

    def _reduce_over_dp(self, metrics: Dict[str, float]) -> Dict[str, float]:
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
        metrics = self._from_last_stage(self._reduce_over_dp(local) if store else None)
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
        clip = self.optim_cfg.clip_grad
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

    # ------------------------------------------------------------------ memory
    def _memory_tensors(self) -> Dict[str, List[torch.Tensor]]:
        groups = model_tensors(self.model)
        groups["optimizer"] = optimizer_tensors(self.optimizer)
        return groups

    def memory_bytes(self) -> Dict[str, int]:
        """Bytes held now by the parameters', gradients' and optimizer state's storages
        (``{"params", "grads", "optimizer"}``; a storage shared by several is counted once, under the first)."""
        out, seen = {}, set()
        for kind, tensors in self._memory_tensors().items():
            storages = [s for s in distinct_storages(tensors) if s.data_ptr() not in seen]
            seen.update(s.data_ptr() for s in storages)
            out[kind] = sum(s.nbytes() for s in storages)
        return out

    def offload(self, mode: str = "all") -> Dict[str, int]:
        """Free this rank's training memory for the colocated engines (:mod:`megatron_brrm.workers.offload`).

        Args:
            mode: ``all`` (optimizer state, gradients and parameters), ``optimizer`` (optimizer
                state and gradients; parameters stay) or ``none``.

        Returns:
            ``{"bytes_before", "bytes_after", "bytes_freed"}`` of the parameters', gradients' and
            optimizer state's storages.

        Raises:
            ValueError: an unknown mode. RuntimeError: already offloaded.
        """
        if mode not in OFFLOAD_MODES:
            raise ValueError(f"rollout.colocated_offload={mode!r}: expected one of {', '.join(OFFLOAD_MODES)}")
        before = sum(self.memory_bytes().values())
        freed = 0
        if mode != "none":
            groups = self._memory_tensors()
            keep = set() if mode == "all" else {s.data_ptr() for s in distinct_storages(groups["params"])}
            targets = groups["grads"] + [t for t in groups["optimizer"] if t.untyped_storage().data_ptr() not in keep]
            if mode == "all":
                targets += groups["params"]
            freed = self._offloader.offload(targets)
        return {"bytes_before": before, "bytes_after": sum(self.memory_bytes().values()), "bytes_freed": freed}

    def onload(self) -> int:
        """Undo :meth:`offload` (no-op when nothing is offloaded); returns the bytes restored."""
        return self._offloader.onload()

    # ----------------------------------------------------------------- weights
    def hf_state_dict(self) -> Dict[str, torch.Tensor]:
        """The current weights as full HF tensors on every rank (collective; small models / tests)."""
        return megatron_state_to_hf(self.model, self.mapping, vp_size=self.vp_size)
