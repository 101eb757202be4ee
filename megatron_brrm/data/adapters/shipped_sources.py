"""Adapters for the preference sources shipped in ``samples/`` (schemas: SOURCES.md sections 7-11).

* Anthropic HH-RLHF (``hh_rlhf``): ``chosen``/``rejected`` whole transcripts
  ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` sharing everything up to the final Assistant turn.
* UltraFeedback binarized, processed trl-lib copy (``ultrafeedback_binarized``): ``prompt``,
  ``chosen``, ``rejected`` strings, ``source_index``, ``metadata`` {``score_chosen``,
  ``score_rejected``}; also the raw trl-lib form where ``chosen``/``rejected`` are message lists.
* PKU-SafeRLHF (``pku_saferlhf``): ``prompt``, ``response_0``, ``response_1``,
  ``better_response_id`` (helpfulness) and ``safer_response_id`` (safety), each 0/1.
* LMSYS Chatbot Arena 55k (``chatbot_arena``): ``id``, JSON-encoded per-turn lists ``prompt``,
  ``response_a``, ``response_b`` (elements may be null), ``winner_model_a``/``_b``/``winner_tie``.
"""
from __future__ import annotations

import json
import re
from typing import Iterator, List, Tuple

from ..schema import PreferencePair
from .base import AdapterRun, FieldError, get_field, get_label_int, messages_field
from .brrm_sources import split_conversations

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_hh_transcript(text: str, name: str) -> List[Tuple[str, str]]:
    """Split an HH-RLHF transcript into ``[(role, content), ...]`` (roles ``user``/``assistant``).

    Turns start at ``"\\n\\nHuman:"`` / ``"\\n\\nAssistant:"``; contents are stripped. A marker
    without the two preceding newlines is left inside the text (the source has such lines).

    Raises:
        FieldError: text before the first marker, no turn at all, or no final Assistant turn.
    """
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise FieldError(f"field '{name}' must start with '\\n\\nHuman:', starts with {parts[0][:40]!r}")
    turns = [(_HH_ROLES[role], content.strip()) for role, content in zip(parts[1::2], parts[2::2])]
    if not turns or turns[-1][0] != "assistant":
        raise FieldError(f"field '{name}' must end with a '\\n\\nAssistant:' turn")
    return turns


def hh_rlhf(run: AdapterRun, domain: str = "") -> Iterator[PreferencePair]:
    """HH-RLHF rows -> pairs.

    The shared turns before the final Assistant turn are the context; the final Assistant turns
    of ``chosen`` and ``rejected`` are the responses (the Anthropic paper's pairing). A row whose
    transcripts differ earlier, or whose final turn is empty, is malformed. Domain: ``domain`` if
    given, else ``safety`` for files under a ``harmless-*`` folder and ``general`` otherwise.
    Id: ``hh_rlhf:<parent folder>/<file tag>:<line>`` (e.g. ``hh_rlhf:harmless-base/test:76``).
    """
    folder = run.path.parent.name
    domain = domain or ("safety" if "harmless" in folder else "general")
    for rec in run.records():
        row, where = rec.value, rec.where
        with run.guard(where):
            chosen = parse_hh_transcript(get_field(row, "chosen", nonempty=True), "chosen")
            rejected = parse_hh_transcript(get_field(row, "rejected", nonempty=True), "rejected")
            if [t for t in chosen[:-1]] != [t for t in rejected[:-1]]:
                raise FieldError("'chosen' and 'rejected' transcripts differ before the final Assistant turn")
            context = [{"role": r, "content": c} for r, c in chosen[:-1]]
            pair = run.make_pair(f"{folder}/{run.tag}:{rec.index}", context, chosen[-1][1], rejected[-1][1],
                                 domain=domain, where=where)
            if pair is not None:
                yield pair


def ultrafeedback_binarized(run: AdapterRun, keep_ties: bool = False) -> Iterator[PreferencePair]:
    """UltraFeedback binarized rows -> pairs (domain ``general``).

    Processed form: ``prompt`` is the user turn, ``chosen``/``rejected`` the replies. Raw trl-lib
    form (``chosen``/``rejected`` message lists): the shared turns are the context.
    Ties: when ``metadata.score_chosen == metadata.score_rejected`` the GPT-4 ratings express no
    preference; such rows are dropped and counted as rule ``tie`` unless ``keep_ties`` (the
    ``chosen`` of a tie is an arbitrary pick of the binarization). ``score_chosen <
    score_rejected`` contradicts the label and is malformed. Id:
    ``ultrafeedback_binarized:<source_index>`` (the upstream row), else ``<file tag>:<line>``.
    """
    for rec in run.records():
        row, where = rec.value, rec.where
        with run.guard(where):
            if isinstance(row.get("chosen"), list):
                context, chosen, rejected = split_conversations(messages_field(row, "chosen"),
                                                                messages_field(row, "rejected"))
            else:
                context = [{"role": "user", "content": get_field(row, "prompt", nonempty=True)}]
                chosen, rejected = get_field(row, "chosen"), get_field(row, "rejected")
            meta = row.get("metadata") if isinstance(row.get("metadata"), dict) else row
            if "score_chosen" in meta or "score_rejected" in meta:
                sc = get_field(meta, "score_chosen", (int, float))
                sr = get_field(meta, "score_rejected", (int, float))
                if sc < sr:
                    raise FieldError(f"'score_chosen' {sc} < 'score_rejected' {sr}: the label contradicts the scores")
                if sc == sr and not keep_ties:
                    run.filtered("tie")
                    continue
            key = str(row["source_index"]) if isinstance(row.get("source_index"), int) else f"{run.tag}:{rec.index}"
            pair = run.make_pair(key, context, chosen, rejected, domain="general", where=where)
            if pair is not None:
                yield pair


def pku_saferlhf(run: AdapterRun, preference: str = "safer") -> Iterator[PreferencePair]:
    """PKU-SafeRLHF rows -> pairs (domain ``safety``).

    ``preference="safer"`` (default) uses ``safer_response_id``; ``"better"`` uses
    ``better_response_id`` (helpfulness). The two disagree on about a quarter of the rows
    (SOURCES.md section 11), so the choice changes the labels. Id:
    ``pku_saferlhf:<file tag>:<line>``.

    Raises:
        ValueError: ``preference`` is neither ``safer`` nor ``better``.
    """
    if preference not in ("safer", "better"):
        raise ValueError(f"pku_saferlhf option preference must be 'safer' or 'better', got {preference!r}")
    label_field = f"{preference}_response_id"
    for rec in run.records():
        row, where = rec.value, rec.where
        with run.guard(where):
            prompt = get_field(row, "prompt", nonempty=True)
            responses = (get_field(row, "response_0"), get_field(row, "response_1"))
            best = get_label_int(row, label_field, (0, 1))
            pair = run.make_pair(f"{run.tag}:{rec.index}", [{"role": "user", "content": prompt}],
                                 responses[best], responses[1 - best], domain="safety", where=where,
                                 fields=(f"response_{best}", f"response_{1 - best}"))
            if pair is not None:
                yield pair


def _turn_list(row: dict, name: str) -> list:
    value = get_field(row, name, (str, list))
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise FieldError(f"field '{name}' must be a JSON-encoded list of strings ({exc.msg})") from None
    if not isinstance(value, list) or not value:
        raise FieldError(f"field '{name}' must be a non-empty list of turns")
    return value


def chatbot_arena(run: AdapterRun) -> Iterator[PreferencePair]:
    """Chatbot Arena 55k rows -> pairs (domain ``general``).

    Exactly one of ``winner_model_a``/``winner_model_b``/``winner_tie`` must be 1; ties are dropped
    (rule ``tie``). Single-turn rows: the prompt is the user turn and the two replies the
    responses. Multi-turn rows: each model answered its own earlier turns, so the conversations
    share a context only when the earlier replies are identical; otherwise the row is dropped
    (rule ``multi_turn``). A null or empty final reply is malformed. Id: ``chatbot_arena:<id>``.
    """
    for rec in run.records():
        row, where = rec.value, rec.where
        with run.guard(where):
            key = str(get_field(row, "id", (int, str)))
            prompts, resp_a, resp_b = (_turn_list(row, k) for k in ("prompt", "response_a", "response_b"))
            flags = [get_label_int(row, k, (0, 1)) for k in ("winner_model_a", "winner_model_b", "winner_tie")]
            if sum(flags) != 1:
                raise FieldError(f"exactly one of winner_model_a/winner_model_b/winner_tie must be 1, got {flags}")
            if not (len(prompts) == len(resp_a) == len(resp_b)):
                raise FieldError(f"'prompt', 'response_a', 'response_b' have different turn counts "
                                 f"({len(prompts)}, {len(resp_a)}, {len(resp_b)})")
            if any(not isinstance(p, str) or not p.strip() for p in prompts):
                raise FieldError("field 'prompt' has a null or empty turn")
            if flags[2]:
                run.filtered("tie")
                continue
            if resp_a[:-1] != resp_b[:-1] or any(not isinstance(r, str) for r in resp_a[:-1]):
                run.filtered("multi_turn")
                continue
            context = []
            for p, r in zip(prompts[:-1], resp_a[:-1]):
                context += [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
            context.append({"role": "user", "content": prompts[-1]})
            a_wins = flags[0] == 1
            chosen, rejected = (resp_a[-1], resp_b[-1]) if a_wins else (resp_b[-1], resp_a[-1])
            names = ("response_a", "response_b") if a_wins else ("response_b", "response_a")
            pair = run.make_pair(key, context, chosen, rejected, domain="general", where=where, fields=names)
            if pair is not None:
                yield pair
