"""The GRPO driver for BR-RM: ``python -m megatron_brrm.train --config model_configs/<recipe>.yaml [key=value ...]``.

One controller process runs the loop; it holds two facades and one function, nothing else of
the workers: :class:`~megatron_brrm.workers.policy_group.Policy` (the Megatron ranks),
:class:`~megatron_brrm.workers.fleet.GenerationFleet` (one engine actor per placement: HF on
CPU, vLLM where installed) and :func:`~megatron_brrm.workers.refit.refit`. Each step:

1. take ``grpo.num_prompts_per_step`` pairs (both orders are separate pairs in the training
   file); **prepare for generation** (colocated: the policy offloads ``rollout.colocated_offload``,
   the engines wake) and roll out ``grpo.num_generations`` two-turn trajectories per pair over the
   fleet; **finish generation** (the engines sleep, the policy onloads);
2. rewards from the judge protocol; group-relative advantages per explicit group id;
3. old and reference logprobs (Megatron, forward only, vocab-parallel), and the train / rollout
   mismatch (``train/token_mult_prob_error``, ``train/gen_kl_error``);
4. ``P * G / grpo.global_batch_size`` optimizer steps of the clipped PG + KL loss;
5. refit the new weights into every engine;
6. metrics (TensorBoard + ``metrics.jsonl``, trajectories in ``rollouts/step_N.jsonl``),
   validation every ``grpo.val_every_n_steps`` steps (through the same generation phases), an
   atomic checkpoint every ``checkpoint.save_every_n_steps`` steps.

The colocated order offload -> wake -> generate -> sleep -> onload -> train -> refit is recorded
each step in :attr:`GRPOTrainer.lifecycle`. A run resumes from ``checkpoint.save_dir/latest`` when
it exists (``--no-resume`` starts over); a run that fails (e.g. an engine dies) restarts from
there. The resolved config is written to ``logging.output_dir/config.yaml``. SIGUSR1 or
SIGTERM (SLURM's warning before a time limit or preemption) ends the run after the current
step with a checkpoint and exit code 3 (:mod:`megatron_brrm.preemption`); other exit codes:
0 finished, 1 a worker or engine failed (rerun to resume), 2 bad config or inputs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from megatron_brrm.config import (ConfigError, RunConfig, config_to_dict, load_config,
                                  optimizer_steps_per_rollout, save_config, validate_config)
from megatron_brrm.checkpoint.hf_io import HFCheckpointError, HFSafetensorsReader, read_hf_config
from megatron_brrm.data import DataError, PairLoader
from megatron_brrm.data.augment import both_orders
from megatron_brrm.data.sets import load_preference_data
from megatron_brrm.hub import resolve_hf_path
from megatron_brrm.judge import RewardRule, get_protocol
from megatron_brrm.metrics import MetricsLogger
from megatron_brrm.model.architectures import UnsupportedArchitectureError, get_arch_spec
from megatron_brrm.plan.layout import LayoutError, plan_layout
from megatron_brrm.plan.shapes import ShapeError, resolve_shape
from megatron_brrm.preemption import REQUEUE_EXIT_CODE, PreemptionHandler
from megatron_brrm.rl.advantages import advantages_from_config
from megatron_brrm.rl.loss import ClippedPGConfig, PGLoss
from megatron_brrm.rl.mismatch import generation_mismatch
from megatron_brrm.rollout.chat import render_prompt_ids
from megatron_brrm.rollout.refit import refit_check
from megatron_brrm.rollout.trajectory import rollout_metrics
from megatron_brrm.rollout.two_turn import RolloutParams, rollout
from megatron_brrm.workers.batching import sequences_to_batch, split_minibatches, trajectories_to_batch
from megatron_brrm.workers.runtime import Runtime, start_runtime
from megatron_brrm.workers.errors import WorkerError

log = logging.getLogger("megatron_brrm.train")


class TrainError(RuntimeError):
    """A run cannot start (bad paths or sizes); the message says which config key to fix."""


def _check_model_folder(path: str) -> None:
    """A local HF folder's architecture and safetensors headers, checked before anything starts
    (a truncated shard or an unsupported model would otherwise fail inside an actor, later).

    Raises:
        TrainError: naming the file and what is wrong with it.
    """
    if not Path(path).is_dir():
        return
    try:
        get_arch_spec(read_hf_config(path))
        HFSafetensorsReader(path)
    except (HFCheckpointError, UnsupportedArchitectureError, ValueError) as exc:
        raise TrainError(f"model.hf_path: {exc}") from None


def _check_layout(cfg: RunConfig, shape, nodes: int = 1, gpus_per_node: int = 0):
    """The planner's layout rules (:func:`megatron_brrm.plan.layout.plan_layout`) as a TrainError.

    Called twice: before anything is loaded with one CPU replica (every rule that does not
    depend on the allocation), and with the Ray cluster's nodes and GPUs once it exists.
    """
    try:
        layout = plan_layout(cfg, shape, nodes=nodes, gpus_per_node=gpus_per_node)
    except LayoutError as exc:
        raise TrainError(f"{exc}\n(check a recipe before submitting it: python -m megatron_brrm.plan --config ...)") from None
    for warning in layout.warnings:
        log.warning("layout: %s", warning)
    return layout


class GRPOTrainer:
    """Owns the cluster, the policy, the engine fleet, the data and the loop.

    The loop (steps, the colocated lifecycle, advantages, logprobs, optimizer steps, refit,
    validation, checkpoints, resume, metrics) is task-independent. What a task defines is in a few
    methods and class attributes, overridden by the policy driver
    (:class:`megatron_brrm.train_policy.PolicyTrainer`): :meth:`_resolve_model` (which model
    folders), :meth:`_load_data` (training items and validation sets), :meth:`_prompt_ids` (an
    item's prompt, for the length filter), :meth:`_start_task` / :meth:`_stop_task` (what runs
    beside the runtime), :meth:`_generate` (samples with their rewards: here two-turn judge
    trajectories rewarded by the judge protocol), :meth:`_sample_metrics`, :meth:`_pop_task_metrics`,
    ``ROLLOUT_KEYS`` (what ``rollouts/step_N.jsonl`` keeps) and ``PROGRESS`` (the progress bar).

    Args:
        cfg: resolved :class:`~megatron_brrm.config.RunConfig`; ``model.hf_path`` must be an
            HF folder; the data comes from ``data`` (:func:`load_grpo_data`).
        resume: resume from ``checkpoint.save_dir`` when a checkpoint exists.
        engine_factory: builds each fleet engine inside its actor (default: ``rollout.engine`` for
            the model; tests pass engines that fail on purpose).
        runtime: an already started :class:`~megatron_brrm.workers.runtime.Runtime` (policy,
            fleet, refit); default: :func:`~megatron_brrm.workers.runtime.start_runtime`.

    Raises:
        ConfigError: a key outside its choices or a broken cross-field rule.
        TrainError: missing model or data, or a layout the planner rejects.
        WorkerError: a policy rank or an engine failed to start.
    """

    DESC = "GRPO"  # the progress bar's label
    # what rollouts/step_N.jsonl keeps of each sample's to_dict()
    ROLLOUT_KEYS = ("group_id", "sample_index", "pair_id", "label", "turn_texts", "turn_lengths", "finish_reasons",
                    "reward", "verdict", "truncated")
    # (progress-bar label, metric key) shown after every step
    PROGRESS = (("reward", "rollout/reward_mean"), ("acc", "rollout/accuracy"), ("fmt_err", "rollout/format_error_rate"))

    def __init__(self, cfg: RunConfig, resume: bool = True,
                 engine_factory: Optional[Callable[[], object]] = None, runtime: Optional[Runtime] = None):
        validate_config(cfg, "the run's config")  # also for configs built in code, not loaded
        self.optimizer_steps_per_rollout = optimizer_steps_per_rollout(cfg)
        self.cfg = cfg = self._resolve_model(cfg)
        _check_model_folder(cfg.model.hf_path)
        try:
            self.shape = resolve_shape(cfg.model)
        except ShapeError as exc:
            raise TrainError(str(exc)) from None
        _check_layout(cfg, self.shape)
        train_items, val_sets = self._load_data(cfg)  # before any process starts: bad data stops the run here
        self.out = Path(cfg.logging.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.out)
        self.protocol = get_protocol(cfg.judge.protocol, cfg.judge.template_dir)
        r = cfg.judge.reward
        self.rule = RewardRule(correct=r.correct, wrong=r.wrong, malformed=r.malformed, strict_turn1=r.strict_turn1)
        self.loss_fn = PGLoss(ClippedPGConfig.from_grpo_config(cfg.grpo))
        self.params = RolloutParams.from_config(cfg.rollout, n=cfg.grpo.num_generations)
        self.colocated = bool(cfg.rollout.colocated)
        self.lifecycle: List[str] = []  # this step's phases, in order
        self._probe = None  # (sequences, trainer logprobs at T=1) awaiting the engines' side of a refit check

        if runtime is None:
            log.info("starting the policy ranks and the engine fleet (%s) on %s", cfg.rollout.engine, cfg.model.hf_path)
            runtime = start_runtime(cfg, engine_factory, lambda nodes, gpus: _check_layout(cfg, self.shape, nodes, gpus))
        self.runtime = runtime
        self.policy, self.fleet = runtime.policy, runtime.fleet
        try:
            self.tokenizer = self.fleet.tokenizer
            train_items = self._fit_prompts(train_items, "train")
            self.loader = PairLoader(train_items, cfg.grpo.num_prompts_per_step, seed=cfg.data.seed,
                                     shuffle=cfg.data.shuffle)
            self.val_sets = {name: self._fit_prompts(items, name)[: cfg.grpo.val_num_pairs]
                             for name, items in val_sets.items() if items}
            self._start_task()
        except BaseException:
            try:
                self._stop_task()
            finally:
                runtime.shutdown()
            raise
        self.metrics = MetricsLogger(self.out, tensorboard=cfg.logging.tensorboard,
                                     wandb_project=cfg.logging.wandb_project, config=config_to_dict(cfg),
                                     run_name=cfg.name)
        self.step = 0
        if resume and cfg.checkpoint.save_dir:
            extra = self.policy.load_checkpoint(cfg.checkpoint.save_dir)
            if extra:
                self.step = int(extra["step"])
                self.loader.load_state_dict(extra["loader"])
                log.info("resumed from %s at step %d", cfg.checkpoint.save_dir, self.step)
                self.refit()

    # ------------------------------------------------------------------ task
    def _resolve_model(self, cfg: RunConfig) -> RunConfig:
        """``cfg`` with ``model.hf_path`` resolved to a local folder (hub ids downloaded).

        Raises:
            TrainError: unset, ``tiny`` (built by the demo, not here) or not found.
        """
        if cfg.model.hf_path == "tiny":
            raise TrainError("model.hf_path=tiny: the tiny CPU model is built by `python -m megatron_brrm.demo` "
                             "(or pass model.hf_path=<an HF folder>)")
        if not cfg.model.hf_path:
            raise TrainError("model.hf_path is unset: give an HF model folder or hub id")
        try:
            return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, hf_path=resolve_hf_path(cfg.model.hf_path)))
        except FileNotFoundError as exc:
            raise TrainError(f"model.hf_path: {exc}") from None

    def _load_data(self, cfg: RunConfig) -> Tuple[List, Dict[str, List]]:
        """The training items (one GRPO group each) and the validation sets ``{name: items}``: here
        preference pairs (:func:`load_grpo_data`)."""
        return load_grpo_data(cfg)

    def _prompt_ids(self, item) -> List[int]:
        """The token ids an item's first generation starts from: here the judge's turn-1 prompt."""
        return render_prompt_ids(self.tokenizer, self.protocol.turn1_messages(item.context, item.response1, item.response2))

    def _start_task(self) -> None:
        """Start what the task runs beside the runtime (called once the runtime is up); here nothing."""

    def _stop_task(self) -> None:
        """Stop what :meth:`_start_task` started (idempotent); here nothing."""

    def _generate(self, items, params: RolloutParams, group_offset: int = 0) -> List:
        """``params.n`` rewarded samples per item, item-major, between the generation phases' bounds.

        A sample has ``group_id``, ``token_ids``, ``loss_mask``, ``rollout_logprobs`` (lists of one
        length), ``num_generated``, ``reward`` (float) and ``to_dict()``. Here: two-turn judge
        trajectories (:func:`~megatron_brrm.rollout.two_turn.rollout`) rewarded by ``judge.reward``.
        """
        self.lifecycle.append("generate")
        return rollout(self.fleet, self.protocol, items, params, self.rule, group_offset=group_offset)

    def _sample_metrics(self, samples) -> Dict[str, float]:
        """Batch metrics of samples (unprefixed; logged under ``rollout/`` and ``validation*/``)."""
        return rollout_metrics(samples)

    def _pop_task_metrics(self) -> Dict[str, float]:
        """Metrics the task accumulated since the last call, with their prefix; here none."""
        return {}

    # ------------------------------------------------------------------ data
    def _fit_prompts(self, items, split: str):
        """Drop examples whose prompt (:meth:`_prompt_ids`) exceeds ``data.max_prompt_tokens`` (counted, logged).

        Raises:
            TrainError: none fits.
        """
        limit = self.cfg.data.max_prompt_tokens
        kept = [p for p in items if len(self._prompt_ids(p)) <= limit]
        if len(kept) < len(items):
            log.warning("%s: dropped %d of %d examples whose prompt exceeds data.max_prompt_tokens=%d",
                        split, len(items) - len(kept), len(items), limit)
        if not kept:
            raise TrainError(f"{split}: no prompt fits data.max_prompt_tokens={limit} tokens")
        return kept

    # ------------------------------------------------------------ lifecycle
    def prepare_for_generation(self) -> Dict[str, float]:
        """Colocated: the policy frees ``rollout.colocated_offload`` (optimizer state, gradients,
        parameters) and the engines wake; split: nothing to do. Returns offload metrics."""
        m: Dict[str, float] = {}
        if self.colocated:
            freed = self.policy.offload(self.cfg.rollout.colocated_offload)
            self.lifecycle.append("offload")
            m = {"memory/policy_bytes_before_offload": freed["bytes_before"],
                 "memory/policy_bytes_offloaded": freed["bytes_freed"]}
            self.fleet.wake()
            self.lifecycle.append("wake")
        return m

    def finish_generation(self) -> None:
        """Colocated: the engines sleep (release their memory where they can) and the policy onloads."""
        if self.colocated:
            self.fleet.sleep()
            self.lifecycle.append("sleep")
            self.policy.onload()
            self.lifecycle.append("onload")

    # ----------------------------------------------------------------- stages
    def refit(self) -> Dict[str, float]:
        """Refit every engine with the policy's weights (the engines' weights are woken first)."""
        if self.colocated:
            self.fleet.wake(["weights"])
        stats = self.runtime.refit()
        self.lifecycle.append("refit")
        return {"refit/bytes": stats.num_bytes, "refit/buckets": stats.num_buckets, "refit/gb_per_s": stats.gb_per_s,
                "timing/refit": stats.seconds}

    def _probe_trainer_side(self, trajs) -> None:
        """``rollout.refit_check``: keep a few of this step's sequences and the trainer's logprobs of
        them (temperature 1) after the update; the engines score them in the next generation phase."""
        seqs = [t.token_ids for t in trajs[: min(4, len(trajs))]]
        batch = sequences_to_batch(seqs, [[1] * len(s) for s in seqs], pad_id=self.tokenizer.pad_token_id or 0)
        lp = self.policy.get_logprobs(batch, temperature=1.0)
        self._probe = (seqs, [lp[i, :len(s)].tolist() for i, s in enumerate(seqs)])

    def _probe_engine_side(self) -> Dict[str, float]:
        if self._probe is None:
            return {}
        seqs, trainer = self._probe
        self._probe = None
        engine = self.fleet.score(seqs)
        chk = refit_check(engine, trainer, [[0] + [1] * (len(s) - 1) for s in seqs])
        if chk.mismatch > 1.05:
            log.warning("refit check: engine and trainer logprobs disagree (max |diff| %.3g, mean exp|diff| %.4f): "
                        "a refit or model-mapping bug", chk.max_abs_diff, chk.mismatch)
        return {"refit/check_max_abs_logprob_diff": chk.max_abs_diff, "refit/check_token_mult_prob_error": chk.mismatch}

    def train_step(self) -> Dict[str, float]:
        """One GRPO step (generation phase -> advantages -> logprobs -> optimizer steps -> refit)."""
        cfg, m = self.cfg, {}
        self.lifecycle = []
        pairs = self.loader.next_batch()
        t0 = time.perf_counter()
        m.update(self.prepare_for_generation())
        m.update(self._probe_engine_side())
        self.params.seed = cfg.rollout.seed + 1000 * self.step
        try:
            trajs = self._generate(pairs, self.params, group_offset=self.step * cfg.grpo.num_prompts_per_step)
        finally:
            self.finish_generation()
        m["timing/generation"] = time.perf_counter() - t0
        gen_tokens = sum(t.num_generated for t in trajs)
        m["timing/generation_tokens_per_s"] = gen_tokens / max(m["timing/generation"], 1e-9)
        m.update({f"rollout/{k}": v for k, v in self._sample_metrics(trajs).items()})
        m.update({f"rollout/{k}": v for k, v in self.fleet.pop_metrics().items()})
        m.update(self._pop_task_metrics())
        self._dump_rollouts(trajs)

        rewards = torch.tensor([t.reward for t in trajs], dtype=torch.float32)
        adv = advantages_from_config(rewards, [t.group_id for t in trajs], cfg.grpo)
        m.update({f"advantages/{k}": v for k, v in adv.metrics.items()})
        batch = trajectories_to_batch(trajs, adv.advantages, pad_id=self.tokenizer.pad_token_id or 0)

        t0 = time.perf_counter()
        batch["old_logprobs"] = self.policy.get_logprobs(batch)
        if cfg.grpo.kl_coef > 0:
            batch["ref_logprobs"] = self.policy.get_logprobs(batch, reference=True)
        self.lifecycle.append("logprobs")
        m["timing/logprobs"] = time.perf_counter() - t0
        total_tokens = int(batch["input_lengths"].sum())
        m["timing/logprobs_tokens_per_s"] = total_tokens * (2 if cfg.grpo.kl_coef > 0 else 1) / max(m["timing/logprobs"], 1e-9)
        m.update({f"train/{k}": v for k, v in generation_mismatch(batch["old_logprobs"], batch["rollout_logprobs"],
                                                                   batch["loss_mask"]).items()})

        t0 = time.perf_counter()
        sums: Dict[str, float] = defaultdict(float)
        minibatches = split_minibatches(batch, cfg.grpo.global_batch_size)
        skipped = 0
        for mb in minibatches:
            res = self.policy.train(mb, self.loss_fn)
            skipped += int(res.skipped)
            for k, v in res.metrics.items():
                sums[k] += float(v) / len(minibatches)
        self.lifecycle.append("train")
        m["timing/train"] = time.perf_counter() - t0
        m["timing/train_tokens_per_s"] = total_tokens / max(m["timing/train"], 1e-9)
        m.update({f"train/{k}": v for k, v in sums.items()})
        m["train/skipped_steps"] = skipped
        m.update(self.refit())
        if cfg.rollout.refit_check:
            self._probe_trainer_side(trajs)
        return m

    def _dump_rollouts(self, trajs) -> None:
        """Write this step's samples (``ROLLOUT_KEYS``: texts, rewards, verdicts) to ``rollouts/step_N.jsonl``."""
        path = self.out / "rollouts" / f"step_{self.step + 1}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for t in trajs:
                d = t.to_dict()
                f.write(json.dumps({k: d[k] for k in self.ROLLOUT_KEYS}, ensure_ascii=False) + "\n")

    @property
    def val_pairs(self) -> List:
        """Every held-out pair of every validation set (empty: no validation)."""
        return [p for pairs in self.val_sets.values() for p in pairs]

    def validate(self) -> Dict[str, float]:
        """Judge accuracy and format-error rate on each validation set (one sample per pair, fixed
        seed), through the same generation phases as training. Keys: ``validation/<metric>`` for
        ``data.val_path``'s set (named ``val``), ``validation-<name>/<metric>`` for the named sets
        of ``data.val_data_paths``."""
        if not self.val_sets:
            return {}
        params = RolloutParams.from_config(self.cfg.rollout, n=1, seed=12345)
        names = list(self.val_sets)
        self.prepare_for_generation()
        try:  # one generation call for every set: the engines see one batch
            trajs = self._generate([p for n in names for p in self.val_sets[n]], params)
        finally:
            self.finish_generation()
        self.fleet.pop_metrics()
        self._pop_task_metrics()  # the next step's task metrics count training only
        out, start = {}, 0
        for name in names:
            part, start = trajs[start:start + len(self.val_sets[name])], start + len(self.val_sets[name])
            prefix = "validation" if name == "val" else f"validation-{name}"
            out.update({f"{prefix}/{k}": v for k, v in self._sample_metrics(part).items()})
        return out

    def save(self) -> Optional[str]:
        c = self.cfg.checkpoint
        if not c.save_dir:
            return None
        extra = {"step": self.step, "loader": self.loader.state_dict()}
        return self.policy.save_checkpoint(c.save_dir, self.step, extra, c.keep_last_k)

    # ------------------------------------------------------------------ loop
    def fit(self, should_stop: Optional[Callable[[], bool]] = None) -> Dict[str, float]:
        """Run until ``grpo.max_num_steps``; returns the last step's metrics.

        Args:
            should_stop: polled after every step (and once before the first); when it returns
                True the loop writes a checkpoint of the step just finished (unless that step
                already saved one) and returns early with ``self.stopped_early = True``
                (preemption: :mod:`megatron_brrm.preemption`).

        Raises:
            WorkerError: a policy rank or an engine failed (named); restart to resume from the
                last checkpoint.
        """
        cfg, last = self.cfg, {}
        self.stopped_early = False
        if should_stop is not None and should_stop():
            self.stopped_early = True
            return last
        if self.step == 0 and self.val_pairs:
            last = self.validate()
            self.metrics.log(0, last)
            log.info("step 0 validation: %s", _fmt(last))
        bar = tqdm(total=cfg.grpo.max_num_steps, initial=self.step, desc=self.DESC, unit="step", dynamic_ncols=True)
        while self.step < cfg.grpo.max_num_steps:
            t0 = time.perf_counter()
            m = self.train_step()
            self.step += 1
            if self.val_pairs and self.step % cfg.grpo.val_every_n_steps == 0:
                m.update(self.validate())
            stop = should_stop is not None and should_stop()
            if cfg.checkpoint.save_dir and (self.step % cfg.checkpoint.save_every_n_steps == 0
                                            or self.step == cfg.grpo.max_num_steps or stop):
                t1 = time.perf_counter()
                self.save()
                m["timing/checkpoint"] = time.perf_counter() - t1
            m["timing/step"] = time.perf_counter() - t0
            self.metrics.log(self.step, m)
            bar.update(1)
            bar.set_postfix({label: f"{m.get(key, 0):.2f}" for label, key in self.PROGRESS})
            last = m
            if stop:
                self.stopped_early = True
                break
        bar.close()
        return last

    def close(self) -> None:
        """Stop what the task started, the engines (their engine processes first), the policy ranks
        (each tears down its process groups), the cluster and the logger."""
        try:
            self._stop_task()
        finally:
            try:
                self.runtime.shutdown()
            finally:
                self.metrics.close()


def load_grpo_data(cfg: RunConfig) -> Tuple[List, Dict[str, List]]:
    """The GRPO training pairs (both orders of every pair) and the validation sets ``{name: pairs}``.

    ``data.train_path`` (``tools/preprocess_data.py`` output, which already holds both orders)
    or any form of :func:`megatron_brrm.data.sets.load_preference_data` (``data.train_data_path``,
    hub names, ``custom_cls``; both orders added here). Validation: ``data.val_path`` (the set
    ``val``) or the named ``data.val_data_paths``.

    Raises:
        TrainError: no training data, a missing file, or bad data (names the file, line and field).
    """
    if cfg.data.train_path and not Path(cfg.data.train_path).is_file():
        raise TrainError(f"data.train_path={cfg.data.train_path!r} does not exist; build it with "
                         "tools/preprocess_data.py")
    try:
        data = load_preference_data(cfg.data)
    except DataError as exc:
        raise TrainError(str(exc)) from None
    train = data.train if cfg.data.train_path else both_orders(data.train)
    return train, data.validation


def _fmt(m: Dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(m.items()) if isinstance(v, (int, float)))


def build_parser(prog: str = "python -m megatron_brrm.train", description: str = __doc__) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML recipe under model_configs/ (any subset of the config tree)")
    p.add_argument("--no-resume", action="store_true", help="start from the initial weights even if a checkpoint exists")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. grpo.num_generations=8 grpo.optimizer.lr=1e-6")
    return p


def run_cli(trainer_cls, argv: Optional[Sequence[str]] = None, prog: str = "python -m megatron_brrm.train",
            description: str = __doc__, summary: Optional[Callable] = None) -> int:
    """The command line of a GRPO driver: config, trainer, loop, preemption, exit codes (module docstring).

    Args:
        trainer_cls: :class:`GRPOTrainer` or a subclass (called as ``trainer_cls(cfg, resume=...)``).
        summary: ``summary(trainer, last_metrics) -> str`` printed when the run finishes (default: the
            last step's ``rollout/`` and ``validation/`` figures).

    Returns:
        0 finished, 1 a worker failed during the run, 2 bad config or inputs (also found during the run:
        a ``TrainError`` from the loop), 3 stopped by a signal.
    """
    args = build_parser(prog, description).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGUSR1 (SLURM's warning before a time limit or preemption) and SIGTERM: finish the step,
    # checkpoint, exit with REQUEUE_EXIT_CODE. Installed again after Ray has started (ray.init
    # replaces the driver's SIGTERM handler).
    preemption = PreemptionHandler().install()
    try:
        cfg = load_config(args.config, args.overrides)
        trainer = trainer_cls(cfg, resume=not args.no_resume and cfg.checkpoint.resume)
    except (ConfigError, TrainError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except WorkerError as exc:  # a rank or an engine failed to start: one line here, the details in the log
        log.error("%s", exc)
        print(f"error: {str(exc).splitlines()[0]} (details above)", file=sys.stderr)
        return 2
    preemption.install()
    try:
        last = trainer.fit(should_stop=lambda: preemption.requested)
    except TrainError as exc:  # bad input found during the run (e.g. an environment's output): one line
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except WorkerError as exc:
        log.error("%s", exc)
        print(f"error: {str(exc).splitlines()[0]} (details above); rerun the same command to resume from "
              f"{cfg.checkpoint.save_dir or 'the start (no checkpoint.save_dir)'}", file=sys.stderr)
        return 1
    finally:
        trainer.close()
        preemption.uninstall()
    if trainer.stopped_early:
        where = f"checkpoint in {cfg.checkpoint.save_dir}" if cfg.checkpoint.save_dir else \
            "no checkpoint (checkpoint.save_dir is unset: a requeued run starts over)"
        print(f"stopped by {preemption.received} after step {trainer.step}: {where}; exiting with code "
              f"{REQUEUE_EXIT_CODE} (requeue)", flush=True)
        return REQUEUE_EXIT_CODE
    if summary is None:
        print(f"{trainer.DESC} finished at step {trainer.step}: "
              f"{_fmt({k: v for k, v in last.items() if k.startswith(('rollout/', 'validation/'))})}")
    else:
        print(summary(trainer, last))
    print(f"outputs: {trainer.out} (config.yaml, metrics.jsonl, rollouts/, tensorboard/)"
          + (f", checkpoints: {cfg.checkpoint.save_dir}" if cfg.checkpoint.save_dir else ""))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(GRPOTrainer, argv)


if __name__ == "__main__":
    sys.exit(main())
