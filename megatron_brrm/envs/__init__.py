"""Reward environments for policy GRPO (``python -m megatron_brrm.train_policy``).

One interface (:class:`RewardEnvironment`: ``rewards(groups) -> per-sample rewards``, ``metrics()``,
``shutdown()``) and two implementations served by the project's own actors:

* :class:`BTEnvironment` -- a Bradley-Terry model scores every response (batched, in its own Ray actor);
* :class:`JudgeEnvironment` -- a BR-RM judge compares the responses of each group pairwise (both
  orders by default) and each response's score is its win rate, or its wins against a reference
  response (:mod:`.pairwise`).

:func:`make_environment` starts the one ``env.*`` configures. Dependencies (docs/design.md §2):
``rollout`` (the two-turn rollout, the scalar scorer), ``judge`` (protocols and verdict parsing),
``workers`` (the engine actor, errors), ``config``; the drivers import ``envs``, nothing else does.
"""
from .base import EnvError, RewardEnvironment, Sample, check_groups
from .bt_env import BTEnvironment
from .factory import check_environment, make_environment
from .judge_env import JudgeEnvironment
from .pairwise import REFERENCE, Comparison, plan_comparisons, position_consistency, win_rates

__all__ = [
    "BTEnvironment", "Comparison", "EnvError", "JudgeEnvironment", "REFERENCE", "RewardEnvironment", "Sample",
    "check_environment", "check_groups", "make_environment", "plan_comparisons", "position_consistency", "win_rates",
]
