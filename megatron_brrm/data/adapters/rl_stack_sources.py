"""Adapters for the preference-data layouts of NeMo-RL and verl (reward-model and DPO training).

* ``nemo_rl`` -- NeMo-RL ``PreferenceDataset`` JSONL: ``context`` (chat messages, or a string =
  one user turn) and ``completions``, a list of ``{"rank": int, "completion": [messages]}``
  where a lower rank is preferred (NeMo-RL ``nemo_rl/data/datasets/preference_datasets``).
* ``verl`` -- verl's reward-model parquet: ``chosen`` / ``rejected`` hold whole conversations,
  either chat-message lists (the shared turns are the context, the last assistant turns the
  responses) or ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` transcripts (HH-RLHF style); with a
  ``prompt_key`` column the prompt is separate and the two columns hold the responses.
* ``helpsteer3_nested`` -- the nested HelpSteer3 rows verl users train BT models on (RM-Gallery's
  ``HelpSteer3Dataset``): ``input`` = the conversation (messages, or their JSON string),
  ``output`` = two candidates ``{"answer": {"role", "content", "label": {"is_preferred": bool,
  "preference_score": number}}}`` (or its JSON string). The candidate with ``is_preferred``
  true (and the other false) is chosen, else the higher ``preference_score``; equal scores are
  a tie (dropped, rule ``tie``).

NeMo-RL's ``BinaryPreferenceDataset`` (``prompt_key`` / ``chosen_key`` / ``rejected_key``
columns) is the ``generic`` adapter with those column names. Common rules (ids, seeded
position, errors with ``file:line``) are in :mod:`.base`.
"""
from __future__ import annotations

import json
from typing import Any, Iterator, List

from ..schema import PreferencePair
from .base import AdapterRun, FieldError, get_field, messages_field
from .brrm_sources import split_conversations
from .shipped_sources import parse_hh_transcript


def _context(row: dict, name: str) -> List[dict]:
    if isinstance(row.get(name), str):
        return [{"role": "user", "content": get_field(row, name, nonempty=True)}]
    return messages_field(row, name)


def _response_text(value: Any, name: str) -> str:
    """A response given as a string, or as a completion of one assistant message."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        msg = value[0]
        if msg.get("role", "assistant") == "assistant" and isinstance(msg.get("content"), str):
            return msg["content"]
    raise FieldError(f"field '{name}' must be a string or a single assistant message "
                     f"{{'role': 'assistant', 'content': str}}, got {str(value)[:120]}")


def _json_field(row: dict, name: str, types) -> Any:
    value = row.get(name)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise FieldError(f"field '{name}' is a string but not valid JSON ({exc.msg})") from None
        row = {**row, name: value}
    return get_field(row, name, types)


def nemo_rl(run: AdapterRun) -> Iterator[PreferencePair]:
    """NeMo-RL ``PreferenceDataset`` rows -> pairs (module docstring).

    The completion with the lowest ``rank`` is chosen; every completion with a higher rank gives
    one pair against it (two completions, NeMo-RL's usual case: one pair). Several completions
    sharing the lowest rank are a tie (rule ``tie``). Id: ``nemo_rl:<file tag>:<line>`` (with
    ``#<k>`` for the k-th rejected completion when there are more than two).
    """
    for rec in run.records():
        row, where = rec.value, rec.where
        with run.guard(where):
            context = _context(row, "context")
            completions = get_field(row, "completions", list)
            if len(completions) < 2:
                raise FieldError(f"field 'completions' needs at least 2 entries, got {len(completions)}")
            ranked = []
            for k, comp in enumerate(completions):
                if not isinstance(comp, dict):
                    raise FieldError(f"field 'completions'[{k}] must be {{'rank': int, 'completion': [messages]}}")
                rank = get_field(comp, "rank", (int, float))
                if "completion" not in comp:
                    raise FieldError(f"field 'completions'[{k}]: missing field 'completion'")
                ranked.append((rank, k, _response_text(comp["completion"], f"completions[{k}].completion")))
            ranked.sort()
            best = ranked[0]
            if ranked[1][0] == best[0]:
                run.filtered("tie")
                continue
            losers = [r for r in ranked[1:] if r[0] > best[0]]
            for j, (_, k, text) in enumerate(losers):
                key = f"{run.tag}:{rec.index}" + (f"#{j}" if len(losers) > 1 else "")
                pair = run.make_pair(key, context, best[2], text, domain="general", where=where,
                                     fields=(f"completions[{best[1]}]", f"completions[{k}]"))
                if pair is not None:
                    yield pair


def verl(run: AdapterRun, prompt_key: str = "prompt", chosen_key: str = "chosen",
         rejected_key: str = "rejected") -> Iterator[PreferencePair]:
    """verl reward-model rows -> pairs (module docstring). Id: ``verl:<file tag>:<line>``."""
    for rec in run.records():
        row, where = rec.value, rec.where
        with run.guard(where):
            chosen, rejected = row.get(chosen_key), row.get(rejected_key)
            for value, name in ((chosen, chosen_key), (rejected, rejected_key)):
                if value is None:
                    raise FieldError(f"missing field '{name}'")
            if prompt_key and prompt_key in row:
                context = _context(row, prompt_key)
                c, r = _response_text(chosen, chosen_key), _response_text(rejected, rejected_key)
            elif isinstance(chosen, list) and isinstance(rejected, list):
                context, c, r = split_conversations(messages_field(row, chosen_key), messages_field(row, rejected_key),
                                                    (chosen_key, rejected_key))
            elif isinstance(chosen, str) and isinstance(rejected, str):
                ct, rt = parse_hh_transcript(chosen, chosen_key), parse_hh_transcript(rejected, rejected_key)
                if ct[:-1] != rt[:-1]:
                    raise FieldError(f"'{chosen_key}' and '{rejected_key}' transcripts differ before the final "
                                     "Assistant turn (no shared context)")
                context = [{"role": role, "content": text} for role, text in ct[:-1]]
                c, r = ct[-1][1], rt[-1][1]
            else:
                raise FieldError(f"fields '{chosen_key}' / '{rejected_key}' must both be chat-message lists or both "
                                 f"'Human:/Assistant:' transcript strings (or hold responses to a '{prompt_key}' column)")
            pair = run.make_pair(f"{run.tag}:{rec.index}", context, c, r, domain="general", where=where,
                                 fields=(chosen_key, rejected_key))
            if pair is not None:
                yield pair


def helpsteer3_nested(run: AdapterRun, input_key: str = "input", output_key: str = "output") -> Iterator[PreferencePair]:
    """Nested HelpSteer3 rows -> pairs (module docstring). Id: ``helpsteer3_nested:<file tag>:<line>``."""
    for rec in run.records():
        row, where = rec.value, rec.where
        with run.guard(where):
            context = messages_field({input_key: _json_field(row, input_key, list)}, input_key)
            outputs = _json_field(row, output_key, list)
            if len(outputs) != 2:
                raise FieldError(f"field '{output_key}' must hold 2 candidates, got {len(outputs)}")
            answers = []
            for k, out in enumerate(outputs):
                name = f"{output_key}[{k}].answer"
                answer = out.get("answer") if isinstance(out, dict) else None
                if not isinstance(answer, dict):
                    raise FieldError(f"missing field '{name}' (a dict with 'content' and 'label')")
                label = answer.get("label")
                if not isinstance(label, dict):
                    raise FieldError(f"missing field '{name}.label' (with 'is_preferred' or 'preference_score')")
                if not isinstance(answer.get("content"), str):
                    raise FieldError(f"field '{name}.content' must be a string")
                answers.append((label, answer["content"]))
            (la, a), (lb, b) = answers
            pa, pb = bool(la.get("is_preferred", False)), bool(lb.get("is_preferred", False))
            if pa != pb:
                a_wins = pa
            else:
                sa, sb = la.get("preference_score", 0), lb.get("preference_score", 0)
                if sa == sb:
                    run.filtered("tie")
                    continue
                a_wins = sa > sb
            c, r = (a, b) if a_wins else (b, a)
            names = (f"{output_key}[0].answer", f"{output_key}[1].answer")
            pair = run.make_pair(f"{run.tag}:{rec.index}", context, c, r, domain="general", where=where,
                                 fields=names if a_wins else names[::-1])
            if pair is not None:
                yield pair
