"""Adapters that make several pairs from one prompt group, and the generic column loader.

* PRM800K step ratings in the "PRM800K+ stepwise-critic" format (``prm800k``, SOURCES.md
  section 12): one row per rated step: ``instruction``, ``responses`` (earlier steps),
  ``next_response``, ``rating`` (-1/0/+1/null), ``is_human_response``, ...
* NVIDIA HelpSteer v1 (``helpsteer``, section 9): one response per row with Likert ratings
  ``helpfulness``, ``correctness``, ``coherence``, ``complexity``, ``verbosity`` (0-4).
* ``generic``: any ``prompt``/``chosen``/``rejected`` table (column names configurable).
"""
from __future__ import annotations

from itertools import combinations
from typing import Dict, Iterator, List, Optional, Tuple

from ..io import RawRecord
from ..schema import PreferencePair
from .base import AdapterRun, FieldError, get_field, get_label_int, messages_field

PRM_STEPS_HEADER = "Steps so far:"


def _prm_row(row: dict) -> Tuple[str, Tuple[str, ...], str, Optional[int]]:
    instruction = get_field(row, "instruction", nonempty=True)
    steps = get_field(row, "responses", list)
    if any(not isinstance(s, str) for s in steps):
        raise FieldError("field 'responses' must be a list of strings")
    nxt = get_field(row, "next_response")
    rating = row.get("rating") if "rating" in row else None
    if "rating" not in row:
        raise FieldError("missing field 'rating'")
    if rating is not None and rating == rating:  # NaN from parquet means unrated, like null
        rating = get_label_int(row, "rating", (-1, 0, 1))
    else:
        rating = None
    return instruction, tuple(steps), nxt, rating


def prm800k(run: AdapterRun, steps_in: str = "context", max_pairs_per_group: Optional[int] = None
            ) -> Iterator[PreferencePair]:
    """PRM800K step-rating rows -> step-level pairs (domain ``math``).

    Rows are grouped by their prefix (``instruction``, ``responses``). Inside a group every next
    step rated +1 is preferred over every next step rated -1 (SOURCES.md section 12), in row
    order, at most ``max_pairs_per_group`` pairs per group (``None``: all). Rows rated 0 or null
    and human-written hint steps take part in no pair (rule ``unpaired_rating``); rated rows
    whose group lacks the opposite rating are counted as rule ``no_opposite_rating``.

    ``steps_in="context"`` (default): the user turn is the problem followed by
    ``"Steps so far:"`` and the earlier steps (one per line), and the responses are the two
    candidate next steps. ``steps_in="response"``: the user turn is the problem and each
    response is the earlier steps plus the candidate step (the Math-Step-DPO convention).
    Id: ``prm800k:<file tag>:<first line of the group>#<line of +1 step>-<line of -1 step>``.

    Raises:
        ValueError: unknown ``steps_in``.
    """
    if steps_in not in ("context", "response"):
        raise ValueError(f"prm800k option steps_in must be 'context' or 'response', got {steps_in!r}")
    groups: Dict[Tuple[str, Tuple[str, ...]], List[Tuple[RawRecord, str, Optional[int]]]] = {}
    for rec in run.records():
        with run.guard(rec.where):
            instruction, steps, nxt, rating = _prm_row(rec.value)
            if rating in (None, 0) or rec.value.get("is_human_response") is True:
                run.filtered("unpaired_rating")
                continue
            groups.setdefault((instruction, steps), []).append((rec, nxt, rating))
    for (instruction, steps), rows in groups.items():
        good = [r for r in rows if r[2] == 1]
        bad = [r for r in rows if r[2] == -1]
        if not good or not bad:
            run.filtered("no_opposite_rating", len(rows))
            continue
        group_key = f"{run.tag}:{rows[0][0].index}"
        if steps_in == "context" and steps:
            context = [{"role": "user", "content": f"{instruction}\n\n{PRM_STEPS_HEADER}\n" + "\n".join(steps)}]
            prefix = ""
        else:
            context = [{"role": "user", "content": instruction}]
            prefix = "".join(s + "\n" for s in steps) if steps_in == "response" else ""
        made = 0
        for (g_rec, g_text, _), (b_rec, b_text, _) in ((g, b) for g in good for b in bad):
            if max_pairs_per_group is not None and made >= max_pairs_per_group:
                run.filtered("group_pair_cap")
                continue
            where = f"{g_rec.where} (paired with line {b_rec.index})"
            with run.guard(where):
                pair = run.make_pair(f"{group_key}#{g_rec.index}-{b_rec.index}", context, prefix + g_text,
                                     prefix + b_text, domain="math", where=where,
                                     fields=("next_response (+1)", "next_response (-1)"))
                if pair is not None:
                    made += 1
                    yield pair


HELPSTEER_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def helpsteer(run: AdapterRun, attribute: str = "helpfulness") -> Iterator[PreferencePair]:
    """HelpSteer v1 rows -> pairs of responses to the same prompt (domain ``general``).

    Rows are grouped by identical ``prompt``. Every two responses of a group form a pair; the one
    with the higher ``attribute`` rating (default ``helpfulness``, the usual HelpSteer/HelpSteer2
    binarization) is chosen; equal ratings are dropped (rule ``tie``) and prompts with a single
    response give no pair (rule ``single_response``). Id:
    ``helpsteer:<file tag>:<first line of the prompt>#<line a>-<line b>``.

    Raises:
        ValueError: unknown ``attribute``.
    """
    if attribute not in HELPSTEER_ATTRIBUTES:
        raise ValueError(f"helpsteer option attribute must be one of {HELPSTEER_ATTRIBUTES}, got {attribute!r}")
    groups: Dict[str, List[Tuple[RawRecord, str, int]]] = {}
    for rec in run.records():
        with run.guard(rec.where):
            prompt = get_field(rec.value, "prompt", nonempty=True)
            response = get_field(rec.value, "response")
            score = get_label_int(rec.value, attribute, (0, 1, 2, 3, 4))
            groups.setdefault(prompt, []).append((rec, response, score))
    for prompt, rows in groups.items():
        if len(rows) == 1:
            run.filtered("single_response")
            continue
        group_key = f"{run.tag}:{rows[0][0].index}"
        for a, b in combinations(rows, 2):
            if a[2] == b[2]:
                run.filtered("tie")
                continue
            win, lose = (a, b) if a[2] > b[2] else (b, a)
            where = f"{win[0].where} (paired with line {lose[0].index})"
            with run.guard(where):
                pair = run.make_pair(f"{group_key}#{a[0].index}-{b[0].index}", [{"role": "user", "content": prompt}],
                                     win[1], lose[1], domain="general", where=where,
                                     fields=(f"response (line {win[0].index})", f"response (line {lose[0].index})"))
                if pair is not None:
                    yield pair


def generic(run: AdapterRun, prompt_column: str = "prompt", chosen_column: str = "chosen",
            rejected_column: str = "rejected", id_column: str = "", domain: str = "general",
            domain_column: str = "") -> Iterator[PreferencePair]:
    """A ``prompt``/``chosen``/``rejected`` table (JSONL, JSON list or parquet) -> pairs.

    The prompt column holds either a string (one user turn) or a list of ``{role, content}``
    messages ending with a user turn. The chosen/rejected columns hold strings. Column names are
    options; ``id_column`` (if set) gives the id key, else ``<file tag>:<line>``; the domain is
    ``domain_column``'s value if set, else ``domain``.
    """
    for rec in run.records():
        row, where = rec.value, rec.where
        with run.guard(where):
            if isinstance(row.get(prompt_column), list):
                context = messages_field(row, prompt_column)
            else:
                context = [{"role": "user", "content": get_field(row, prompt_column, nonempty=True)}]
            key = str(get_field(row, id_column, (str, int))) if id_column else f"{run.tag}:{rec.index}"
            dom = get_field(row, domain_column, nonempty=True) if domain_column else domain
            pair = run.make_pair(key, context, get_field(row, chosen_column), get_field(row, rejected_column),
                                 domain=dom, where=where, fields=(chosen_column, rejected_column))
            if pair is not None:
                yield pair
