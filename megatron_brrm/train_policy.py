"""Policy GRPO against a reward environment: ``python -m megatron_brrm.train_policy --config model_configs/policy_<recipe>.yaml [key=value ...]``.

RLHF with the project's reward models: a *policy* samples ``grpo.num_generations`` single-turn
responses to each prompt and a reward environment (:mod:`megatron_brrm.envs`, ``env.*``) scores
them: a Bradley-Terry model (``env.type: bt``, a reward per response) or a BR-RM judge
(``env.type: brrm_judge``: pairwise verdicts within each group turned into per-response win rates,
or wins against each prompt's reference response). The loop is the GRPO driver's
(:class:`megatron_brrm.train.GRPOTrainer`: the same Policy ranks, engine fleet, refit, colocated
lifecycle, advantages, clipped PG + KL loss, validation, checkpoints, resume, preemption, metrics);
this driver supplies the task. Each step:

1. take ``grpo.num_prompts_per_step`` prompts; prepare for generation; sample
   ``grpo.num_generations`` responses per prompt over the fleet
   (:func:`megatron_brrm.rollout.single_turn.sample_responses`: the chat-template rendering of the
   prompt, at most ``rollout.max_new_tokens_turn1`` tokens, ending at EOS);
2. the environment scores every response (``reward`` phase, in its own Ray actor); finish generation;
3. group-relative advantages, old / reference logprobs, ``P * G / grpo.global_batch_size``
   optimizer steps, refit; every ``grpo.val_every_n_steps`` steps one response per validation prompt
   (fixed seed) is scored: ``validation/reward_mean`` (in ``win_rate`` mode a group of one scores 0.5
   by construction; use ``reference`` mode or a BT environment for a held-out measure).

Metrics: ``rollout/reward_mean`` / ``_std`` / ``_min`` / ``_max``, ``rollout/response_length_mean``,
``rollout/truncation_rate``, ``env/*`` (the environment's time and counts: see each environment's
``metrics``), and the GRPO driver's ``train/``, ``advantages/``, ``refit/``, ``timing/``. Samples go to
``rollouts/step_N.jsonl`` (prompt id, response text, reward). At the end the first and last step's
mean reward are printed with their standard errors.

Prompts (``data.*``, :func:`megatron_brrm.data.prompts.load_prompt_sets`): ``data.prompts_path``
(JSONL ``{"prompt": str}`` or ``{"messages": [...]}``, optional ``"reference"`` and ``"id"``) or the
distinct contexts of the preference data (``data.train_data_path`` etc.; reference = the chosen
response); validation from ``data.val_prompts_path`` or the preference validation sets. Prompts
longer than ``data.max_prompt_tokens`` are dropped (counted).

Models: ``model.hf_path`` is the policy (``tiny`` builds the tiny Qwen3 of ``model.tiny_*`` into
``<logging.output_dir>/tiny_hf``); ``env.model_path`` the reward model (``tiny``: for ``bt`` the
constructed word-start reward model of :func:`megatron_brrm.model.tiny.build_word_start_reward_model`,
for ``brrm_judge`` the tiny policy itself as an untrained judge). Exit codes: 0 finished, 1 a worker
failed (rerun to resume), 2 bad config or inputs, 3 stopped by a signal after a checkpoint.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from megatron_brrm.config import RunConfig
from megatron_brrm.data import DataError
from megatron_brrm.data.prompts import Prompt, load_prompt_sets
from megatron_brrm.envs import EnvError, RewardEnvironment, Sample, check_environment, make_environment
from megatron_brrm.hub import resolve_hf_path
from megatron_brrm.model.tiny import build_word_start_reward_model, tiny_model_from_config
from megatron_brrm.rollout.chat import render_prompt_ids
from megatron_brrm.rollout.single_turn import Response, response_metrics, sample_responses
from megatron_brrm.rollout.two_turn import RolloutParams
from megatron_brrm.run_summary import mean_change, read_metrics
from megatron_brrm.train import GRPOTrainer, TrainError, run_cli

log = logging.getLogger("megatron_brrm.train_policy")


class PolicyTrainer(GRPOTrainer):
    """The GRPO loop on single-turn policy samples rewarded by a reward environment (module docstring).

    Args:
        cfg, resume, engine_factory, runtime: as for :class:`~megatron_brrm.train.GRPOTrainer`.
        env: an already started :class:`~megatron_brrm.envs.RewardEnvironment` (tests); default: the
            one ``env.*`` configures, started once the runtime is up (:func:`~megatron_brrm.envs.make_environment`).
            The trainer shuts it down in :meth:`close`.

    Raises:
        ConfigError, TrainError (bad model, prompts or ``env.*``: one line naming the key),
        WorkerError (a rank, an engine or the environment's actor failed to start).
    """

    DESC = "policy GRPO"
    ROLLOUT_KEYS = ("group_id", "sample_index", "prompt_id", "text", "finish_reason", "reward", "prompt_length")
    PROGRESS = (("reward", "rollout/reward_mean"), ("len", "rollout/response_length_mean"))

    def __init__(self, cfg: RunConfig, resume: bool = True, engine_factory=None, runtime=None,
                 env: Optional[RewardEnvironment] = None):
        self.env = env
        super().__init__(cfg, resume=resume, engine_factory=engine_factory, runtime=runtime)

    # ------------------------------------------------------------------ task
    def _resolve_model(self, cfg: RunConfig) -> RunConfig:
        """Build the tiny models a CPU recipe asks for, resolve both folders and check ``env.*``
        against the reward model's folder (before anything starts)."""
        out = Path(cfg.logging.output_dir)
        if cfg.model.hf_path == "tiny":
            tiny = tiny_model_from_config(cfg.model, out / "tiny_hf", seed=cfg.parallel.seed)
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, hf_path=str(tiny)))
        cfg = super()._resolve_model(cfg)
        if self.env is not None:  # given in code: nothing to build or check
            return cfg
        path = cfg.env.model_path
        if path == "tiny":
            path = cfg.model.hf_path if cfg.env.type == "brrm_judge" else str(_tiny_reward_model(cfg, out))
        elif path:
            try:
                path = resolve_hf_path(path)
            except FileNotFoundError as exc:
                raise TrainError(f"env.model_path: {exc}") from None
        cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, model_path=path))
        try:
            check_environment(cfg)
        except EnvError as exc:
            raise TrainError(str(exc)) from None
        return cfg

    def _load_data(self, cfg: RunConfig) -> Tuple[List[Prompt], Dict[str, List[Prompt]]]:
        """Training prompts and validation prompt sets (:func:`~megatron_brrm.data.prompts.load_prompt_sets`)."""
        try:
            train, val = load_prompt_sets(cfg.data)
        except DataError as exc:
            raise TrainError(str(exc)) from None
        if cfg.env.type == "brrm_judge" and cfg.env.judge_mode == "reference":
            for name, prompts in (("train", train), *val.items()):
                missing = [p.id for p in prompts if p.reference is None]
                if missing:
                    raise TrainError(f"{name}: {len(missing)} of {len(prompts)} prompts have no reference reply "
                                     f"(first: {missing[0]!r}), which env.judge_mode=reference needs: add "
                                     "\"reference\" to data.prompts_path's records, or use env.judge_mode=win_rate")
        return train, val

    def _prompt_ids(self, item: Prompt) -> List[int]:
        return render_prompt_ids(self.tokenizer, item.context)

    def _start_task(self) -> None:
        if self.env is None:
            log.info("starting the reward environment %s on %s", self.cfg.env.type, self.cfg.env.model_path)
            self.env = make_environment(self.cfg)

    def _stop_task(self) -> None:
        if self.env is not None:
            self.env.shutdown()

    def _generate(self, items: Sequence[Prompt], params: RolloutParams, group_offset: int = 0) -> List[Response]:
        """``params.n`` responses per prompt (prompt-major), each with the environment's reward."""
        self.lifecycle.append("generate")
        responses = sample_responses(self.fleet, items, params, group_offset=group_offset)
        self.lifecycle.append("reward")
        n = int(params.n)
        groups = [[Sample(p.context, r.text, p.reference) for r in responses[i * n:(i + 1) * n]]
                  for i, p in enumerate(items)]
        try:
            rewards = self.env.rewards(groups)
        except EnvError as exc:
            raise TrainError(f"reward environment {self.cfg.env.type}: {exc}") from None
        for r, reward in zip(responses, (x for group in rewards for x in group)):
            r.reward = float(reward)
        return responses

    def _sample_metrics(self, samples: Sequence[Response]) -> Dict[str, float]:
        return response_metrics(samples)

    def _pop_task_metrics(self) -> Dict[str, float]:
        return {f"env/{k}": v for k, v in self.env.metrics().items()}


def _tiny_reward_model(cfg: RunConfig, out: Path) -> Path:
    """``env.model_path: tiny`` with ``env.type: bt``: the constructed word-start reward model on the
    policy's tokenizer, built into ``<logging.output_dir>/tiny_reward`` unless already there."""
    target = out / "tiny_reward"
    if (target / "config.json").is_file():
        return target
    return build_word_start_reward_model(target, cfg.model.hf_path)


def summary(trainer: PolicyTrainer, last: Dict[str, float]) -> str:
    """The run's end line: the last step's figures and the first -> last mean reward with standard errors."""
    figures = ", ".join(f"{k}={v:.4g}" for k, v in sorted(last.items())
                        if k.startswith(("rollout/reward", "rollout/response_length", "validation")))
    change = mean_change(read_metrics(trainer.out / "metrics.jsonl"))
    return (f"policy GRPO finished at step {trainer.step}: {figures}"
            + (f"\n{change.line()}" if change is not None else ""))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(PolicyTrainer, argv, prog="python -m megatron_brrm.train_policy", description=__doc__,
                   summary=summary)


if __name__ == "__main__":
    sys.exit(main())
