"""Judge presentations with a generation engine through the judge protocol, with a resumable cache.

Each presentation (a comparison in one order) is one trajectory of the protocol's rollout
(:func:`megatron_brrm.rollout.two_turn.rollout`: BR-RM = two turns in one conversation,
turn 2 stopped at ``[The End of Ranking Score]``), one sample per presentation. Batches of
``batch_size`` presentations go to the engine together; every finished batch is appended
to the cache, so an interrupted run resumes where it stopped. The engine seeds each
sample from (seed, prompt tokens), so a comparison's generation does not depend on which
batch it landed in.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

from megatron_brrm.judge import RewardRule

from .cache import GenerationCache
from .orders import Presentation
from .records import Judgement


def trajectory_to_judgement(pres: Presentation, traj) -> Judgement:
    """Record of one presentation from its rollout trajectory.

    Reads ``traj.turn_texts`` and ``traj.verdict`` (a judge ``Verdict``: ``preference`` 1|2
    or None with ``format_error``); a truncated final turn without a valid verdict is a
    format error (wrong), as in training.
    """
    verdict = traj.verdict
    preference = getattr(verdict, "preference", None)
    error = getattr(verdict, "format_error", None)
    if preference is None and error is None:
        error = "no verdict"
    extra = {
        "finish_reasons": list(getattr(traj, "finish_reasons", []) or []),
        "turn_lengths": list(getattr(traj, "turn_lengths", []) or []),
        "truncated": bool(getattr(traj, "truncated", False)),
        "reward": getattr(traj, "reward", None),
    }
    return Judgement.build(pres, list(traj.turn_texts), preference, error, extra)


def judge_presentations(engine, protocol, todo: Sequence[Presentation], *, max_new_tokens: int,
                        temperature: float, top_p: float, seed: int, batch_size: int, max_total_length: int = 16384,
                        cache: Optional[GenerationCache] = None,
                        progress: Optional[Callable[[int], None]] = None) -> Dict[str, Judgement]:
    """Generate and parse the judge's verdict for every presentation in ``todo``.

    Args:
        engine: a :class:`~megatron_brrm.rollout.engine.GenerationEngine`.
        protocol: a :class:`~megatron_brrm.judge.JudgeProtocol`.
        todo: presentations still to judge.
        max_new_tokens: generation limit per turn (tokens).
        max_total_length: limit on prompt + all turns (tokens); a final turn that runs out of
            room is a truncated, malformed verdict (counted wrong).
        temperature, top_p: sampling settings (temperature 0 = greedy).
        seed: sampling seed passed to every engine call.
        batch_size: presentations per rollout call (> 0).
        cache: appended after every batch when given.
        progress: called with the number of presentations finished in each batch.

    Returns:
        record key -> :class:`Judgement` for every presentation of ``todo``.

    Raises:
        ValueError: ``batch_size < 1``.
        RuntimeError: the rollout returned a different number of trajectories than asked.
    """
    from megatron_brrm.rollout.two_turn import RolloutParams, rollout  # lazy: keeps evaluation/run.py --help fast

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    params = RolloutParams(
        n=1, temperature=temperature, top_p=top_p,
        max_new_tokens=[int(max_new_tokens)] * protocol.num_turns, max_total_length=int(max_total_length), seed=seed,
    )
    rule = RewardRule()
    out: Dict[str, Judgement] = {}
    for start in range(0, len(todo), batch_size):
        batch = list(todo[start:start + batch_size])
        trajs = rollout(engine, protocol, [p.to_pair() for p in batch], params, rule, group_offset=start)
        if len(trajs) != len(batch):
            raise RuntimeError(f"rollout returned {len(trajs)} trajectories for {len(batch)} presentations")
        by_pair = {t.pair_id: t for t in trajs}
        records: List[Judgement] = []
        for pres in batch:
            traj = by_pair.get(pres.key)
            if traj is None:
                raise RuntimeError(f"rollout returned no trajectory for {pres.key!r}")
            records.append(trajectory_to_judgement(pres, traj))
        if cache is not None:
            cache.append(records)
        out.update({r.key: r for r in records})
        if progress is not None:
            progress(len(batch))
    return out
