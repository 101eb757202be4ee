"""Judge presentations with a scalar (Bradley-Terry) reward model: score each response once,
decide each comparison by score.

A scalar model gives one reward per (context, response); a comparison is decided by which of
its two responses has the higher reward (RewardBench's rule for classifiers:
``scores_chosen > scores_rejected``). Every distinct (context, response) is scored exactly
once, however many comparisons use it: an RM-Bench item's 3 chosen and 3 rejected responses
are 6 scores for its 3x3 = 9 comparisons, an RMB best-of-N item's best response is scored
once against all its losers, and a comparison's second order reuses the first order's scores.

Each record (:class:`~evaluation.records.Judgement`) has no generated text
(``turn_texts = []``); ``extra.rewards = [reward of Response 1, reward of Response 2]`` in that
presentation's order, and ``verdict`` is the position of the higher reward. Equal rewards are
no verdict (``format_error`` says so): scored as wrong, or 0.5 with ``--unparseable-as tie``.
Records go to the same resumable cache as generative judgements, and a results file of a
scalar run replays without the model (:func:`evaluation.results.replay_judgements` reads
``extra.rewards``).
"""
from __future__ import annotations

import json
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .cache import GenerationCache
from .orders import Presentation
from .records import Judgement

TIE = "tie: both responses got the same reward"


def verdict_from_rewards(rewards: Sequence[float]) -> Tuple[Optional[int], Optional[str]]:
    """``(1 | 2 | None, format_error)``: the position of the higher of ``[r1, r2]``; a tie is no verdict."""
    r1, r2 = float(rewards[0]), float(rewards[1])
    if r1 > r2:
        return 1, None
    if r2 > r1:
        return 2, None
    return None, TIE


def _key(context, response: str) -> str:
    return json.dumps([context, response], ensure_ascii=False, sort_keys=True)


def score_presentations(scorer, todo: Sequence[Presentation], batch_size: int = 64,
                        cache: Optional[GenerationCache] = None,
                        progress: Optional[Callable[[int], None]] = None) -> Tuple[Dict[str, Judgement], int]:
    """Rewards and verdicts for every presentation in ``todo`` (module docstring).

    Args:
        scorer: has ``score_batch(contexts, responses) -> [float]``
            (:class:`megatron_brrm.rollout.scalar.SequenceClassifierScorer`).
        todo: presentations to judge.
        batch_size: presentations per step (their new distinct responses are scored together;
            the cache is appended after each step).
        cache: appended after every step when given.
        progress: called with the number of presentations finished in each step.

    Returns:
        ``(record key -> Judgement, number of distinct responses scored)``.

    Raises:
        ValueError: ``batch_size < 1``; RuntimeError: the scorer returned a wrong count.
    """
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    rewards: Dict[str, float] = {}
    out: Dict[str, Judgement] = {}
    for start in range(0, len(todo), batch_size):
        batch = list(todo[start:start + batch_size])
        new: Dict[str, Tuple[list, str]] = {}
        for pres in batch:
            c = pres.comparison
            for resp in (c.chosen, c.rejected):
                k = _key(c.context, resp)
                if k not in rewards:
                    new[k] = (c.context, resp)
        if new:
            keys = list(new)
            scores = scorer.score_batch([new[k][0] for k in keys], [new[k][1] for k in keys])
            if len(scores) != len(keys):
                raise RuntimeError(f"the scorer returned {len(scores)} rewards for {len(keys)} responses")
            rewards.update(zip(keys, (float(s) for s in scores)))
        records: List[Judgement] = []
        for pres in batch:
            c = pres.comparison
            rc, rr = rewards[_key(c.context, c.chosen)], rewards[_key(c.context, c.rejected)]
            pair = [rr, rc] if pres.swapped else [rc, rr]
            verdict, error = verdict_from_rewards(pair)
            records.append(Judgement.build(pres, [], verdict, error, {"rewards": pair}))
        if cache is not None:
            cache.append(records)
        out.update({r.key: r for r in records})
        if progress is not None:
            progress(len(batch))
    return out, len(rewards)
