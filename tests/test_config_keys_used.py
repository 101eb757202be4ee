"""No dead config keys: every field of the config tree is read somewhere outside ``config.py``.

A key nobody reads is a promise the code does not keep (a user sets it and nothing changes). The
check is textual: the field's name must appear as an attribute access (``.name``) or a string
(``"name"``, for the planner's and tools' dotted keys) in the package, the evaluation harness or
the tools, other than in ``config.py`` itself. A field that fails it is either wired up or removed.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from megatron_brrm.config import RunConfig

REPO = Path(__file__).resolve().parents[1]


def _fields(cls, prefix=""):
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            yield from _fields(type(default), f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f.name


def test_every_config_field_is_read():
    sources = [p for d in ("megatron_brrm", "evaluation", "tools") for p in (REPO / d).rglob("*.py")
               if p.name != "config.py" or p.parent.name != "megatron_brrm"]
    text = "\n".join(p.read_text(encoding="utf-8") for p in sources)
    dead = [path for path, name in _fields(RunConfig)
            if not re.search(rf"\.{name}\b|[\"']{re.escape(path)}[\"']|[\"']{name}[\"']", text)]
    assert not dead, f"config fields read by nothing: {dead}"
