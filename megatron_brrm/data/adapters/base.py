"""Shared machinery of the source adapters: row guards, field checks, seeded placement.

Every adapter turns the rows of one public dataset into validated :class:`PreferencePair`
records. The rules every adapter follows:

* ids are ``"<source>:<key>"``; ``key`` is the source's own unique id when it has one, else
  ``"<file tag>:<line or row>"``. Sources that make several pairs from one prompt group
  (HelpSteer v1 responses of one prompt, PRM800K steps of one prefix) use
  ``"<source>:<group key>#<variant>"``: the part before ``#`` names the prompt group
  (:func:`group_of`), which de-duplication and the train/val split keep together.
* the chosen response goes to position 1 or 2 by a seeded hash of the id
  (:func:`chosen_first`), so the placement depends only on ``(seed, id)`` and not on the order
  in which rows are read; ``preference`` follows.
* a malformed row (missing field, wrong type, empty response, bad label, unparseable JSON)
  raises :class:`DataError` ``"<file>:<line>: <field>: <reason>"``; with ``skip_invalid`` it is
  skipped and counted in :attr:`SourceSummary.skipped_invalid`. Rows removed by a documented
  rule of the recipe (ties, excluded sub-sources, ...) are counted per rule in
  :attr:`SourceSummary.filtered`. Nothing is dropped without a count.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Type, Union

from ..io import RawRecord, file_tag, iter_records
from ..schema import VALID_ROLES, DataError, PreferencePair
from ..summary import SourceSummary

SKIP_HINT = "fix the row or pass --skip-invalid (skip_invalid=True) to skip and count it"


class FieldError(DataError):
    """A row-level error without a location; :meth:`AdapterRun.guard` prefixes ``file:line``."""


def chosen_first(seed: int, pair_id: str) -> bool:
    """Whether the chosen response goes to position 1.

    A fair coin derived from ``sha256(f"{seed}:{pair_id}")`` (lowest bit of the first byte): it
    depends only on the seed and the id, never on iteration order or Python's hash seed.
    """
    digest = hashlib.sha256(f"{seed}:{pair_id}".encode("utf-8")).digest()
    return digest[0] % 2 == 0


def group_of(pair_id: str) -> str:
    """The prompt-group part of a pair id (everything before the first ``#``)."""
    return pair_id.split("#", 1)[0]


def get_field(row: Dict[str, Any], name: str, types: Union[Type, Tuple[Type, ...]] = str,
              *, nonempty: bool = False) -> Any:
    """``row[name]`` checked for presence and type.

    Raises:
        FieldError: the field is missing, has another type (bools never count as ints), or is
            an empty/blank string while ``nonempty``.
    """
    if name not in row:
        raise FieldError(f"missing field '{name}'")
    value = row[name]
    types_t = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in types_t:
        raise FieldError(f"field '{name}' must be {'/'.join(t.__name__ for t in types_t)}, got bool")
    if not isinstance(value, types_t):
        raise FieldError(f"field '{name}' must be {'/'.join(t.__name__ for t in types_t)}, "
                         f"got {type(value).__name__}")
    if nonempty and isinstance(value, str) and not value.strip():
        raise FieldError(f"field '{name}' is empty")
    return value


def get_label_int(row: Dict[str, Any], name: str, allowed: Sequence[int]) -> int:
    """An integer label (ints or integral floats such as parquet's ``1.0``) within ``allowed``.

    Raises:
        FieldError: missing, not a number, not integral, or not in ``allowed``.
    """
    value = get_field(row, name, (int, float))
    if value != value or int(value) != value or int(value) not in allowed:  # NaN, 0.5, out of range
        raise FieldError(f"field '{name}' must be one of {list(allowed)}, got {value!r}")
    return int(value)


def messages_field(row: Dict[str, Any], name: str) -> List[Dict[str, str]]:
    """A list of ``{"role", "content"}`` messages (extra keys dropped), roles checked.

    Raises:
        FieldError: missing/not a list, empty, or a message without a valid role / string content.
    """
    value = get_field(row, name, list)
    if not value:
        raise FieldError(f"field '{name}' is an empty list")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or msg.get("role") not in VALID_ROLES or not isinstance(msg.get("content"), str):
            raise FieldError(f"field '{name}'[{i}] must be {{'role': one of {list(VALID_ROLES)}, 'content': str}}, "
                             f"got {str(msg)[:120]}")
        out.append({"role": msg["role"], "content": msg["content"]})
    return out


class AdapterRun:
    """The state of one adapter pass over one file: where we are, what was skipped or filtered.

    Args:
        source: adapter name (the id prefix and ``PreferencePair.source``).
        path: the input file.
        seed: seed of the chosen-position coin (:func:`chosen_first`) and any subset draw.
        skip_invalid: skip and count malformed rows instead of raising.
        summary: counters to update (a fresh one when ``None``).
    """

    def __init__(self, source: str, path: Union[str, Path], seed: int = 42, skip_invalid: bool = False,
                 summary: Optional[SourceSummary] = None):
        self.source = source
        self.path = Path(path)
        self.tag = file_tag(path)
        self.seed = seed
        self.skip_invalid = skip_invalid
        self.summary = summary if summary is not None else SourceSummary(source)
        self.summary.files.append(str(path))

    # -- rows ---------------------------------------------------------------------------------
    def records(self) -> Iterator[RawRecord]:
        """Raw records of the file that decode to a JSON object; the others go to :meth:`invalid`."""
        for rec in iter_records(self.path):
            self.summary.rows_read += 1
            if rec.error is not None:
                self.invalid(rec.where, rec.error)
            elif not isinstance(rec.value, dict):
                self.invalid(rec.where, f"expected a JSON object, got {type(rec.value).__name__}")
            else:
                yield rec

    def invalid(self, where: str, message: str) -> None:
        """Raise ``DataError("<where>: <message>")``, or count it when skipping invalid rows."""
        text = f"{where}: {message}"
        if not self.skip_invalid:
            raise DataError(f"{text}; {SKIP_HINT}") from None
        self.summary.add_invalid(text)

    def guard(self, where: str) -> "_Guard":
        """Context manager: a :class:`DataError` raised inside becomes :meth:`invalid` at ``where``."""
        return _Guard(self, where)

    def filtered(self, rule: str, n: int = 1) -> None:
        """Count ``n`` rows removed by the named recipe rule."""
        self.summary.add_filtered(rule, n)

    # -- pairs --------------------------------------------------------------------------------
    def make_pair(self, key: str, context: List[Dict[str, str]], chosen: Any, rejected: Any, *,
                  domain: str, where: str, fields: Tuple[str, str] = ("chosen", "rejected")) -> Optional[PreferencePair]:
        """Build the validated pair ``<source>:<key>`` with the chosen response at a seeded position.

        ``fields`` names the source fields of the two responses for error messages.
        Returns ``None`` (counted as rule ``identical_responses``) when both responses are the
        same text after stripping whitespace: such a pair carries no preference.

        Raises:
            FieldError: a response is not a non-empty string.
            DataError: the pair fails :meth:`PreferencePair.validate` (e.g. the context does not end
                with a user turn), message prefixed with ``where``.
        """
        for value, name in ((chosen, fields[0]), (rejected, fields[1])):
            if not isinstance(value, str):
                raise FieldError(f"field '{name}': the response must be a string, got {type(value).__name__}")
            if not value.strip():
                raise FieldError(f"field '{name}': the response is empty")
        if chosen.strip() == rejected.strip():
            self.filtered("identical_responses")
            return None
        pair_id = f"{self.source}:{key}"
        first = chosen_first(self.seed, pair_id)
        pair = PreferencePair(
            id=pair_id, context=context,
            response1=chosen if first else rejected, response2=rejected if first else chosen,
            preference=1 if first else 2, domain=domain, source=self.source,
        ).validate(where)
        self.summary.pairs += 1
        return pair


class _Guard:
    def __init__(self, run: AdapterRun, where: str):
        self.run, self.where = run, where

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            return False
        if isinstance(exc, (TypeError, KeyError, AttributeError, IndexError)) and not isinstance(exc, DataError):
            # a row whose structure the adapter did not expect (e.g. a number where text belongs)
            self.run.invalid(self.where, f"malformed row ({type(exc).__name__}: {exc})")
            return True
        if not isinstance(exc, DataError):
            return False
        message = str(exc)
        if isinstance(exc, FieldError) or not message.startswith(self.where):
            self.run.invalid(self.where, message)
        else:
            self.run.invalid(self.where, message[len(self.where):].lstrip(": "))
        return True  # reached only when skipping (invalid() raises otherwise)
