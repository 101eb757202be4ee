"""Multi-turn judge rollouts (BR-RM: two turns; single-turn protocols use the same code).

For each preference pair (duck-typed: ``.id``, ``.context``, ``.response1``, ``.response2``,
``.preference``), ``params.n`` trajectories (one GRPO group) are sampled:

1. Turn-1 prompt = chat-templated ``protocol.turn1_messages(...)`` token ids
   (:func:`~megatron_brrm.rollout.chat.render_prompt_ids`). One engine call generates
   ``n`` samples for every pair (the ``n`` equal inputs of a group, see Randomness), stop
   strings ``protocol.stop_strings(0)``.
2. Each trajectory's :class:`~megatron_brrm.judge.Episode` consumes its turn-1 text and
   returns the turn-2 user message. Turn-2 input = turn-1 prompt ids + turn-1 generated ids
   (as generated) + the user message's template tokens (:mod:`.chat` gives the splicing
   rule, including a turn 1 that ended by length or on a stop string: the template's
   end-of-turn tokens are then inserted, loss mask 0).
3. The engine generates turn 2 for all trajectories (one sample each; stop strings
   ``protocol.stop_strings(1)``, e.g. BR-RM's ``[The End of Ranking Score]``, kept).
4. The episode consumes the turn-2 text and returns the verdict and the reward.

Length limits. Turn ``k`` of a trajectory may generate ``min(max_new_tokens[k],
max_total_length - current length)`` tokens. The engine call uses the largest such budget of
the batch and each sample is then cut to its own budget (cut samples get
``finish_reason="length"``); since samples are generated autoregressively with per-sample
seeds, the kept tokens are the ones a call with the smaller budget would have produced.
A turn with no budget left is not run (``finish_reason="not_run"``, empty text fed to the
episode). A trajectory is ``truncated`` when its final turn was not run, or ended by length
(its own ``max_new_tokens`` or the total limit) without a valid verdict; a truncated
trajectory gets ``rule.malformed`` (docs/design.md §5: over-length = malformed) and its verdict's
``format_error`` says why. Sequences are cut to ``max_total_length`` tokens (only template
tokens appended after the last generated turn can exceed it). A turn 1 that ends by length
does not by itself truncate: turn 2 still runs (as in the reference rollout) and a valid
verdict there is rewarded normally.

Randomness: turn ``k`` is called with seed ``params.seed + k`` and each sample's stream is
derived from (seed, its input ids, its index) by the engine, so a rollout is reproducible
and independent of batching. Every turn goes through :func:`generate_distinct`: identical
inputs are sent as ``n`` samples of one prompt, so they get independent samples. At turn 1
these are a group's ``n`` copies of its prompt; at later turns, trajectories whose earlier
outputs coincide (otherwise their verdicts would be equal and the group's GRPO advantages
zero).
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

from megatron_brrm.judge import RewardRule

from .chat import check_template_splice, continuation_ids, followup_suffix_text, render_prompt_ids
from .engine import GenerationEngine, GenerationOutput, SamplingParams
from .trajectory import Trajectory

_PAIR_FIELDS = ("id", "context", "response1", "response2", "preference")


@dataclass
class RolloutParams:
    """Sampling and length settings of a rollout.

    Attributes:
        n: samples per pair (the GRPO group size G).
        temperature, top_p: sampling settings of every turn.
        max_new_tokens: generated-token cap per turn (an int applies to every turn).
        max_total_length: cap on a trajectory's total tokens (prompt + all turns).
        seed: base seed (turn k uses ``seed + k``); ``None`` = unseeded.
    """

    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: Union[int, Sequence[int]] = (4096, 4096)
    max_total_length: int = 16384
    seed: Optional[int] = 0

    def turn_cap(self, turn: int, num_turns: int) -> int:
        """``max_new_tokens`` of 0-based ``turn``.

        Raises:
            ValueError: a per-turn list shorter than ``num_turns``.
        """
        if isinstance(self.max_new_tokens, int):
            return int(self.max_new_tokens)
        caps = list(self.max_new_tokens)
        if len(caps) < num_turns:
            raise ValueError(f"RolloutParams.max_new_tokens has {len(caps)} entries but the protocol has "
                             f"{num_turns} turns; give one cap per turn")
        return int(caps[turn])

    def validate(self) -> None:
        """Raise ``ValueError`` naming a bad field."""
        if int(self.n) < 1:
            raise ValueError(f"RolloutParams.n must be >= 1, got {self.n}")
        if int(self.max_total_length) < 1:
            raise ValueError(f"RolloutParams.max_total_length must be >= 1, got {self.max_total_length}")
        caps = [self.max_new_tokens] if isinstance(self.max_new_tokens, int) else list(self.max_new_tokens)
        if any(int(c) < 1 for c in caps):
            raise ValueError(f"RolloutParams.max_new_tokens entries must be >= 1, got {self.max_new_tokens}")

    @classmethod
    def from_config(cls, rollout_cfg, n: int, seed: Optional[int] = None) -> "RolloutParams":
        """From a ``RolloutConfig`` (attributes ``temperature``, ``top_p``, ``max_new_tokens_turn1/2``,
        ``max_total_sequence_length``, ``seed``) and the group size ``n`` (``grpo.num_generations``)."""
        return cls(n=n, temperature=rollout_cfg.temperature, top_p=rollout_cfg.top_p,
                   max_new_tokens=(rollout_cfg.max_new_tokens_turn1, rollout_cfg.max_new_tokens_turn2),
                   max_total_length=rollout_cfg.max_total_sequence_length,
                   seed=rollout_cfg.seed if seed is None else seed)


class _State:
    """Mutable bookkeeping of one trajectory during the rollout."""

    def __init__(self, pair_index: int, sample_index: int, prompt: List[int], episode):
        self.pair_index = pair_index
        self.sample_index = sample_index
        self.prompt_length = len(prompt)
        self.ids = list(prompt)
        self.mask = [0] * len(prompt)
        self.lps = [0.0] * len(prompt)
        self.episode = episode
        self.turn_lengths: List[int] = []
        self.spans: List[Tuple[int, int]] = []
        self.texts: List[str] = []
        self.finish: List[str] = []
        self.capped_by_total: List[bool] = []
        self.last_gen: List[int] = []

    def add_generated(self, out: GenerationOutput, budget: int, cap: int, tokenizer) -> None:
        ids, lps, reason, text = list(out.token_ids), list(out.logprobs), out.finish_reason, out.text
        if len(lps) != len(ids):
            raise RuntimeError(f"engine returned {len(lps)} logprobs for {len(ids)} tokens; rollouts need "
                               f"SamplingParams(logprobs=True) honoured")
        if len(ids) > budget:
            ids, lps, reason = ids[:budget], lps[:budget], "length"
            text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        start = len(self.ids)
        self.ids += ids
        self.mask += [1] * len(ids)
        self.lps += [float(x) for x in lps]
        self.spans.append((start, start + len(ids)))
        self.turn_lengths.append(len(ids))
        self.texts.append(text)
        self.finish.append(reason)
        self.capped_by_total.append(budget < cap)
        self.last_gen = ids

    def skip_turn(self) -> None:
        n = len(self.ids)
        self.spans.append((n, n))
        self.turn_lengths.append(0)
        self.texts.append("")
        self.finish.append("not_run")
        self.capped_by_total.append(True)
        self.last_gen = []

    def add_context(self, ids: List[int]) -> None:
        self.ids += ids
        self.mask += [0] * len(ids)
        self.lps += [0.0] * len(ids)


def _check_pairs(pairs) -> None:
    for i, p in enumerate(pairs):
        missing = [f for f in _PAIR_FIELDS if not hasattr(p, f)]
        if missing:
            raise TypeError(f"rollout: pair {i} ({type(p).__name__}) lacks attribute(s) {missing}; "
                            f"pairs need {list(_PAIR_FIELDS)} (e.g. data.schema.PreferencePair)")


def rollout(engine: GenerationEngine, protocol, pairs: Sequence, params: RolloutParams, rule: RewardRule,
            group_offset: int = 0) -> List[Trajectory]:
    """Sample ``params.n`` judge trajectories per pair; see the module docstring for the rules.

    Args:
        engine: any :class:`GenerationEngine` (its ``tokenizer`` renders the chat template).
        protocol: a ``megatron_brrm.judge.JudgeProtocol`` (``num_turns`` 1 or more).
        pairs: preference pairs (duck-typed, see module docstring).
        params: sampling and length settings.
        rule: reward constants passed to every episode (and used for truncation).
        group_offset: added to the pair index to form ``group_id`` (unique across batches).

    Returns:
        ``len(pairs) * params.n`` trajectories, pair-major (``[pair0 s0, pair0 s1, ...]``).

    Raises:
        TypeError: a pair lacks a required attribute.
        ValueError: bad params, a label not 1/2, or a chat template that cannot be spliced.
        RuntimeError: the engine broke its contract (missing logprobs, wrong output count).
    """
    params.validate()
    _check_pairs(pairs)
    tok = engine.tokenizer
    eos = engine.abilities.eos_token_ids
    num_turns = int(protocol.num_turns)
    max_total = int(params.max_total_length)
    n = int(params.n)

    histories = [protocol.turn1_messages(p.context, p.response1, p.response2) for p in pairs]
    prompts = [render_prompt_ids(tok, h) for h in histories]
    states = [_State(i, j, prompts[i], protocol.new_episode(label=p.preference, rule=rule))
              for i, p in enumerate(pairs) for j in range(n)]
    too_long = [str(p.id) for p, pr in zip(pairs, prompts) if len(pr) >= max_total]
    if too_long:
        warnings.warn(f"rollout: {len(too_long)} pair(s) have a turn-1 prompt of >= max_total_length={max_total} "
                      f"tokens and get truncated, malformed trajectories: {too_long[:5]}; filter them with "
                      f"data.max_prompt_tokens")
    suffix_cache: Dict[Tuple[int, int, str], str] = {}
    pair_histories: Dict[Tuple[int, int], List[dict]] = {}

    for turn in range(num_turns):
        cap = params.turn_cap(turn, num_turns)
        runnable = []
        for s in states:
            budget = min(cap, max_total - len(s.ids))
            if budget < 1:
                s.skip_turn()
            else:
                runnable.append((s, budget))
        if runnable:
            sp = SamplingParams(n=1, temperature=params.temperature, top_p=params.top_p,
                                max_new_tokens=max(b for _, b in runnable), stop=list(protocol.stop_strings(turn)),
                                seed=None if params.seed is None else int(params.seed) + turn, logprobs=True)
            flat = generate_distinct(engine, [s.ids for s, _ in runnable], sp, [s.pair_index for s, _ in runnable])
            for (s, budget), out in zip(runnable, flat):
                s.add_generated(out, budget, cap, tok)
        for s in states:
            step = s.episode.step(s.texts[turn])
            if step.done:
                continue
            if not isinstance(step.next_message, dict) or "content" not in step.next_message:
                raise RuntimeError(f"protocol {getattr(protocol, 'name', protocol)!r} returned no user message before "
                                   f"turn {turn + 1} (got {step.next_message!r}); multi-turn protocols must give one")
            key = (s.pair_index, turn + 1, step.next_message["content"])
            if key not in suffix_cache:
                hist = pair_histories.get((s.pair_index, turn), histories[s.pair_index])
                suffix_cache[key] = followup_suffix_text(tok, hist, step.next_message)
                check_template_splice(tok, suffix_cache[key], eos)
                pair_histories[(s.pair_index, turn + 1)] = hist + [{"role": "assistant", "content": "..."},
                                                                   dict(step.next_message)]
            s.add_context(continuation_ids(tok, suffix_cache[key], s.last_gen, eos))

    return [_finish(s, pairs[s.pair_index], group_offset, max_total, rule, num_turns) for s in states]


def generate_distinct(engine: GenerationEngine, inputs: List[List[int]], sp: SamplingParams,
                       groups: Sequence[int]) -> List[GenerationOutput]:
    """One sample per input, where equal inputs get *different* samples.

    Engines derive each sample's random stream from (seed, input ids, sample index), so two
    equal inputs sent as two ``n=1`` requests would get the same sample. Equal inputs are
    therefore sent once, as ``n = multiplicity`` samples of one prompt (one engine call per
    distinct multiplicity; ``sp.n`` is replaced), so they are independent draws. Turn 1 uses
    it for the ``n`` samples of each group; later turns need it for every group whose
    earlier outputs coincide (a confident or low-temperature judge), whose verdicts would
    otherwise all be equal and whose advantages would silently be zero. ``groups`` (the pair
    index of each input) travels to the engine as ``group_ids``, so a fleet keeps a group on
    one engine.

    Returns:
        ``len(inputs)`` outputs, in input order.

    Raises:
        RuntimeError: the engine returned the wrong number of samples.
    """
    slots: Dict[Tuple[int, ...], List[int]] = {}
    for k, ids in enumerate(inputs):
        slots.setdefault(tuple(ids), []).append(k)
    by_count: Dict[int, List[Tuple[int, ...]]] = {}
    for key, ks in slots.items():
        by_count.setdefault(len(ks), []).append(key)
    flat: List[Optional[GenerationOutput]] = [None] * len(inputs)
    for count in sorted(by_count):
        keys = by_count[count]
        outs = engine.generate([list(k) for k in keys], dataclasses.replace(sp, n=count),
                               group_ids=[groups[slots[k][0]] for k in keys])
        if len(outs) != len(keys) or any(len(o) != count for o in outs):
            raise RuntimeError(f"engine returned {[len(o) for o in outs]} samples for {len(keys)} prompts x n={count}")
        for key, samples in zip(keys, outs):
            for k, out in zip(slots[key], samples):
                flat[k] = out
    return flat  # type: ignore[return-value]


def _finish(s: _State, pair, group_offset: int, max_total: int, rule: RewardRule, num_turns: int) -> Trajectory:
    ep = s.episode
    verdict, reward = ep.verdict, ep.reward
    last = num_turns - 1
    reason = s.finish[last]
    truncated = reason == "not_run" or (reason == "length" and verdict.format_error is not None)
    if truncated:
        why = ("no room left for the final turn under max_total_length" if reason == "not_run" else
               "the final turn hit max_total_length" if s.capped_by_total[last] else
               "the final turn hit max_new_tokens")
        verdict = dataclasses.replace(verdict, preference=None,
                                      format_error=f"truncated: {why}; {verdict.format_error}")
        reward = rule.malformed
    return Trajectory(
        group_id=group_offset + s.pair_index, sample_index=s.sample_index, pair_id=str(pair.id),
        label=int(pair.preference), token_ids=s.ids[:max_total], loss_mask=s.mask[:max_total],
        rollout_logprobs=s.lps[:max_total], prompt_length=min(s.prompt_length, max_total), turn_lengths=list(s.turn_lengths),
        turn_spans=list(s.spans), turn_texts=list(s.texts), finish_reasons=list(s.finish), reward=float(reward),
        verdict=verdict, turn1=ep.turn1, truncated=truncated,
    )
