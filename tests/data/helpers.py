"""Small helpers shared by the data tests (hand-written rows in each source's real schema)."""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path


def write_jsonl(path: Path, rows, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def canon(pair):
    """(id, context, chosen, rejected, domain, source): the pair with the placement undone."""
    chosen, rejected = (pair.response1, pair.response2) if pair.preference == 1 else (pair.response2, pair.response1)
    return (pair.id, pair.context, chosen, rejected, pair.domain, pair.source)


def expected_first(seed: int, pair_id: str) -> bool:
    """The documented placement rule, recomputed here: lowest bit of sha256('seed:id')[0] == 0."""
    return hashlib.sha256(f"{seed}:{pair_id}".encode()).digest()[0] % 2 == 0


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}
