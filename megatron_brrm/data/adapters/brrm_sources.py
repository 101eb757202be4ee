"""Adapters for the four BR-RM training sources (reference: ``dataset/preprocess_data.py`` of
yzjiao/BR-RM, summarised in the project's reference notes, section 1.7; RM-R1 uses the same
Skywork / Code-Preference / Math-Step-DPO mixture).

Schemas (SOURCES.md section 5 and the dataset cards):

* ``nvidia/HelpSteer3`` (preference): ``domain`` str, ``language`` str, ``context`` list of
  ``{role, content}`` ending with a user turn, ``response1``, ``response2`` str,
  ``overall_preference`` int in -3..3 (negative: response1 better), ``individual_preference``.
* ``Skywork/Skywork-Reward-Preference-80K-v0.2``: ``chosen``, ``rejected`` full conversations
  (lists of ``{role, content}``, last turn = assistant), ``source`` str.
* ``Vezora/Code-Preference-Pairs``: ``instruction`` (the same generic coding-assistant text in
  every row), ``input`` (the actual task), ``accepted``, ``rejected``, ``ID``. The copy shipped in
  ``samples/`` has a reduced schema ``prompt`` (= instruction), ``chosen`` (= accepted),
  ``rejected`` (SOURCES.md section 4); both are accepted.
* ``xinlai/Math-Step-DPO-10K``: ``dataset``, ``prompt``, ``initial_reason_steps``, ``chosen``,
  ``rejected``, ``full_chosen``, ``full_rejected``, ``answer``.
"""
from __future__ import annotations

from typing import Iterator, List, Optional

import numpy as np

from ..schema import PreferencePair
from .base import AdapterRun, FieldError, get_field, get_label_int, messages_field

HELPSTEER3_LABELS = (-3, -2, -1, 0, 1, 2, 3)


def helpsteer3(run: AdapterRun) -> Iterator[PreferencePair]:
    """HelpSteer3 preference rows -> pairs.

    Rule (BR-RM recipe): ties ``overall_preference == 0`` are dropped (counted as rule ``tie``);
    the better response is ``response1`` when ``overall_preference < 0`` else ``response2``.
    The multi-turn ``context`` is kept as messages; ``domain`` is kept (``general``, ``stem``,
    ``code``, ``multilingual`` in the released data). Id: ``helpsteer3:<file tag>:<line>``
    (the dataset has no row id). The chosen response is then placed at the seeded position.
    """
    for rec in run.records():
        row, where = rec.value, rec.where
        with run.guard(where):
            context = messages_field(row, "context")
            r1 = get_field(row, "response1")
            r2 = get_field(row, "response2")
            pref = get_label_int(row, "overall_preference", HELPSTEER3_LABELS)
            domain = row.get("domain") or "general"
            if not isinstance(domain, str):
                raise FieldError(f"field 'domain' must be str, got {type(domain).__name__}")
            if pref == 0:
                run.filtered("tie")
                continue
            chosen, rejected = (r1, r2) if pref < 0 else (r2, r1)
            names = ("response1", "response2") if pref < 0 else ("response2", "response1")
            pair = run.make_pair(f"{run.tag}:{rec.index}", context, chosen, rejected, domain=domain,
                                 where=where, fields=names)
            if pair is not None:
                yield pair


def split_conversations(chosen: List[dict], rejected: List[dict], names=("chosen", "rejected")):
    """Shared context and the two final assistant turns of two full conversations.

    Returns ``(context, chosen_text, rejected_text)`` where ``context = chosen[:-1]``.

    Raises:
        FieldError: a conversation has fewer than 2 turns, does not end with an assistant turn,
            or the two conversations differ before their last turn (they would not answer the
            same context).
    """
    for conv, name in ((chosen, names[0]), (rejected, names[1])):
        if len(conv) < 2:
            raise FieldError(f"field '{name}' must hold at least a user turn and an assistant turn")
        if conv[-1]["role"] != "assistant":
            raise FieldError(f"field '{name}' must end with an assistant turn, ends with {conv[-1]['role']!r}")
    if [(m["role"], m["content"].strip()) for m in chosen[:-1]] != [(m["role"], m["content"].strip()) for m in rejected[:-1]]:
        raise FieldError(f"'{names[0]}' and '{names[1]}' differ before their last turn (no shared context)")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


SKYWORK_SAFETY_SOURCES = ("wildguard",)


def skywork80k(run: AdapterRun, exclude_sources=("magpie_ultra",)) -> Iterator[PreferencePair]:
    """Skywork-Reward-Preference-80K-v0.2 rows -> pairs.

    Rule (BR-RM and RM-R1 recipes): rows with ``source == "magpie_ultra"`` are dropped (counted
    as rule ``source=magpie_ultra``). The responses are the last (assistant) turns of ``chosen``
    and ``rejected``; the earlier turns are the context and must be the same in both.
    ``exclude_sources`` (a sequence, or a comma-separated string) sets the dropped sub-sources.
    Domain: ``safety`` for the ``wildguard`` sub-source (our mapping), else ``general``.
    Id: ``skywork80k:<file tag>:<line>``.
    """
    if isinstance(exclude_sources, str):  # from the command line: "a,b"
        exclude_sources = [x for x in exclude_sources.split(",") if x]
    excluded = set(exclude_sources or ())
    for rec in run.records():
        row, where = rec.value, rec.where
        with run.guard(where):
            source = get_field(row, "source")
            chosen = messages_field(row, "chosen")
            rejected = messages_field(row, "rejected")
            if source in excluded:
                run.filtered(f"source={source}")
                continue
            context, c, r = split_conversations(chosen, rejected)
            domain = "safety" if source in SKYWORK_SAFETY_SOURCES else "general"
            pair = run.make_pair(f"{run.tag}:{rec.index}", context, c, r, domain=domain, where=where)
            if pair is not None:
                yield pair


def hf_shuffle_indices(n: int, seed: int) -> List[int]:
    """The row order of HF ``datasets.Dataset.shuffle(seed=seed)`` on ``n`` rows.

    ``datasets`` draws ``numpy.random.default_rng(seed).permutation(n)``; BR-RM takes the first
    8,000 rows of ``Code-Preference-Pairs.shuffle(seed=42)``, so this reproduces its subset when
    the rows are in the dataset's train-split order (checked against ``datasets`` in the tests).
    """
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


def code_preference_pairs(run: AdapterRun, subset_size: Optional[int] = 8000, subset_seed: int = 42,
                          instruction_as_system: bool = False) -> Iterator[PreferencePair]:
    """Vezora/Code-Preference-Pairs rows -> pairs (domain ``code``).

    Original schema: the user turn is ``input`` (BR-RM recipe); ``accepted`` is chosen,
    ``rejected`` rejected; id ``code_preference_pairs:<ID>``. With ``instruction_as_system`` the
    generic ``instruction`` text is added as a system message (off by default, as in BR-RM).
    Reduced shipped schema (``prompt``/``chosen``/``rejected``): ``prompt`` is the user turn (it is
    the generic instruction; the task text is not in that copy); id
    ``code_preference_pairs:<file tag>#<line>``: all rows of such a file share one placeholder
    prompt, so they form one prompt group (de-duplication by prompt keeps them together instead
    of keeping one row, and the train/val split moves them together).

    Subset (BR-RM recipe): rows are taken in the order of an HF ``shuffle(seed=subset_seed)``
    and only the first ``subset_size`` raw rows are used (``None`` or 0: all rows, unshuffled);
    the others are counted as rule ``outside_subset``.
    """
    records = list(run.records())
    order = range(len(records))
    if subset_size:
        order = hf_shuffle_indices(len(records), subset_seed)[:subset_size]
        if len(records) > len(order):
            run.filtered("outside_subset", len(records) - len(order))
    for i in order:
        rec = records[i]
        row, where = rec.value, rec.where
        with run.guard(where):
            if "accepted" in row or "input" in row:
                task = get_field(row, "input", nonempty=True)
                context = [{"role": "user", "content": task}]
                if instruction_as_system:
                    context.insert(0, {"role": "system", "content": get_field(row, "instruction")})
                key = str(get_field(row, "ID", (str, int))) if "ID" in row else f"{run.tag}:{rec.index}"
                chosen, rejected, names = get_field(row, "accepted"), get_field(row, "rejected"), ("accepted", "rejected")
            elif "prompt" in row or "chosen" in row:
                context = [{"role": "user", "content": get_field(row, "prompt", nonempty=True)}]
                key = f"{run.tag}#{rec.index}"
                chosen, rejected, names = get_field(row, "chosen"), get_field(row, "rejected"), ("chosen", "rejected")
            else:
                raise FieldError("expected the original fields instruction/input/accepted/rejected/ID or the "
                                 f"reduced fields prompt/chosen/rejected, got {sorted(row)}")
            pair = run.make_pair(key, context, chosen, rejected, domain="code", where=where, fields=names)
            if pair is not None:
                yield pair


def math_step_dpo(run: AdapterRun) -> Iterator[PreferencePair]:
    """xinlai/Math-Step-DPO-10K rows -> pairs (domain ``math``).

    Rule (BR-RM recipe): ``prompt`` is the user turn; each response is
    ``initial_reason_steps + full_chosen`` / ``initial_reason_steps + full_rejected`` (plain string
    concatenation, as in the reference). Id: ``math_step_dpo:<file tag>:<line>``.
    """
    for rec in run.records():
        row, where = rec.value, rec.where
        with run.guard(where):
            prompt = get_field(row, "prompt", nonempty=True)
            prefix = get_field(row, "initial_reason_steps")
            full_chosen = get_field(row, "full_chosen", nonempty=True)
            full_rejected = get_field(row, "full_rejected", nonempty=True)
            pair = run.make_pair(f"{run.tag}:{rec.index}", [{"role": "user", "content": prompt}],
                                 prefix + full_chosen, prefix + full_rejected, domain="math", where=where,
                                 fields=("full_chosen", "full_rejected"))
            if pair is not None:
                yield pair
