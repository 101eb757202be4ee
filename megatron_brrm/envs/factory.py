"""The configured reward environment (``env.*``): checked before anything starts, then started.

:func:`check_environment` reads only files (``env.model_path``'s ``config.json``) and the config,
so a wrong model kind stops a run with one line before Ray or the policy ranks start;
:func:`make_environment` starts the environment's actor in the running Ray cluster.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from megatron_brrm.judge import get_protocol
from megatron_brrm.rollout.two_turn import RolloutParams
from megatron_brrm.workers.fleet import engine_factory_for

from .actors import start_judge_engine, start_scorer
from .base import EnvError, RewardEnvironment
from .bt_env import BTEnvironment
from .judge_env import JudgeEnvironment


def _is_scalar_model(path: Path) -> tuple:
    archs = json.loads((path / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    return any(str(a).endswith("ForSequenceClassification") for a in archs), (archs[0] if archs else "an unknown model")


def check_environment(cfg) -> None:
    """Check ``env.model_path`` against ``env.type`` (a local folder with the right kind of model).

    Raises:
        EnvError: unset path, no ``config.json``, a causal LM for ``bt`` or a sequence classifier for
            ``brrm_judge``; the message names the key and the fix.
    """
    e = cfg.env
    if not e.model_path:
        raise EnvError("env.model_path is unset: give the reward model's HF folder (env.type=bt: a "
                       "*ForSequenceClassification folder from python -m megatron_brrm.train_bt; env.type=brrm_judge: "
                       "a judge such as a converted BR-RM checkpoint) or 'tiny' on CPU")
    path = Path(e.model_path)
    if not (path / "config.json").is_file():
        raise EnvError(f"env.model_path={e.model_path}: not an HF model folder (no config.json)")
    scalar, arch = _is_scalar_model(path)
    if e.type == "bt" and not scalar:
        raise EnvError(f"env.model_path={e.model_path} holds {arch}, not a Bradley-Terry reward model "
                       "(*ForSequenceClassification): train one with python -m megatron_brrm.train_bt, or set "
                       "env.type=brrm_judge to judge with a generative model")
    if e.type == "brrm_judge" and scalar:
        raise EnvError(f"env.model_path={e.model_path} holds {arch}, a scalar reward model: set env.type=bt, or give "
                       "a generative judge")


def make_environment(cfg) -> RewardEnvironment:
    """Start the environment of ``cfg.env`` (Ray must be running: the driver's runtime started it).

    * ``bt``: a :class:`~megatron_brrm.envs.actors.ScorerActor` on ``env.model_path``
      (``env.device``, ``env.dtype``, ``env.batch_size``, ``env.max_length``) behind a
      :class:`~megatron_brrm.envs.bt_env.BTEnvironment`.
    * ``brrm_judge``: an engine actor running ``env.engine`` on ``env.model_path`` (other engine
      settings, e.g. vLLM's ``tensor_parallel_size``, from ``rollout.*``), the protocol
      ``judge.protocol`` / ``judge.template_dir``, behind a
      :class:`~megatron_brrm.envs.judge_env.JudgeEnvironment` (``env.judge_mode``,
      ``env.both_orders``, ``env.temperature``, ``env.max_new_tokens`` per turn,
      ``env.max_total_length``, ``env.seed``).

    Raises:
        EnvError: from :func:`check_environment`.
        WorkerError: the actor failed to start (the cause names why).
    """
    check_environment(cfg)
    e = cfg.env
    if e.type == "bt":
        scorer = start_scorer(e.model_path, e.device, e.dtype, e.batch_size, e.max_length, num_cpus=e.num_cpus,
                              num_gpus=e.num_gpus, timeout_s=e.timeout_s)
        return BTEnvironment(scorer)
    protocol = get_protocol(cfg.judge.protocol, cfg.judge.template_dir)
    engine_cfg = dataclasses.replace(cfg.rollout, engine=e.engine, device=e.device, dtype=e.dtype, colocated=False,
                                     seed=e.seed, max_total_sequence_length=e.max_total_length,
                                     max_batch_size=e.batch_size, quantization=None)
    engine = start_judge_engine(engine_factory_for(engine_cfg, e.model_path), num_cpus=e.num_cpus,
                                num_gpus=e.num_gpus, timeout_s=e.timeout_s)
    params = RolloutParams(n=1, temperature=e.temperature, top_p=1.0,
                           max_new_tokens=[e.max_new_tokens] * protocol.num_turns,
                           max_total_length=e.max_total_length, seed=e.seed)
    try:
        return JudgeEnvironment(engine, protocol, params, mode=e.judge_mode, both_orders=e.both_orders,
                                batch_size=e.batch_size)
    except BaseException:
        engine.shutdown()
        raise
