"""The GRPO driver for BR-RM: ``python -m megatron_brrm.train --config model_configs/<recipe>.yaml [key=value ...]``.

One controller process runs the loop (DESIGN.md 3); the Megatron policy ranks are Ray actors
(:class:`~megatron_brrm.workers.policy_actor.PolicyActor`), the generation engine is an HF
engine in this process (CPU) or vLLM (GPU). Each step:

1. take ``grpo.num_prompts_per_step`` pairs (both orders are separate pairs in the training
   file) and roll out ``grpo.num_generations`` two-turn trajectories per pair;
2. rewards from the judge protocol; group-relative advantages per explicit group id;
3. old and reference logprobs (Megatron, forward only, vocab-parallel);
4. ``P * G / grpo.global_batch_size`` optimizer steps of the clipped PG + KL loss;
5. refit the new weights into the engine (bucketed HF-named tensors);
6. metrics (TensorBoard + ``metrics.jsonl``, trajectories in ``rollouts/step_N.jsonl``), validation every ``grpo.val_every_n_steps``
   steps, an atomic checkpoint every ``checkpoint.save_every_n_steps`` steps.

A run resumes from ``checkpoint.save_dir/latest`` when it exists (``--no-resume`` starts
over). The resolved config is written to ``logging.output_dir/config.yaml``. SIGUSR1 or
SIGTERM (SLURM's warning before a time limit or preemption) ends the run after the current
step with a checkpoint and exit code 3 (:mod:`megatron_brrm.preemption`); other exit codes:
0 finished, 2 bad config or inputs.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from megatron_brrm.config import ConfigError, RunConfig, config_to_dict, load_config, save_config
from megatron_brrm.data import PairLoader, read_pairs
from megatron_brrm.hub import resolve_hf_path
from megatron_brrm.judge import RewardRule, get_protocol
from megatron_brrm.metrics import MetricsLogger
from megatron_brrm.preemption import REQUEUE_EXIT_CODE, PreemptionHandler

log = logging.getLogger("megatron_brrm.train")


class TrainError(RuntimeError):
    """A run cannot start (bad paths or sizes); the message says which config key to fix."""


def _check_layout(cfg: RunConfig, shape, nodes: int = 1, gpus_per_node: int = 0):
    """The planner's layout rules (:func:`megatron_brrm.plan.layout.plan_layout`) as a TrainError.

    Called twice: before anything is loaded with one CPU replica (every rule that does not
    depend on the allocation), and with the Ray cluster's nodes and GPUs once it exists.
    """
    from megatron_brrm.plan.layout import LayoutError, plan_layout

    try:
        layout = plan_layout(cfg, shape, nodes=nodes, gpus_per_node=gpus_per_node)
    except LayoutError as exc:
        raise TrainError(f"{exc}\n(check a recipe before submitting it: python -m megatron_brrm.plan --config ...)") from None
    for warning in layout.warnings:
        log.warning("layout: %s", warning)
    return layout


def _check_sizes(cfg: RunConfig) -> int:
    g = cfg.grpo
    total = g.num_prompts_per_step * g.num_generations
    if g.global_batch_size < 1 or total % g.global_batch_size:
        raise TrainError(f"grpo.global_batch_size={g.global_batch_size} must divide grpo.num_prompts_per_step x "
                         f"grpo.num_generations = {total}")
    return total // g.global_batch_size


class GRPOTrainer:
    """Owns the cluster, the policy worker group, the engine, the data and the loop.

    Args:
        cfg: resolved :class:`~megatron_brrm.config.RunConfig`; ``model.hf_path`` must be an
            HF folder and ``data.train_path`` a JSONL of preference pairs.
        resume: resume from ``checkpoint.save_dir`` when a checkpoint exists.

    Raises:
        TrainError: missing model or data, or inconsistent batch sizes.
    """

    def __init__(self, cfg: RunConfig, resume: bool = True):
        from megatron_brrm.rl.loss import ClippedPGConfig
        from megatron_brrm.rollout.factory import make_engine
        from megatron_brrm.rollout.two_turn import RolloutParams
        from megatron_brrm.workers.cluster import Cluster
        from megatron_brrm.workers.policy import PGLoss
        from megatron_brrm.workers.policy_actor import PolicyActor
        from megatron_brrm.workers.worker_group import WorkerGroup

        self.optimizer_steps_per_rollout = _check_sizes(cfg)
        if cfg.model.hf_path == "tiny":
            raise TrainError("model.hf_path=tiny: the tiny CPU model is built by `python -m megatron_brrm.demo` "
                             "(or pass model.hf_path=<an HF folder>)")
        if not cfg.model.hf_path:
            raise TrainError("model.hf_path is unset: give an HF model folder or hub id")
        try:
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, hf_path=resolve_hf_path(cfg.model.hf_path)))
        except FileNotFoundError as exc:
            raise TrainError(f"model.hf_path: {exc}") from None
        self.cfg = cfg
        from megatron_brrm.plan.shapes import ShapeError, resolve_shape

        try:
            self.shape = resolve_shape(cfg.model)
        except ShapeError as exc:
            raise TrainError(str(exc)) from None
        _check_layout(cfg, self.shape)
        if not cfg.data.train_path or not Path(cfg.data.train_path).is_file():
            raise TrainError(f"data.train_path={cfg.data.train_path!r} does not exist; build it with "
                             "tools/preprocess_data.py")
        self.out = Path(cfg.logging.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.out)
        self.protocol = get_protocol(cfg.judge.protocol, cfg.judge.template_dir)
        r = cfg.judge.reward
        self.rule = RewardRule(correct=r.correct, wrong=r.wrong, malformed=r.malformed, strict_turn1=r.strict_turn1)
        self.loss_fn = PGLoss(ClippedPGConfig.from_grpo_config(cfg.grpo))
        self.params = RolloutParams.from_config(cfg.rollout, n=cfg.grpo.num_generations)

        log.info("loading engine (%s) from %s", cfg.rollout.engine, cfg.model.hf_path)
        self.engine = make_engine(cfg.rollout, cfg.model.hf_path)
        self.tokenizer = self.engine.tokenizer
        train_pairs = self._fit_prompts(read_pairs(cfg.data.train_path), "train")
        self.loader = PairLoader(train_pairs, cfg.grpo.num_prompts_per_step, seed=cfg.data.seed,
                                 shuffle=cfg.data.shuffle)
        self.val_pairs = []
        if cfg.data.val_path:
            self.val_pairs = self._fit_prompts(read_pairs(cfg.data.val_path), "val")[: cfg.grpo.val_num_pairs]

        self.cluster = Cluster.from_config(cfg)
        try:
            _check_layout(cfg, self.shape, nodes=self.cluster.num_nodes, gpus_per_node=self.cluster.gpus_per_node)
        except TrainError:
            self.cluster.shutdown()
            raise
        world = self.cluster.policy_world_size
        self.policy = WorkerGroup(self.cluster, PolicyActor, world, args=(cfg,), name="policy")
        self.metrics = MetricsLogger(self.out, tensorboard=cfg.logging.tensorboard,
                                     wandb_project=cfg.logging.wandb_project, config=config_to_dict(cfg),
                                     run_name=cfg.name)
        self.step = 0
        if resume and cfg.checkpoint.save_dir:
            extra = self.policy.run_all("load_checkpoint", cfg.checkpoint.save_dir)[0]
            if extra:
                self.step = int(extra["step"])
                self.loader.load_state_dict(extra["loader"])
                log.info("resumed from %s at step %d", cfg.checkpoint.save_dir, self.step)
                self.refit()

    # ------------------------------------------------------------------ data
    def _fit_prompts(self, pairs, split: str):
        """Drop pairs whose turn-1 prompt exceeds ``data.max_prompt_tokens`` (counted, logged)."""
        from megatron_brrm.rollout.chat import render_prompt_ids

        kept = [p for p in pairs if len(render_prompt_ids(
            self.tokenizer, self.protocol.turn1_messages(p.context, p.response1, p.response2))) <= self.cfg.data.max_prompt_tokens]
        if len(kept) < len(pairs):
            log.warning("%s: dropped %d of %d pairs whose turn-1 prompt exceeds data.max_prompt_tokens=%d",
                        split, len(pairs) - len(kept), len(pairs), self.cfg.data.max_prompt_tokens)
        if not kept:
            raise TrainError(f"{split}: no pair fits data.max_prompt_tokens={self.cfg.data.max_prompt_tokens}")
        return kept

    # ----------------------------------------------------------------- stages
    def refit(self) -> Dict[str, float]:
        from megatron_brrm.workers.refit_stream import refit_from_policy

        stats = refit_from_policy(self.policy, [self.engine], self.cfg.rollout.refit_bucket_size_mb * 2**20,
                                  transport=self.cfg.rollout.refit_transport)
        return {"refit/bytes": stats.num_bytes, "refit/buckets": stats.num_buckets, "refit/gb_per_s": stats.gb_per_s,
                "timing/refit": stats.seconds}

    def train_step(self) -> Dict[str, float]:
        """One GRPO step (rollout -> advantages -> logprobs -> optimizer steps -> refit)."""
        from megatron_brrm.rl.advantages import advantages_from_config
        from megatron_brrm.rollout.trajectory import rollout_metrics
        from megatron_brrm.rollout.two_turn import rollout
        from megatron_brrm.workers.batching import split_minibatches, trajectories_to_batch

        cfg, m = self.cfg, {}
        pairs = self.loader.next_batch()
        t0 = time.perf_counter()
        self.params.seed = cfg.rollout.seed + 1000 * self.step
        trajs = rollout(self.engine, self.protocol, pairs, self.params, self.rule,
                        group_offset=self.step * cfg.grpo.num_prompts_per_step)
        m["timing/generation"] = time.perf_counter() - t0
        gen_tokens = sum(t.num_generated for t in trajs)
        m["timing/generation_tokens_per_s"] = gen_tokens / max(m["timing/generation"], 1e-9)
        m.update({f"rollout/{k}": v for k, v in rollout_metrics(trajs).items()})
        self._dump_rollouts(trajs)

        rewards = torch.tensor([t.reward for t in trajs], dtype=torch.float32)
        adv = advantages_from_config(rewards, [t.group_id for t in trajs], cfg.grpo)
        m.update({f"advantages/{k}": v for k, v in adv.metrics.items()})
        batch = trajectories_to_batch(trajs, adv.advantages, pad_id=self.tokenizer.pad_token_id or 0)

        t0 = time.perf_counter()
        batch["old_logprobs"] = self.policy.run_all("get_logprobs", batch)[0]
        if cfg.grpo.kl_coef > 0:
            batch["ref_logprobs"] = self.policy.run_all("get_logprobs", batch, reference=True)[0]
        m["timing/logprobs"] = time.perf_counter() - t0
        total_tokens = int(batch["input_lengths"].sum())
        m["timing/logprobs_tokens_per_s"] = total_tokens * (2 if cfg.grpo.kl_coef > 0 else 1) / max(m["timing/logprobs"], 1e-9)

        t0 = time.perf_counter()
        sums: Dict[str, float] = defaultdict(float)
        minibatches = split_minibatches(batch, cfg.grpo.global_batch_size)
        skipped = 0
        for mb in minibatches:
            res = self.policy.run_all("train", mb, self.loss_fn)[0]
            skipped += int(res["skipped"])
            for k, v in res["metrics"].items():
                sums[k] += float(v) / len(minibatches)
        m["timing/train"] = time.perf_counter() - t0
        m["timing/train_tokens_per_s"] = total_tokens / max(m["timing/train"], 1e-9)
        m.update({f"train/{k}": v for k, v in sums.items()})
        m["train/skipped_steps"] = skipped
        m.update(self.refit())
        return m

    def _dump_rollouts(self, trajs) -> None:
        """Write this step's trajectories (texts, rewards, verdicts) to ``rollouts/step_N.jsonl``."""
        import json

        path = self.out / "rollouts" / f"step_{self.step + 1}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        keep = ("group_id", "sample_index", "pair_id", "label", "turn_texts", "turn_lengths", "finish_reasons",
                "reward", "verdict", "truncated")
        with path.open("w", encoding="utf-8") as f:
            for t in trajs:
                d = t.to_dict()
                f.write(json.dumps({k: d[k] for k in keep}, ensure_ascii=False) + "\n")

    def validate(self) -> Dict[str, float]:
        """Judge accuracy and format-error rate on the held-out pairs (one sample each)."""
        from megatron_brrm.rollout.trajectory import rollout_metrics
        from megatron_brrm.rollout.two_turn import RolloutParams, rollout

        if not self.val_pairs:
            return {}
        params = RolloutParams.from_config(self.cfg.rollout, n=1, seed=12345)
        trajs = rollout(self.engine, self.protocol, self.val_pairs, params, self.rule)
        return {f"validation/{k}": v for k, v in rollout_metrics(trajs).items()}

    def save(self) -> Optional[str]:
        c = self.cfg.checkpoint
        if not c.save_dir:
            return None
        extra = {"step": self.step, "loader": self.loader.state_dict()}
        return self.policy.run_all("save_checkpoint", c.save_dir, self.step, extra, c.keep_last_k)[0]

    # ------------------------------------------------------------------ loop
    def fit(self, should_stop: Optional[Callable[[], bool]] = None) -> Dict[str, float]:
        """Run until ``grpo.max_num_steps``; returns the last step's metrics.

        Args:
            should_stop: polled after every step (and once before the first); when it returns
                True the loop writes a checkpoint of the step just finished (unless that step
                already saved one) and returns early with ``self.stopped_early = True``
                (preemption: :mod:`megatron_brrm.preemption`).
        """
        from tqdm.auto import tqdm

        cfg, last = self.cfg, {}
        self.stopped_early = False
        if should_stop is not None and should_stop():
            self.stopped_early = True
            return last
        if self.step == 0 and self.val_pairs:
            last = self.validate()
            self.metrics.log(0, last)
            log.info("step 0 validation: %s", _fmt(last))
        bar = tqdm(total=cfg.grpo.max_num_steps, initial=self.step, desc="GRPO", unit="step", dynamic_ncols=True)
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
            bar.set_postfix(reward=f"{m.get('rollout/reward_mean', 0):.2f}", acc=f"{m.get('rollout/accuracy', 0):.2f}",
                            fmt_err=f"{m.get('rollout/format_error_rate', 0):.2f}")
            last = m
            if stop:
                self.stopped_early = True
                break
        bar.close()
        return last

    def close(self) -> None:
        """Stop the policy ranks (each tears down its process groups), the cluster and the logger."""
        self.cluster.shutdown()
        self.metrics.close()


def _fmt(m: Dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(m.items()) if isinstance(v, (int, float)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m megatron_brrm.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML recipe under model_configs/ (any subset of the config tree)")
    p.add_argument("--no-resume", action="store_true", help="start from the initial weights even if a checkpoint exists")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. grpo.num_generations=8 grpo.lr=1e-6")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGUSR1 (SLURM's warning before a time limit or preemption) and SIGTERM: finish the step,
    # checkpoint, exit with REQUEUE_EXIT_CODE. Installed again after Ray has started (ray.init
    # replaces the driver's SIGTERM handler).
    preemption = PreemptionHandler().install()
    try:
        cfg = load_config(args.config, args.overrides)
        trainer = GRPOTrainer(cfg, resume=not args.no_resume and cfg.checkpoint.resume)
    except (ConfigError, TrainError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    preemption.install()
    try:
        last = trainer.fit(should_stop=lambda: preemption.requested)
    finally:
        trainer.close()
        preemption.uninstall()
    if trainer.stopped_early:
        where = f"checkpoint in {cfg.checkpoint.save_dir}" if cfg.checkpoint.save_dir else \
            "no checkpoint (checkpoint.save_dir is unset: a requeued run starts over)"
        print(f"stopped by {preemption.received} after step {trainer.step}: {where}; exiting with code "
              f"{REQUEUE_EXIT_CODE} (requeue)", flush=True)
        return REQUEUE_EXIT_CODE
    print(f"GRPO finished at step {trainer.step}: {_fmt({k: v for k, v in last.items() if k.startswith(('rollout/', 'validation/'))})}")
    print(f"outputs: {trainer.out} (config.yaml, metrics.jsonl, tensorboard/)"
          + (f", checkpoints: {cfg.checkpoint.save_dir}" if cfg.checkpoint.save_dir else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
