"""Single-turn policy rollouts: ``G`` sampled responses to each prompt (one GRPO group per prompt).

The prompt is the chat-template rendering of the prompt's messages with the generation prompt
(:func:`~megatron_brrm.rollout.chat.render_prompt_ids`, the same rendering as the judge's turn 1);
the engine samples ``params.n`` responses per prompt in one call (identical prompts of different
groups get independent samples, :func:`~megatron_brrm.rollout.two_turn.generate_distinct`), with
no stop string: a response ends at an EOS token (kept, loss mask 1) or after
``min(max_new_tokens, max_total_length - prompt tokens)`` tokens (``finish_reason="length"``,
:attr:`Response.truncated`). Token ids flow through unchanged; the response *text* an environment
scores is the generated ids without the closing EOS, decoded with special tokens skipped.

Randomness: seed ``params.seed`` and the engine's per-sample streams (seed, prompt ids, sample
index), so a rollout is reproducible and independent of how a fleet splits it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Sequence

from .chat import render_prompt_ids
from .engine import GenerationEngine, SamplingParams
from .two_turn import RolloutParams, generate_distinct


@dataclass
class Response:
    """One sampled policy response (a single-turn trajectory) with what GRPO needs.

    Sequences are lists of equal length ``L = prompt_length + generated tokens``.

    Attributes:
        group_id: the GRPO group (``group_offset`` + the prompt's index in the batch).
        sample_index: ``0..n-1`` within the group.
        prompt_id: the prompt's id.
        token_ids: prompt ids + generated ids (int).
        loss_mask: 0 on the prompt, 1 on every generated token (the EOS included).
        rollout_logprobs: the engine's sampling logprob of each generated token (natural log,
            temperature-scaled), 0.0 on the prompt.
        prompt_length: tokens of the rendered prompt.
        text: the generated text the environment scores (no EOS, special tokens skipped).
        finish_reason: ``"stop"`` (EOS) or ``"length"`` (the token budget ran out).
        reward: set by the driver from the environment (environment units).
    """

    group_id: int
    sample_index: int
    prompt_id: str
    token_ids: List[int]
    loss_mask: List[int]
    rollout_logprobs: List[float]
    prompt_length: int
    text: str
    finish_reason: str
    reward: float = 0.0

    @property
    def num_generated(self) -> int:
        """Generated tokens (``loss_mask`` ones)."""
        return len(self.token_ids) - self.prompt_length

    @property
    def total_length(self) -> int:
        """``len(token_ids)``."""
        return len(self.token_ids)

    @property
    def truncated(self) -> bool:
        """The response ran out of tokens before an EOS."""
        return self.finish_reason == "length"

    def to_dict(self) -> Dict:
        """JSON-serialisable fields (one line of ``rollouts/step_N.jsonl``)."""
        return asdict(self)


def sample_responses(engine: GenerationEngine, prompts: Sequence, params: RolloutParams,
                     group_offset: int = 0) -> List[Response]:
    """Sample ``params.n`` responses to each prompt (module docstring).

    Args:
        engine: any :class:`~megatron_brrm.rollout.engine.GenerationEngine` (a fleet included).
        prompts: objects with ``.id`` and ``.context`` (chat messages ending with a user turn),
            e.g. :class:`megatron_brrm.data.prompts.Prompt`.
        params: ``n`` (group size), ``temperature``, ``top_p``, ``max_new_tokens`` (an int, or the
            first entry of a per-turn list), ``max_total_length``, ``seed``.
        group_offset: added to the prompt index to form ``group_id``.

    Returns:
        ``len(prompts) * params.n`` responses, prompt-major.

    Raises:
        ValueError: bad params, or a prompt that leaves no room for one token under
            ``max_total_length`` (its id named; filter prompts with ``data.max_prompt_tokens``).
        RuntimeError: the engine returned the wrong number of samples or no logprobs.
    """
    params.validate()
    tok = engine.tokenizer
    eos = set(engine.abilities.eos_token_ids)
    n, cap, max_total = int(params.n), params.turn_cap(0, 1), int(params.max_total_length)
    prompt_ids = [render_prompt_ids(tok, p.context) for p in prompts]
    budgets = [min(cap, max_total - len(ids)) for ids in prompt_ids]
    for p, ids, b in zip(prompts, prompt_ids, budgets):
        if b < 1:
            raise ValueError(f"prompt {p.id!r}: {len(ids)} tokens leave no room under max_total_length={max_total}; "
                             "drop long prompts with data.max_prompt_tokens")
    sp = SamplingParams(n=1, temperature=params.temperature, top_p=params.top_p, max_new_tokens=max(budgets, default=1),
                        stop=[], seed=params.seed, logprobs=True)
    flat = generate_distinct(engine, [ids for ids in prompt_ids for _ in range(n)], sp,
                             [i for i in range(len(prompts)) for _ in range(n)])
    out: List[Response] = []
    for k, sample in enumerate(flat):
        i, j = divmod(k, n)
        ids, lps, reason = list(sample.token_ids), [float(x) for x in sample.logprobs], sample.finish_reason
        if len(lps) != len(ids):
            raise RuntimeError(f"engine returned {len(lps)} logprobs for {len(ids)} tokens; rollouts need "
                               "SamplingParams(logprobs=True) honoured")
        if len(ids) > budgets[i]:
            ids, lps, reason = ids[:budgets[i]], lps[:budgets[i]], "length"
        body = ids[:-1] if ids and ids[-1] in eos and reason == "stop" else ids
        text = tok.decode(body, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        p = prompt_ids[i]
        out.append(Response(group_id=group_offset + i, sample_index=j, prompt_id=str(prompts[i].id),
                            token_ids=list(p) + ids, loss_mask=[0] * len(p) + [1] * len(ids),
                            rollout_logprobs=[0.0] * len(p) + lps, prompt_length=len(p), text=text,
                            finish_reason=reason))
    return out


def response_metrics(responses: Sequence[Response]) -> Dict[str, float]:
    """Batch metrics: ``num_trajectories``, ``reward_mean`` / ``reward_std`` (population) /
    ``reward_min`` / ``reward_max``, ``response_length_mean`` (generated tokens),
    ``total_length_mean`` and ``truncation_rate`` (responses that hit the token budget)."""
    n = len(responses)
    if n == 0:
        return {}
    r = [float(x.reward) for x in responses]
    mean = sum(r) / n
    return {
        "num_trajectories": float(n),
        "reward_mean": mean,
        "reward_std": math.sqrt(sum((x - mean) ** 2 for x in r) / n),
        "reward_min": min(r),
        "reward_max": max(r),
        "response_length_mean": sum(x.num_generated for x in responses) / n,
        "total_length_mean": sum(x.total_length for x in responses) / n,
        "truncation_rate": sum(x.truncated for x in responses) / n,
    }
