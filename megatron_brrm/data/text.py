"""Text normalisation used for prompt de-duplication and benchmark decontamination."""
from __future__ import annotations

import re
import unicodedata
from typing import Dict, Iterable, List

_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Canonical form of a prompt for exact-match comparison.

    Unicode NFKC, lower-cased, runs of whitespace collapsed to one space, stripped. This is the
    same key family as the split key documented in SOURCES.md section 6 (lower-cased,
    whitespace-collapsed prompt), extended with NFKC so that full-width / compatibility characters
    compare equal.
    """
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip().lower()


def context_key(context: List[Dict[str, str]]) -> str:
    """Normalised text of a whole context (roles included): the key of "dedup by prompt"."""
    return "\n".join(f"{m['role']}: {normalize_text(m['content'])}" for m in context)


def user_turn_keys(context: Iterable[Dict[str, str]]) -> List[str]:
    """Normalised text of every user turn of a context, in order (empty turns left out)."""
    keys = [normalize_text(m["content"]) for m in context if m.get("role") == "user"]
    return [k for k in keys if k]
