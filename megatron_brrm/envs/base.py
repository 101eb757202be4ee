"""The reward-environment interface of policy GRPO: score groups of (context, response) samples.

A policy GRPO step samples ``G`` responses to each of ``P`` prompts (one *group* per prompt)
and asks the environment for one scalar reward per response. NeMo-RL's
``EnvironmentInterface.step(message_logs, metadata) -> rewards`` is the model; here the unit is a
whole batch of groups, so an environment can batch its model calls across groups (a
Bradley-Terry model scores every response of the step in a few forward calls) and compare
responses *within* a group (a pairwise judge turns comparisons into per-response scores).

Implementations: :class:`~megatron_brrm.envs.bt_env.BTEnvironment` (a reward per response from a
Bradley-Terry model) and :class:`~megatron_brrm.envs.judge_env.JudgeEnvironment` (a BR-RM judge's
pairwise verdicts turned into win rates).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence


class EnvError(RuntimeError):
    """An environment cannot start or was given bad input; the message names the config key or
    the sample and the fix."""


@dataclass(frozen=True)
class Sample:
    """One response to score.

    Attributes:
        context: the chat messages the response answers (``[{"role", "content"}, ...]``, ending
            with a user turn).
        response: the policy's reply as text (special tokens removed, no trailing EOS).
        reference: a reference reply to the same context (a judge's ``reference`` mode compares
            against it); ``None`` when there is none.
    """

    context: List[Dict[str, str]]
    response: str
    reference: Optional[str] = None


def check_groups(groups: Sequence[Sequence[Sample]]) -> None:
    """Raise :class:`EnvError` for an empty group, a non-:class:`Sample` item, a non-str response or a
    group whose samples answer different contexts (names the group and sample index)."""
    for g, group in enumerate(groups):
        if len(group) == 0:
            raise EnvError(f"group {g} is empty; every group needs at least one sample")
        for i, s in enumerate(group):
            if not isinstance(s, Sample) or not isinstance(s.response, str):
                raise EnvError(f"group {g} sample {i}: expected a Sample with a str response, got {type(s).__name__}")
            if s.context != group[0].context:
                raise EnvError(f"group {g} sample {i} answers another context than sample 0; a group holds the "
                               "responses to one prompt")


class RewardEnvironment(ABC):
    """Scores groups of responses (see the module docstring).

    Attributes:
        name: short name used in logs and metric keys (``bt``, ``brrm_judge``).
    """

    name: str = ""

    @abstractmethod
    def rewards(self, groups: Sequence[Sequence[Sample]]) -> List[List[float]]:
        """One reward per sample, grouped like the input.

        Args:
            groups: ``P`` groups; group ``p`` holds the ``G_p >= 1`` responses to one context
                (groups may differ in size).

        Returns:
            ``P`` lists of ``G_p`` finite Python floats, in input order. Units are the
            environment's (a Bradley-Terry model's logit scale; a judge's win rate in [0, 1]).

        Raises:
            EnvError: malformed groups (:func:`check_groups`).
            WorkerError: the environment's actor failed or timed out (named).
        """

    def metrics(self) -> Dict[str, float]:
        """Metrics accumulated since the last call (e.g. ``seconds``, ``comparisons``), then reset.
        Keys have no prefix; the driver logs them under ``env/``."""
        return {}

    def shutdown(self) -> None:
        """Stop whatever the environment started (its actor). Idempotent."""
