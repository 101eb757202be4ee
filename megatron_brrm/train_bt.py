"""Bradley-Terry reward-model training: ``python -m megatron_brrm.train_bt --config model_configs/bt_<recipe>.yaml [key=value ...]``.

The scalar baseline of BR-RM and the reward of policy RLHF, on the same Megatron stack: a GPT
backbone with a scalar reward head (:mod:`megatron_brrm.model.reward_head`), trained on
preference pairs with ``-log sigmoid(r_chosen - r_rejected - margin) + center_coef *
(r_chosen + r_rejected)^2`` (:func:`megatron_brrm.rl.loss.bradley_terry_loss`). One controller
process runs the loop; the Megatron ranks are Ray actors
(:class:`~megatron_brrm.workers.reward_actor.RewardActor`) with TP / PP / DP, the distributed
optimizer, checkpoints and resume of the policy worker. Each step:

1. take ``bt.global_batch_size`` pairs; render ``context + chosen`` and ``context + rejected``
   with the chat template (:func:`megatron_brrm.rollout.scalar.scored_ids`), interleaved so both
   sequences of a pair share a micro-batch; the reward is read at each sequence's last token;
2. one optimizer step; metrics ``train/loss``, ``train/accuracy``, ``train/reward_margin``,
   ``train/reward_mean``, ``train/reward_std`` (and the chosen / rejected means, grad norm, lr);
3. every ``bt.val_every_n_steps`` steps, each named validation set is scored (forward only) and
   its metrics go under ``validation-<name>/``;
4. an atomic checkpoint every ``checkpoint.save_every_n_steps`` steps and at the end.

Data (``data.*``, the form every trainer shares, :mod:`megatron_brrm.data.sets`):
``train_data_path`` and named ``val_data_paths`` (NeMo-RL ``PreferenceDataset`` /
``BinaryPreferenceDataset``, verl chosen/rejected conversations, nested HelpSteer3, this
project's pairs JSONL or source adapters, or a ``custom_cls``). Pairs longer than
``bt.max_length`` tokens (either side) are dropped and counted; a swapped copy of a pair
(``:swap`` ids of ``tools/preprocess_data.py`` output) is the same BT example and is dropped.

At the end the last checkpoint is converted to an HF ``*ForSequenceClassification`` folder
(``bt.output_hf_dir``, default ``<logging.output_dir>/hf``) with ``tools/convert_megatron_to_hf.py``'s
converter; ``AutoModelForSequenceClassification``, ``evaluation/run.py --engine scalar`` and
``megatron_brrm.api.RewardModel`` load it. A run resumes from ``checkpoint.save_dir/latest``
(default ``<logging.output_dir>/checkpoints``) when it exists (``--no-resume`` starts over).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from megatron_brrm.checkpoint.dcp_io import DistCheckpointError, read_tensor_metadata
from megatron_brrm.checkpoint.model_export import convert_megatron_to_hf, detect_head
from megatron_brrm.checkpoint.train_ckpt import latest_checkpoint
from megatron_brrm.config import ConfigError, RunConfig, config_to_dict, load_config, save_config
from megatron_brrm.data import DataError, PairLoader, PreferencePair
from megatron_brrm.data.augment import SWAP_SUFFIX, base_id
from megatron_brrm.data.sets import load_preference_data
from megatron_brrm.hub import resolve_hf_path
from megatron_brrm.metrics import MetricsLogger
from megatron_brrm.model.build import load_hf_config
from megatron_brrm.model.tiny import tiny_model_from_config
from megatron_brrm.rl.loss import bradley_terry_loss, reward_std
from megatron_brrm.rollout.scalar import scored_ids
from megatron_brrm.workers.reward_actor import RewardActor

log = logging.getLogger("megatron_brrm.train_bt")

Tokenized = Tuple[List[int], List[int]]  # (chosen ids, rejected ids)


class TrainError(RuntimeError):
    """A run cannot start (bad paths or sizes); the message names the config key to fix."""


def distinct_pairs(pairs: Sequence[PreferencePair]) -> List[PreferencePair]:
    """``pairs`` without swapped copies of pairs that are also present (``<id>:swap`` next to ``<id>``):
    a Bradley-Terry example has no order, so a swapped copy would count the pair twice."""
    ids = {p.id for p in pairs}
    return [p for p in pairs if not (p.id.endswith(SWAP_SUFFIX) and base_id(p.id) in ids)]


def tokenize_pairs(tokenizer, pairs: Sequence[PreferencePair], max_length: int) -> Tuple[List[Tokenized], int]:
    """``[(chosen ids, rejected ids)]`` of the pairs that fit ``max_length`` tokens, and how many did not."""
    out, dropped = [], 0
    for p in pairs:
        chosen, rejected = (p.response1, p.response2) if p.preference == 1 else (p.response2, p.response1)
        c, r = scored_ids(tokenizer, p.context, chosen), scored_ids(tokenizer, p.context, rejected)
        if max(len(c), len(r)) > max_length:
            dropped += 1
            continue
        out.append((c, r))
    return out, dropped


def check_reward_checkpoint(megatron_path: str, hf_path: str) -> None:
    """Raise TrainError unless ``model.megatron_path`` holds a reward model (a one-row ``output_layer``):
    a causal LM's Megatron checkpoint cannot be loaded into the reward model."""
    try:
        meta = read_tensor_metadata(Path(megatron_path))
    except (DistCheckpointError, OSError, ValueError) as exc:
        raise TrainError(f"model.megatron_path={megatron_path}: {exc}") from None
    if detect_head(meta, "", load_hf_config(hf_path)) != "scalar":
        raise TrainError(f"model.megatron_path={megatron_path} holds a causal LM (a vocabulary output layer), not a "
                         "reward model: unset it to start from model.hf_path, or convert a *ForSequenceClassification "
                         "folder with tools/convert_hf_to_megatron.py")


def check_sizes(cfg: RunConfig, dp_size: int) -> None:
    """Raise TrainError for batch sizes the data-parallel layout cannot split into whole pairs."""
    b = cfg.bt
    if b.global_batch_size < 1 or b.micro_batch_size < 1:
        raise TrainError("bt.global_batch_size and bt.micro_batch_size must be >= 1")
    if b.global_batch_size % dp_size:
        raise TrainError(f"bt.global_batch_size={b.global_batch_size} pairs must be a multiple of the data-parallel "
                         f"size {dp_size}")
    if b.max_length < 2:
        raise TrainError(f"bt.max_length={b.max_length} must be >= 2 tokens")


def validation_metrics(rewards: torch.Tensor, margin: float, center_coef: float) -> Dict[str, float]:
    """Metrics of one validation set from the rewards of its interleaved pairs (float ``[2P]``):
    ``loss`` (the training loss), ``accuracy`` (``r_c > r_r``), ``reward_margin``, ``chosen_reward``,
    ``rejected_reward``, ``reward_mean``, ``reward_std`` (population std of all ``2P`` rewards), ``num_pairs``."""
    rc, rr = rewards[0::2].double(), rewards[1::2].double()
    _, m = bradley_terry_loss(rc, rr, rc.numel(), margin=margin if margin else None, center_coef=center_coef)
    out = {k: float(v) for k, v in m.items() if k not in ("reward_sq_mean", "bt_loss", "center_loss")}
    out["reward_std"] = reward_std({k: float(v) for k, v in m.items()})
    return out


class BTTrainer:
    """Owns the cluster, the reward-model worker group, the data and the loop (module docstring).

    Args:
        cfg: resolved :class:`~megatron_brrm.config.RunConfig`.
        resume: resume from ``checkpoint.save_dir`` when a checkpoint exists.

    Raises:
        TrainError: missing model, bad sizes, no pair fits ``bt.max_length``.
        DataError: bad data (names file, line and field).
    """

    def __init__(self, cfg: RunConfig, resume: bool = True):
        from transformers import AutoTokenizer  # lazy: keeps train_bt --help fast

        if not cfg.model.hf_path:
            raise TrainError("model.hf_path is unset: give an HF causal LM or *ForSequenceClassification folder "
                             "(or hub id), or 'tiny' for the tiny CPU model")
        out = Path(cfg.logging.output_dir)
        if cfg.model.hf_path == "tiny":  # the CPU recipe: a tiny random Qwen3 built locally (model.tiny_*)
            hf_path = str(tiny_model_from_config(cfg.model, out / "tiny_hf", seed=cfg.parallel.seed))
        else:
            try:
                hf_path = resolve_hf_path(cfg.model.hf_path)
            except FileNotFoundError as exc:
                raise TrainError(f"model.hf_path: {exc}") from None
        if cfg.model.megatron_path:
            check_reward_checkpoint(cfg.model.megatron_path, hf_path)
        ckpt = dataclasses.replace(cfg.checkpoint, save_dir=cfg.checkpoint.save_dir or str(out / "checkpoints"))
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, hf_path=hf_path), checkpoint=ckpt)
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.tokenizer = AutoTokenizer.from_pretrained(hf_path)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else \
            (self.tokenizer.eos_token_id or 0)
        data = load_preference_data(cfg.data)
        train_pairs = distinct_pairs(data.train)
        self.train_data, dropped = tokenize_pairs(self.tokenizer, train_pairs, cfg.bt.max_length)
        self.data_counts = {"train_pairs": len(self.train_data), "train_dropped_too_long": dropped}
        if dropped:
            log.warning("train: dropped %d of %d pairs longer than bt.max_length=%d tokens", dropped, len(train_pairs),
                        cfg.bt.max_length)
        if not self.train_data:
            raise TrainError(f"train: no pair fits bt.max_length={cfg.bt.max_length} tokens")
        self.val_data: Dict[str, List[Tokenized]] = {}
        for name, pairs in data.validation.items():
            tokenized, dropped = tokenize_pairs(self.tokenizer, pairs, cfg.bt.max_length)
            self.data_counts.update({f"val_pairs/{name}": len(tokenized), f"val_dropped_too_long/{name}": dropped})
            if dropped:
                log.warning("validation %s: dropped %d of %d pairs longer than bt.max_length", name, dropped, len(pairs))
            if tokenized:
                self.val_data[name] = tokenized
            else:
                log.warning("validation %s: no pair fits bt.max_length=%d; the set is not evaluated", name,
                            cfg.bt.max_length)
        if cfg.bt.num_epochs is not None:
            steps = math.ceil(cfg.bt.num_epochs * len(self.train_data) / cfg.bt.global_batch_size)
            cfg = dataclasses.replace(cfg, bt=dataclasses.replace(cfg.bt, max_num_steps=min(cfg.bt.max_num_steps, steps)))
        self.cfg = cfg
        save_config(cfg, out)
        self.loader = PairLoader(list(range(len(self.train_data))), cfg.bt.global_batch_size, seed=cfg.data.seed,
                                 shuffle=cfg.data.shuffle)
        from megatron_brrm.workers.cluster import Cluster  # lazy: keeps train_bt --help fast
        from megatron_brrm.workers.reward_worker import BTLoss  # lazy: keeps train_bt --help fast
        from megatron_brrm.workers.worker_group import WorkerGroup  # lazy: keeps train_bt --help fast

        self.loss_fn = BTLoss(cfg.bt.margin, cfg.bt.center_coef)
        self.cluster = Cluster.from_config(cfg, policy_world_size=cfg.bt.world_size)
        self.metrics = None
        self.step = 0
        try:
            check_sizes(cfg, self.cluster.dp_size)
            self.group = WorkerGroup(self.cluster, RewardActor, self.cluster.policy_world_size, args=(cfg,),
                                     name="reward_model")
            self.metrics = MetricsLogger(out, tensorboard=cfg.logging.tensorboard,
                                         wandb_project=cfg.logging.wandb_project, config=config_to_dict(cfg),
                                         run_name=cfg.name)
            if resume and cfg.checkpoint.resume:
                extra = self.group.run_all("load_checkpoint", cfg.checkpoint.save_dir)[0]
                if extra:
                    self.step = int(extra["step"])
                    self.loader.load_state_dict(extra["loader"])
                    log.info("resumed from %s at step %d", cfg.checkpoint.save_dir, self.step)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ steps
    def _batch(self, pairs: Sequence[Tokenized]):
        from megatron_brrm.workers.reward_worker import bt_batch  # lazy: keeps train_bt --help fast

        return bt_batch([c for c, _ in pairs], [r for _, r in pairs], self.pad_id)

    def train_step(self) -> Dict[str, float]:
        """One optimizer step on the next ``bt.global_batch_size`` pairs."""
        t0 = time.perf_counter()
        batch = self._batch([self.train_data[i] for i in self.loader.next_batch()])
        res = self.group.run_all("train", batch, self.loss_fn)[0]
        m = {f"train/{k}": float(v) for k, v in res["metrics"].items() if k != "reward_sq_mean"}
        m["train/reward_std"] = reward_std(res["metrics"])
        m["train/skipped"] = float(res["skipped"])
        m["timing/train"] = time.perf_counter() - t0
        m["timing/train_tokens_per_s"] = float(batch["input_lengths"].sum()) / max(m["timing/train"], 1e-9)
        return m

    def rewards(self, pairs: Sequence[Tokenized]) -> torch.Tensor:
        """Rewards ``[2P]`` (interleaved chosen, rejected) of ``pairs``, ``bt.val_batch_size`` pairs per call."""
        out = []
        dp = self.cluster.dp_size
        for s in range(0, len(pairs), self.cfg.bt.val_batch_size):
            chunk = list(pairs[s:s + self.cfg.bt.val_batch_size])
            n = len(chunk)
            while len(chunk) % dp:  # every DP rank scores the same number of rows; the copies are dropped
                chunk.append(chunk[0])
            out.append(self.group.run_all("get_rewards", self._batch(chunk))[0][: 2 * n])
        return torch.cat(out)

    def validate(self) -> Dict[str, float]:
        """Metrics of every named validation set, under ``validation-<name>/``."""
        m: Dict[str, float] = {}
        for name, pairs in self.val_data.items():
            t0 = time.perf_counter()
            for k, v in validation_metrics(self.rewards(pairs), self.cfg.bt.margin, self.cfg.bt.center_coef).items():
                m[f"validation-{name}/{k}"] = v
            m[f"timing/validation-{name}"] = time.perf_counter() - t0
        return m

    def save(self) -> str:
        c = self.cfg.checkpoint
        extra = {"step": self.step, "loader": self.loader.state_dict()}
        return self.group.run_all("save_checkpoint", c.save_dir, extra, c.keep_last_k)[0]

    # ------------------------------------------------------------------ loop
    def fit(self) -> Dict[str, float]:
        """Train until ``bt.max_num_steps``; returns the last step's metrics (with the last validation)."""
        cfg, last = self.cfg, {}
        if self.step == 0:
            self.metrics.log(0, {f"data/{k}": v for k, v in self.data_counts.items()})
            if self.val_data:
                last = self.validate()
                self.metrics.log(0, last)
                log.info("step 0 validation: %s", _fmt(last))
        bar = tqdm(total=cfg.bt.max_num_steps, initial=self.step, desc="BT", unit="step", dynamic_ncols=True)
        saved_at = None
        while self.step < cfg.bt.max_num_steps:
            t0 = time.perf_counter()
            m = self.train_step()
            self.step += 1
            if self.val_data and (self.step % cfg.bt.val_every_n_steps == 0 or self.step == cfg.bt.max_num_steps):
                m.update(self.validate())
            if self.step % cfg.checkpoint.save_every_n_steps == 0 or self.step == cfg.bt.max_num_steps:
                t1 = time.perf_counter()
                self.save()
                saved_at = self.step
                m["timing/checkpoint"] = time.perf_counter() - t1
            m["timing/step"] = time.perf_counter() - t0
            self.metrics.log(self.step, m)
            bar.update(1)
            bar.set_postfix(loss=f"{m.get('train/loss', float('nan')):.3f}", acc=f"{m.get('train/accuracy', 0):.2f}")
            last = m
        bar.close()
        if saved_at is None and self.step > 0 and not _has_checkpoint(cfg.checkpoint.save_dir):
            self.save()
        return last

    def export_hf(self, target: Optional[str] = None) -> Path:
        """Convert the latest checkpoint to an HF ``*ForSequenceClassification`` folder (single process)."""
        target = Path(target or self.cfg.bt.output_hf_dir or self.out / "hf")
        convert_megatron_to_hf(self.cfg.checkpoint.save_dir, target, hf_reference=self.cfg.model.hf_path,
                               dtype=self.cfg.model.params_dtype, overwrite=True)
        return target

    def close(self) -> None:
        """Stop the ranks (each tears down its process groups), the cluster and the logger."""
        self.cluster.shutdown()
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None


def _has_checkpoint(save_dir: str) -> bool:
    return latest_checkpoint(Path(save_dir)) is not None


def _fmt(m: Dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(m.items()) if isinstance(v, (int, float)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m megatron_brrm.train_bt", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML recipe (model_configs/bt_*.yaml)")
    p.add_argument("--no-resume", action="store_true", help="start from the initial weights even if a checkpoint exists")
    p.add_argument("--no-export", action="store_true", help="skip the HF export at the end")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. bt.optimizer.lr=1e-5 data.train_data_path=F")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        trainer = BTTrainer(cfg, resume=not args.no_resume)
    except (ConfigError, TrainError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        last = trainer.fit()
    finally:
        trainer.close()
    print(f"BT training finished at step {trainer.step}: "
          f"{_fmt({k: v for k, v in last.items() if k.startswith(('train/loss', 'train/accuracy', 'validation'))})}")
    if not args.no_export:
        target = trainer.export_hf()
        print(f"HF reward model (AutoModelForSequenceClassification): {target}")
    print(f"outputs: {trainer.out} (config.yaml, metrics.jsonl, tensorboard/), checkpoints: {trainer.cfg.checkpoint.save_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
