"""Judge traces for SFT: synthetic format-correct conversations and their token layout.

A *trace* is one judge conversation in the standard chat format, one JSON object per JSONL
line: ``{"messages": [{"role": "user"|"assistant"|"system", "content": str}, ...]}``.
Assistant turns are trained on (loss mask 1), everything else is context.

:func:`tokenize_trace` lays a trace out in exactly the token layout the two-turn rollout
produces (:mod:`.chat`): the first prompt rendered by the chat template with the generation
prompt, each assistant turn as its content tokens followed by the EOS token, and each later
user turn spliced in by :func:`.chat.continuation_ids`. SFT warm starts (RM-R1-style
distillation of judge traces) therefore train on the same token sequences GRPO samples.

:func:`synthetic_trace` writes a well-formed BR-RM conversation for a preference pair with
the protocol's own ``format_turn_output``: it teaches the output format. Its verdict is
either the pair's label (``verdict="label"``, distillation of correct answers) or a seeded
coin flip (``verdict="random"``, format only: accuracy stays at chance, which is what the
GRPO learning check starts from). ``style="short"`` writes one focus dimension and one-word
analyses: a well-formed output in ~100 generated tokens of the tiny tokenizer instead of ~300,
so a tiny model learns the format in fewer SFT steps and has fewer places to break it.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Sequence, Tuple, Union

from megatron_brrm.judge import DIMENSIONS

from .chat import continuation_ids, followup_suffix_text, render_prompt_ids

Message = Dict[str, str]


class TraceError(ValueError):
    """A malformed trace (the message names the file and line, or the trace index)."""


TRACE_STYLES = ("full", "short")


def synthetic_trace(protocol, pair, rng: random.Random, verdict: str = "random", style: str = "full") -> List[Message]:
    """A format-correct judge conversation for ``pair`` (``.context``, ``.response1``, ``.response2``, ``.preference``).

    Args:
        protocol: a :class:`megatron_brrm.judge.JudgeProtocol`.
        rng: source of the dimension choice and (``verdict="random"``) the verdict.
        verdict: ``"label"`` (the pair's preference) or ``"random"``.
        style: ``"full"`` (1-3 random focus dimensions, the protocol's placeholder analyses) or
            ``"short"`` (the first dimension, analyses "None." then "Checked.").

    Raises:
        ValueError: unknown ``verdict`` or ``style``.
    """
    if verdict not in ("label", "random"):
        raise ValueError(f"verdict must be 'label' or 'random', got {verdict!r}")
    if style not in TRACE_STYLES:
        raise ValueError(f"style must be one of {TRACE_STYLES}, got {style!r}")
    pref = pair.preference if verdict == "label" else rng.choice((1, 2))
    messages = list(protocol.turn1_messages(pair.context, pair.response1, pair.response2))
    for turn in range(protocol.num_turns):
        if turn > 0:
            messages.append(protocol.followup_message(turn))
        kwargs = {"preference": pref}
        if turn == 0 and protocol.num_turns > 1:
            kwargs["dimensions"] = [DIMENSIONS[0]] if style == "short" else rng.sample(list(DIMENSIONS), rng.randint(1, 3))
        if style == "short":
            kwargs["analysis1"] = kwargs["analysis2"] = "None." if turn == 0 else "Checked."
        messages.append({"role": "assistant", "content": protocol.format_turn_output(turn, **kwargs)})
    return messages


def tokenize_trace(tokenizer, messages: Sequence[Message], eos_token_id: int) -> Tuple[List[int], List[int]]:
    """Token ids and loss mask of a trace, in the rollout's token layout (module docstring).

    Returns:
        ``(token_ids, loss_mask)``, equal lengths; mask 1 on assistant content tokens and on
        the EOS that closes each assistant turn.

    Raises:
        TraceError: the trace does not start with user/system turns followed by alternating
            assistant and user turns ending with an assistant turn.
    """
    first = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), None)
    if first is None or first == 0 or messages[-1].get("role") != "assistant":
        raise TraceError("a trace needs user turn(s) first and must end with an assistant turn")
    ids = render_prompt_ids(tokenizer, list(messages[:first]))
    mask = [0] * len(ids)
    i = first
    while i < len(messages):
        if messages[i].get("role") != "assistant":
            raise TraceError(f"message {i}: expected an assistant turn, got {messages[i].get('role')!r}")
        gen = list(tokenizer(messages[i]["content"], add_special_tokens=False)["input_ids"]) + [int(eos_token_id)]
        ids += gen
        mask += [1] * len(gen)
        if i + 1 < len(messages):
            if messages[i + 1].get("role") != "user" or i + 2 >= len(messages):
                raise TraceError(f"message {i + 1}: expected a user turn followed by an assistant turn")
            suffix = followup_suffix_text(tokenizer, list(messages[:i]), messages[i + 1])
            cont = continuation_ids(tokenizer, suffix, gen, [eos_token_id])
            ids += cont
            mask += [0] * len(cont)
        i += 2
    return ids, mask


def write_traces(path: str | Path, traces: Iterable[Union[List[Message], Dict[str, Any]]]) -> int:
    """Write traces as JSONL (``{"messages": [...]}`` per line); returns the count.

    A trace is a message list, or a dict holding ``"messages"`` and other JSON-serialisable
    keys (provenance such as ``"meta"``), which are written on the same line and ignored by
    :func:`read_traces`. The file is written to ``<path>.tmp`` and renamed at the end.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for trace in traces:
            row = dict(trace) if isinstance(trace, dict) else {"messages": trace}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def read_traces(path: str | Path) -> Iterator[List[Message]]:
    """Read a JSONL trace file; a bad line raises :class:`TraceError` naming file and line."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TraceError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            msgs = row.get("messages") if isinstance(row, dict) else None
            if not isinstance(msgs, list) or not all(
                    isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in ("system", "user", "assistant")
                    for m in msgs):
                raise TraceError(f"{path}:{lineno}: expected {{\"messages\": [{{\"role\": ..., \"content\": ...}}, ...]}}")
            yield msgs
