"""The Bradley-Terry environment: each response's reward is a scalar reward model's score.

A response is scored as the chat-template rendering of its context followed by the response
(:func:`megatron_brrm.rollout.scalar.scored_ids`, the sequence ``train_bt`` trains on and every
consumer scores), read at the last token. Every sample of every group goes to the scorer in one
call; the scorer batches its forward passes (``env.batch_size`` sequences each, sorted by length).
The scorer is any object with ``score_batch(contexts, responses) -> List[float]``: in training a
:class:`~megatron_brrm.envs.actors.RemoteScorer` (the model in its own Ray actor), in tests also an
in-process :class:`~megatron_brrm.rollout.scalar.SequenceClassifierScorer`.
"""
from __future__ import annotations

import math
import time
from typing import Dict, List, Sequence

from .base import EnvError, RewardEnvironment, Sample, check_groups


class BTEnvironment(RewardEnvironment):
    """Rewards from a Bradley-Terry model (module docstring).

    Args:
        scorer: ``score_batch(contexts, responses) -> List[float]`` (optionally ``truncated()`` and
            ``shutdown()``).

    Rewards are in the model's units (the logit scale of ``r_chosen - r_rejected``); GRPO's group
    normalisation makes the scale irrelevant to training.
    """

    name = "bt"

    def __init__(self, scorer):
        self.scorer = scorer
        self._seconds = 0.0
        self._scored = 0

    def rewards(self, groups: Sequence[Sequence[Sample]]) -> List[List[float]]:
        """One reward per sample (see :meth:`RewardEnvironment.rewards`); one scorer call for all groups.

        Raises:
            EnvError: malformed groups, or the scorer returned the wrong count or a non-finite reward.
            WorkerError: the scorer's actor failed (from the scorer).
        """
        check_groups(groups)
        flat = [s for group in groups for s in group]
        t0 = time.perf_counter()
        scores = [float(x) for x in self.scorer.score_batch([s.context for s in flat], [s.response for s in flat])]
        self._seconds += time.perf_counter() - t0
        self._scored += len(flat)
        if len(scores) != len(flat):
            raise EnvError(f"the reward model returned {len(scores)} rewards for {len(flat)} responses")
        bad = [i for i, x in enumerate(scores) if not math.isfinite(x)]
        if bad:
            raise EnvError(f"the reward model returned non-finite rewards for responses {bad[:5]} "
                           f"({[scores[i] for i in bad[:5]]}); check env.model_path and env.dtype")
        out, start = [], 0
        for group in groups:
            out.append(scores[start:start + len(group)])
            start += len(group)
        return out

    def metrics(self) -> Dict[str, float]:
        """``seconds`` (scoring wall time), ``responses`` (scored) and, when the scorer counts them,
        ``truncated`` (responses longer than ``env.max_length`` so far); reset after the call."""
        m = {"seconds": self._seconds, "responses": float(self._scored)}
        truncated = getattr(self.scorer, "truncated", None)
        if truncated is not None:
            m["truncated"] = float(truncated() if callable(truncated) else truncated)
        self._seconds, self._scored = 0.0, 0
        return m

    def shutdown(self) -> None:
        """Stop the scorer's actor (if it has one)."""
        stop = getattr(self.scorer, "shutdown", None)
        if stop is not None:
            stop()
