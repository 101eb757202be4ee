"""The one preference-record type every adapter produces and every consumer reads."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List

VALID_ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """A malformed record; the message names the file and line (or the record id) and the field."""


@dataclass
class PreferencePair:
    """A conversation and two candidate final assistant responses, one preferred.

    Attributes:
        id: stable unique id (``"<source>:<row>"`` unless the source has its own id).
        context: ``[{"role": "user"|"assistant"|"system", "content": str}, ...]`` ending with
            a ``user`` turn; the conversation the responses answer.
        response1: first candidate response (the text shown as "Response 1").
        response2: second candidate response.
        preference: 1 if ``response1`` is better, 2 if ``response2`` is better.
        domain: coarse task domain (e.g. "general", "code", "math", "safety", "stem").
        source: the dataset the pair came from (adapter name).
    """

    id: str
    context: List[Dict[str, str]]
    response1: str
    response2: str
    preference: int
    domain: str = "general"
    source: str = "unknown"

    def validate(self, where: str = "") -> "PreferencePair":
        """Check every field; raise :class:`DataError` naming ``where`` and the bad field."""
        at = f"{where}: " if where else f"record {self.id!r}: "
        if not isinstance(self.context, list) or not self.context:
            raise DataError(f"{at}'context' must be a non-empty list of messages")
        for i, msg in enumerate(self.context):
            if not isinstance(msg, dict) or msg.get("role") not in VALID_ROLES or not isinstance(msg.get("content"), str):
                raise DataError(f"{at}context[{i}] must be {{'role': one of {VALID_ROLES}, 'content': str}}, got {msg!r:.200}")
        if self.context[-1]["role"] != "user":
            raise DataError(f"{at}'context' must end with a user turn, ends with {self.context[-1]['role']!r}")
        for name in ("response1", "response2"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{at}'{name}' is empty or not a string")
        if self.preference not in (1, 2) or isinstance(self.preference, bool):
            raise DataError(f"{at}'preference' must be 1 or 2, got {self.preference!r}")
        return self

    def swapped(self) -> "PreferencePair":
        """The same pair with the responses in the other order (label follows)."""
        return PreferencePair(
            id=self.id, context=self.context, response1=self.response2, response2=self.response1,
            preference=3 - self.preference, domain=self.domain, source=self.source,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict, where: str = "") -> "PreferencePair":
        """Build and validate from a JSON object; missing fields raise :class:`DataError`."""
        at = f"{where}: " if where else ""
        if not isinstance(row, dict):
            raise DataError(f"{at}expected a JSON object, got {type(row).__name__}")
        missing = [k for k in ("id", "context", "response1", "response2", "preference") if k not in row]
        if missing:
            raise DataError(f"{at}missing field(s) {missing}")
        unknown = set(row) - {"id", "context", "response1", "response2", "preference", "domain", "source"}
        if unknown:
            raise DataError(f"{at}unknown field(s) {sorted(unknown)}")
        return cls(
            id=str(row["id"]), context=row["context"], response1=row["response1"], response2=row["response2"],
            preference=row["preference"], domain=row.get("domain", "general"), source=row.get("source", "unknown"),
        ).validate(where)
