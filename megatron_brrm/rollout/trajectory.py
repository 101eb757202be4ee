"""The trajectory record produced by a rollout, its turns as message contents, and batch metrics."""
from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple


def _as_dict(obj: Any) -> Any:
    if obj is None:
        return None
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return dict(vars(obj))


@dataclass
class Trajectory:
    """One sampled judge conversation (all turns) with everything GRPO needs.

    Sequences are Python lists of equal length ``L = len(token_ids) <= max_total_length``.

    Attributes:
        group_id: ``group_offset + pair index``; the GRPO group (the pair's ``n`` samples).
        sample_index: index of this sample within its group, ``0..n-1``.
        pair_id: the preference pair's id; label: its human preference (1 or 2).
        token_ids: prompt + turn-1 generated + turn-2 user message + turn-2 generated (int).
        loss_mask: 1 exactly on generated tokens (both turns), 0 on prompt/user/template tokens.
        rollout_logprobs: the engine's sampling logprob of each generated token (natural log,
            see ``sampling`` for the convention), 0.0 where ``loss_mask`` is 0.
        prompt_length: tokens of the turn-1 prompt.
        turn_lengths: generated tokens per turn (0 for a turn that could not run).
        turn_spans: ``[start, end)`` of each turn's generated tokens in ``token_ids``.
        turn_texts: decoded generated text per turn (special tokens kept).
        finish_reasons: per turn ``"stop"`` | ``"length"`` | ``"not_run"`` (no room left).
        reward: the trajectory reward (reward units of ``RewardRule``).
        verdict: the judge's parsed ``Verdict`` (annotated when truncated).
        turn1: the judge's parsed ``Turn1Result`` (``None`` for single-turn protocols).
        truncated: the final turn could not run or ended by length without a valid verdict
            (see ``two_turn`` for the rule); then ``reward == rule.malformed``.
    """

    group_id: int
    sample_index: int
    pair_id: str
    label: int
    token_ids: List[int]
    loss_mask: List[int]
    rollout_logprobs: List[float]
    prompt_length: int
    turn_lengths: List[int]
    turn_spans: List[Tuple[int, int]]
    turn_texts: List[str]
    finish_reasons: List[str]
    reward: float
    verdict: Any
    turn1: Any = None
    truncated: bool = False

    @property
    def total_length(self) -> int:
        """``len(token_ids)``."""
        return len(self.token_ids)

    @property
    def num_generated(self) -> int:
        """Tokens with ``loss_mask == 1``."""
        return int(sum(self.loss_mask))

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable dict (verdict / turn1 as dicts); one JSONL line per trajectory."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["turn_spans"] = [list(s) for s in self.turn_spans]
        d["verdict"] = _as_dict(self.verdict)
        d["turn1"] = _as_dict(self.turn1)
        return d


def turn_contents(traj: Trajectory, tokenizer, eos_token_ids) -> List[str]:
    """Each turn's generated text as a chat message's content: the turn's tokens decoded
    without the EOS token that closed it (special tokens otherwise kept, no clean-up).

    This is what a chat-format trace stores for the turn (``rollout.traces.tokenize_trace``
    appends the EOS again), and the judge's reasoning a user reads. A turn that stopped on a
    stop string (BR-RM's ``[The End of Ranking Score]``) keeps it.

    Args:
        traj: a rollout trajectory (``token_ids``, ``turn_spans``).
        tokenizer: the engine's HF tokenizer.
        eos_token_ids: the ids that end a turn (an engine's ``eos_token_ids``).
    """
    eos = {int(i) for i in eos_token_ids}
    out = []
    for start, end in traj.turn_spans:
        ids = list(traj.token_ids[start:end])
        while ids and ids[-1] in eos:
            ids.pop()
        out.append(tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))
    return out


def rollout_metrics(trajectories: Sequence[Trajectory]) -> Dict[str, float]:
    """Batch metrics: trajectory count, reward mean, accuracy, format-error and truncation rates,
    lengths, dimensions.

    Accuracy counts a trajectory correct when its verdict is valid and equals the label
    (so malformed counts as wrong). ``dimension/<name>`` is the fraction of trajectories whose
    turn 1 chose that dimension (BR-RM only).
    """
    n = len(trajectories)
    if n == 0:
        return {}
    out: Dict[str, float] = {
        "num_trajectories": n,
        "reward_mean": sum(t.reward for t in trajectories) / n,
        "accuracy": sum(1 for t in trajectories if getattr(t.verdict, "preference", None) == t.label) / n,
        "format_error_rate": sum(1 for t in trajectories if getattr(t.verdict, "format_error", None) is not None) / n,
        "truncation_rate": sum(1 for t in trajectories if t.truncated) / n,
        "total_length_mean": sum(t.total_length for t in trajectories) / n,
    }
    num_turns = max(len(t.turn_lengths) for t in trajectories)
    for k in range(num_turns):
        out[f"turn{k + 1}_length_mean"] = sum(t.turn_lengths[k] for t in trajectories if k < len(t.turn_lengths)) / n
    dims: Counter = Counter()
    for t in trajectories:
        for d in getattr(t.turn1, "dimensions", None) or []:
            dims[d] += 1
    for d, c in sorted(dims.items()):
        out[f"dimension/{d}"] = c / n
    return out
