"""Teachers: what writes the judge traces that distillation keeps or rejects.

A teacher turns preference pairs into ``n`` judge conversations each (:class:`TeacherSample`:
the assistant text of every turn and how each turn ended), through the judge protocol:

* :class:`EngineTeacher`: any generation engine of this project (HF or vLLM, built by
  :func:`megatron_brrm.rollout.factory.make_engine`) through the training rollout
  (:func:`megatron_brrm.rollout.two_turn.rollout`: turn 2 spliced after the turn-1 tokens,
  stop strings kept, length limits applied as in GRPO).
* :class:`HTTPTeacher`: an OpenAI-compatible chat endpoint. Each turn is one
  ``/chat/completions`` request holding the conversation so far: the protocol's opening
  messages, then, from turn 2 on, the teacher's previous answer as an ``assistant`` message
  followed by the protocol's next ``user`` message. The answer is cut after the first stop
  string of the turn (BR-RM turn 2: ``[The End of Ranking Score]``), which is kept, as the
  engines do (vLLM ``include_stop_str_in_output``).
"""
from __future__ import annotations

import concurrent.futures as futures
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from megatron_brrm.judge import RewardRule
from megatron_brrm.rollout.trajectory import turn_contents

from .openai_chat import OpenAIChatClient

# finish reasons servers report for a turn that ended by itself / on the token limit
# (OpenAI and vLLM: "stop" / "length"; TGI: "eos_token", "stop_sequence"; Anthropic-style gateways: "end_turn", "max_tokens")
_NATURAL_END = {"stop", "eos", "eos_token", "stop_sequence", "end_turn"}
_TOKEN_LIMIT = {"length", "max_tokens"}


def normalize_finish_reason(reason: str) -> str:
    """A server's finish reason as ``"stop"`` (ended by itself), ``"length"`` (token limit) or itself."""
    return "stop" if reason in _NATURAL_END else "length" if reason in _TOKEN_LIMIT else reason


@dataclass
class TeacherSample:
    """One judge conversation written by a teacher.

    Attributes:
        turn_texts: the assistant content of each turn (no EOS token), in order.
        finish_reasons: per turn, ``"stop"`` (EOS or stop string), ``"length"`` (token limit),
            ``"not_run"`` (no room left under the total length) or the server's reason.
    """

    turn_texts: List[str]
    finish_reasons: List[str]


def cut_at_stop(text: str, stops: Sequence[str]) -> Tuple[str, bool]:
    """``text`` up to and including the earliest occurrence of any stop string, and whether one was found."""
    best: Optional[int] = None
    for s in stops:
        k = text.find(s) if s else -1
        if k >= 0 and (best is None or k + len(s) < best):
            best = k + len(s)
    return (text, False) if best is None else (text[:best], True)


class EngineTeacher:
    """A teacher running on a generation engine through the rollout.

    Args:
        engine: a :class:`~megatron_brrm.rollout.engine.GenerationEngine`.
        protocol: the judge protocol.
        params: :class:`~megatron_brrm.rollout.two_turn.RolloutParams` (``n`` = samples per pair).
        batch_size: pairs per rollout call.
    """

    name = "engine"

    def __init__(self, engine, protocol, params, batch_size: int = 16):
        self.engine = engine
        self.protocol = protocol
        self.params = params
        self.batch_size = max(1, int(batch_size))

    def sample(self, pairs: Sequence, progress: Optional[Callable[[int], None]] = None) -> List[List[TeacherSample]]:
        """``params.n`` samples per pair (pairs need ``id``, ``context``, ``response1``,
        ``response2``, ``preference``), in pair order; ``progress(k)`` after each batch of k samples."""
        from megatron_brrm.rollout.two_turn import rollout  # lazy: keeps distill_traces.py --help fast

        eos = self.engine.abilities.eos_token_ids
        out: List[List[TeacherSample]] = []
        for start in range(0, len(pairs), self.batch_size):
            batch = list(pairs[start:start + self.batch_size])
            trajs = rollout(self.engine, self.protocol, batch, self.params, RewardRule(), group_offset=start)
            n = int(self.params.n)
            for i in range(len(batch)):
                out.append([TeacherSample(turn_contents(t, self.engine.tokenizer, eos), list(t.finish_reasons))
                            for t in trajs[i * n:(i + 1) * n]])
            if progress is not None:
                progress(len(batch) * n)
        return out


class HTTPTeacher:
    """A teacher behind an OpenAI-compatible chat endpoint (module docstring).

    Args:
        client: the endpoint client.
        protocol: the judge protocol.
        n: samples per pair (independent conversations; sample ``k`` uses ``seed + k``).
        temperature, top_p: sampling settings sent with every request.
        max_new_tokens: ``max_tokens`` of every request (per turn).
        seed: base seed (servers treat it as best effort); ``None`` sends none.
        concurrency: requests in flight (conversations run in parallel threads).
    """

    name = "http"

    def __init__(self, client: OpenAIChatClient, protocol, n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: Optional[int] = None, seed: Optional[int] = 0, concurrency: int = 8):
        self.client = client
        self.protocol = protocol
        self.n = int(n)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.concurrency = max(1, int(concurrency))

    def conversation(self, pair, sample_index: int) -> TeacherSample:
        """One judge conversation for ``pair``, turn by turn.

        Raises:
            ChatEndpointError: the endpoint failed (after its retries).
        """
        messages = list(self.protocol.turn1_messages(pair.context, pair.response1, pair.response2))
        texts: List[str] = []
        reasons: List[str] = []
        for turn in range(self.protocol.num_turns):
            if turn > 0:
                messages += [{"role": "assistant", "content": texts[-1]}, self.protocol.followup_message(turn)]
            reply = self.client.complete(messages, temperature=self.temperature, top_p=self.top_p,
                                         max_tokens=self.max_new_tokens,
                                         seed=None if self.seed is None else int(self.seed) + sample_index)
            text, stopped = cut_at_stop(reply.text, self.protocol.stop_strings(turn))
            texts.append(text)
            reasons.append("stop" if stopped else normalize_finish_reason(reply.finish_reason))
        return TeacherSample(texts, reasons)

    def sample(self, pairs: Sequence, progress: Optional[Callable[[int], None]] = None) -> List[List[TeacherSample]]:
        """``n`` samples per pair, in pair order; ``progress(1)`` after each conversation."""
        jobs = [(i, k) for i in range(len(pairs)) for k in range(self.n)]
        out: List[List[Optional[TeacherSample]]] = [[None] * self.n for _ in pairs]
        pool = futures.ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            running = {pool.submit(self.conversation, pairs[i], k): (i, k) for i, k in jobs}
            for fut in futures.as_completed(running):
                i, k = running[fut]
                out[i][k] = fut.result()
                if progress is not None:
                    progress(1)
        finally:  # on an error, drop the queued conversations instead of sending them
            pool.shutdown(wait=True, cancel_futures=True)
        return out  # type: ignore[return-value]
