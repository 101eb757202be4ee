"""The generative-judge environment: a BR-RM (or RM-R1) judge compares responses within each group,
and its verdicts become per-response scores (:mod:`megatron_brrm.envs.pairwise`: win rate over the
group, or wins against a reference response; malformed verdicts count as ties, 0.5).

Every comparison is one judge conversation run by the same rollout as BR-RM training and
evaluation (:func:`megatron_brrm.rollout.two_turn.rollout`, one sample, ``judge.protocol``'s
templates and parser), ``env.batch_size`` comparisons per engine call, on any
:class:`~megatron_brrm.rollout.engine.GenerationEngine` (in training a
:class:`~megatron_brrm.workers.actors.RemoteEngine` over the judge's own engine actor; in tests a
scripted engine). Sampling: ``env.temperature`` (0 = greedy), seed ``env.seed`` plus the number of
earlier calls in this process, so successive steps draw new samples and a run is reproducible from
its start (a resumed run counts again from ``env.seed``).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from megatron_brrm.judge import RewardRule
from megatron_brrm.rollout.two_turn import RolloutParams, rollout

from .base import EnvError, RewardEnvironment, Sample, check_groups
from .pairwise import REFERENCE, plan_comparisons, position_consistency, win_rates


@dataclass
class _Presented:
    """What the rollout needs of one comparison (``preference`` is a placeholder: the judge's own
    reward is not used, only its verdict)."""

    id: str
    context: List[Dict[str, str]]
    response1: str
    response2: str
    preference: int = 1


class JudgeEnvironment(RewardEnvironment):
    """Scores from a pairwise generative judge (module docstring).

    Args:
        engine: the judge's :class:`~megatron_brrm.rollout.engine.GenerationEngine`.
        protocol: a :class:`~megatron_brrm.judge.JudgeProtocol` (``get_protocol("brrm")``).
        params: the judge's sampling and length settings (``n`` is ignored: one sample per comparison).
        mode: ``win_rate`` or ``reference`` (:mod:`~megatron_brrm.envs.pairwise`).
        both_orders: judge every comparison in both presentation orders.
        batch_size: comparisons per engine call.

    Raises:
        ValueError: an unknown mode or ``batch_size < 1``.
    """

    name = "brrm_judge"

    def __init__(self, engine, protocol, params: RolloutParams, mode: str = "win_rate", both_orders: bool = True,
                 batch_size: int = 16):
        plan_comparisons([1], mode, both_orders)  # checks the mode
        if int(batch_size) < 1:
            raise ValueError(f"env.batch_size={batch_size} must be >= 1")
        self.engine, self.protocol, self.params = engine, protocol, params
        self.mode, self.both_orders, self.batch_size = mode, bool(both_orders), int(batch_size)
        self.calls = 0
        self._reset()

    def _reset(self) -> None:
        self._m = {"seconds": 0.0, "comparisons": 0.0, "malformed": 0.0, "judge_tokens": 0.0}
        self._consistency: List[float] = []

    def _text(self, group: Sequence[Sample], index: int, g: int) -> str:
        if index != REFERENCE:
            return group[index].response
        ref = group[0].reference
        if not isinstance(ref, str):
            raise EnvError(f"group {g} has no reference response, which env.judge_mode=reference needs: give "
                           "prompts with a \"reference\" (data.prompts_path) or preference data (its chosen reply)")
        return ref

    def verdicts(self, groups: Sequence[Sequence[Sample]]):
        """Run the judge on this batch's comparisons.

        Returns:
            ``(comparisons, verdicts)``: the plan (:func:`~megatron_brrm.envs.pairwise.plan_comparisons`)
            and per comparison 1, 2 or ``None`` (malformed or truncated).

        Raises:
            EnvError: malformed groups, or reference mode without a reference.
        """
        check_groups(groups)
        comps = plan_comparisons([len(g) for g in groups], self.mode, self.both_orders)
        shown = [_Presented(f"{c.group}:{c.first}:{c.second}", list(groups[c.group][0].context),
                            self._text(groups[c.group], c.first, c.group), self._text(groups[c.group], c.second, c.group))
                 for c in comps]
        seed = None if self.params.seed is None else int(self.params.seed) + self.calls
        params = dataclasses.replace(self.params, n=1, seed=seed)
        self.calls += 1
        verdicts: List[Optional[int]] = []
        tokens = 0
        for start in range(0, len(shown), self.batch_size):
            for t in rollout(self.engine, self.protocol, shown[start:start + self.batch_size], params, RewardRule(),
                             group_offset=start):
                verdicts.append(t.verdict.preference if t.verdict.format_error is None else None)
                tokens += t.num_generated
        self._m["judge_tokens"] += tokens
        return comps, verdicts

    def rewards(self, groups: Sequence[Sequence[Sample]]) -> List[List[float]]:
        """Per-response scores in [0, 1] (see :meth:`RewardEnvironment.rewards` and
        :func:`~megatron_brrm.envs.pairwise.win_rates`)."""
        t0 = time.perf_counter()
        comps, verdicts = self.verdicts(groups)
        self._m["seconds"] += time.perf_counter() - t0
        self._m["comparisons"] += len(comps)
        self._m["malformed"] += sum(v is None for v in verdicts)
        consistency = position_consistency(comps, verdicts)
        if consistency is not None:
            self._consistency.append(consistency)
        return win_rates([len(g) for g in groups], comps, verdicts)

    def metrics(self) -> Dict[str, float]:
        """``seconds``, ``comparisons``, ``judge_tokens`` (generated), ``format_error_rate`` (malformed
        verdicts / comparisons) and, with both orders, ``position_consistency`` (pairs whose two
        orders name the same response); reset after the call."""
        m = {k: v for k, v in self._m.items() if k != "malformed"}
        m["format_error_rate"] = self._m["malformed"] / self._m["comparisons"] if self._m["comparisons"] else 0.0
        if self._consistency:
            m["position_consistency"] = sum(self._consistency) / len(self._consistency)
        self._reset()
        return m

    def shutdown(self) -> None:
        """Stop the judge engine (its process, then its actor when it has one)."""
        if self.engine is None:
            return
        engine, self.engine = self.engine, None
        engine.shutdown()
