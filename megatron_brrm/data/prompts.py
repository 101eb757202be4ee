"""Prompts for policy GRPO: a JSONL prompts file, or the distinct contexts of preference pairs.

A prompts file (``data.prompts_path``, ``data.val_prompts_path``) holds one JSON object per line:
``{"prompt": "..."}`` (one user turn) or ``{"messages": [...]}`` / ``{"context": [...]}`` (chat
messages ending with a user turn), with an optional ``"reference"`` (a reference reply, used by a
judge's ``reference`` mode) and an optional ``"id"`` (default ``<file>:<line>``). Without a
prompts file the policy trains on the contexts of the preference data (``data.*``), each context
once, with its first pair's chosen response as the reference.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .augment import base_id
from .io import file_tag, iter_records
from .schema import VALID_ROLES, DataError, PreferencePair
from .sets import load_preference_data

PROMPT_KEYS = ("prompt", "messages", "context")


@dataclass(frozen=True)
class Prompt:
    """One policy prompt.

    Attributes:
        id: stable id (the file's ``id`` or ``<file>:<line>``; a pair's id without its swap suffix).
        context: chat messages ``[{"role", "content"}, ...]`` ending with a user turn.
        reference: a reference reply (str) or ``None``.
    """

    id: str
    context: List[Dict[str, str]]
    reference: Optional[str] = None


def _messages(value, where: str) -> List[Dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: 'prompt' is empty")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: messages must be a non-empty list of {{'role', 'content'}} objects")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in VALID_ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: message {i} must be {{'role': one of {VALID_ROLES}, 'content': str}}, "
                            f"got {m!r:.200}")
    if value[-1]["role"] != "user":
        raise DataError(f"{where}: the messages must end with a user turn, they end with {value[-1]['role']!r}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def read_prompts(path) -> List[Prompt]:
    """The prompts of a JSONL / JSON / parquet file (module docstring for the record layout).

    Raises:
        DataError: a missing file, invalid JSON, a record with none or several of ``prompt`` /
            ``messages`` / ``context``, a bad message, a non-str reference, a duplicate id, or no
            prompt at all; the message names ``file:line`` and the field.
    """
    out: List[Prompt] = []
    seen = set()
    tag = file_tag(path)
    for rec in iter_records(path):
        if rec.error is not None:
            raise DataError(f"{rec.where}: {rec.error}")
        row = rec.value
        if not isinstance(row, dict):
            raise DataError(f"{rec.where}: expected a JSON object, got {type(row).__name__}")
        keys = [k for k in PROMPT_KEYS if k in row]
        if len(keys) != 1:
            raise DataError(f"{rec.where}: a prompt record needs exactly one of {list(PROMPT_KEYS)}, has {keys or 'none'}")
        ref = row.get("reference")
        if ref is not None and not isinstance(ref, str):
            raise DataError(f"{rec.where}: 'reference' must be a str, got {type(ref).__name__}")
        pid = str(row.get("id", f"{tag}:{rec.index}"))
        if pid in seen:
            raise DataError(f"{rec.where}: duplicate id {pid!r}")
        seen.add(pid)
        out.append(Prompt(pid, _messages(row[keys[0]], rec.where), ref))
    if not out:
        raise DataError(f"{Path(path)}: no prompts")
    return out


def prompts_from_pairs(pairs: Sequence[PreferencePair]) -> List[Prompt]:
    """Each distinct context of ``pairs`` once (first occurrence, in order), with that pair's chosen
    response as the reference and its id without the swap suffix."""
    out: List[Prompt] = []
    seen = set()
    for p in pairs:
        key = json.dumps(p.context, sort_keys=True, ensure_ascii=False)
        if key in seen:
            continue
        seen.add(key)
        out.append(Prompt(base_id(p.id), list(p.context), p.response1 if p.preference == 1 else p.response2))
    return out


def load_prompt_sets(data) -> Tuple[List[Prompt], Dict[str, List[Prompt]]]:
    """The training prompts and the named validation prompt sets of a ``DataConfig``.

    Training: ``data.prompts_path`` (:func:`read_prompts`), else the distinct contexts of the
    preference training set (:func:`prompts_from_pairs` of
    :func:`~megatron_brrm.data.sets.load_preference_data`: ``train_data_path``, ``train_path``,
    hub names, ``custom_cls``). Validation: ``data.val_prompts_path`` (the set ``val``), else the
    contexts of each preference validation set (``val_path`` -> ``val``, ``val_data_paths`` by name).

    Raises:
        DataError: no prompts configured, or bad data (names the file, line and field).
    """
    pairs = load_preference_data(data, need_train=not data.prompts_path)
    train = read_prompts(data.prompts_path) if data.prompts_path else prompts_from_pairs(pairs.train)
    if data.val_prompts_path:
        val = {"val": read_prompts(data.val_prompts_path)}
    else:
        val = {name: prompts_from_pairs(ps) for name, ps in pairs.validation.items()}
    return train, val
