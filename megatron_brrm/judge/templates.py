"""Prompt templates in files, and the conversation renderer.

Template syntax: plain text with ``{{name}}`` placeholders (double braces, optional spaces
inside). Everything else is literal, so single braces such as ``\\boxed{1}`` need no escaping.
Substitution is one pass over the *template*: the inserted values (user text, which may
contain ``{``, ``}``, ``{{context}}``, ``$`` or backslashes) are copied verbatim and never
re-scanned. Files are read as UTF-8; CRLF is turned into LF and trailing whitespace is
dropped (an editor's final newline does not end up in the prompt).

A protocol declares, per file, which placeholders it must contain (each at least once), and
which format markers (``markers.py``) it must mention so that the model is told to emit what
the parser looks for. Loading checks both, and rejects unknown placeholders, raising
:class:`TemplateError` that names the file and the placeholder/marker.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}


class TemplateError(ValueError):
    """A template file is missing, unreadable, or lacks a required placeholder/marker."""


@dataclass(frozen=True)
class TemplateSpec:
    """What one template file must contain.

    Attributes:
        filename: file name inside the template folder (e.g. ``"turn1.txt"``).
        placeholders: placeholder names the file must contain; no others are allowed.
        markers: literal strings (format markers) the file must contain.
    """

    filename: str
    placeholders: Tuple[str, ...] = ()
    markers: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Template:
    """A loaded, validated template. ``render(**values)`` fills its placeholders."""

    path: str
    text: str
    placeholders: Tuple[str, ...]

    def render(self, **values: str) -> str:
        """Substitute every ``{{name}}`` with ``values[name]`` verbatim, in one pass.

        Raises:
            ValueError: if a placeholder of the template has no value or a value is not a str
                (a programming error in the caller, not bad user data).
        """
        missing = [p for p in self.placeholders if p not in values]
        if missing:
            raise ValueError(f"template {self.path}: no value given for placeholder(s) {missing}")
        for name, value in values.items():
            if not isinstance(value, str):
                raise ValueError(f"template {self.path}: value for {{{{{name}}}}} must be a str, got {type(value).__name__}")
        return PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], self.text)


def load_template(path: str, spec: TemplateSpec) -> Template:
    """Read ``path`` and check it against ``spec``.

    Raises:
        TemplateError: the file is missing or not UTF-8, a required placeholder or marker is
            absent, or it uses a placeholder the protocol does not provide.
    """
    try:
        with open(path, "r", encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise TemplateError(f"judge template file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"judge template file {path} cannot be read as UTF-8 text: {exc}") from None
    text = text.replace("\r\n", "\n").rstrip()
    found = [m.group(1) for m in PLACEHOLDER_RE.finditer(text)]
    for name in spec.placeholders:
        if name not in found:
            raise TemplateError(
                f"judge template file {path} lacks the required placeholder {{{{{name}}}}}; "
                f"this file must contain each of {_fmt_placeholders(spec.placeholders)}"
            )
    unknown = sorted(set(found) - set(spec.placeholders))
    if unknown:
        raise TemplateError(
            f"judge template file {path} uses unknown placeholder {{{{{unknown[0]}}}}}; "
            f"allowed here: {_fmt_placeholders(spec.placeholders) or 'none'}"
        )
    for marker in spec.markers:
        if marker not in text:
            raise TemplateError(
                f"judge template file {path} lacks the required format marker {marker!r}; "
                f"the parser looks for it, so the prompt must show it verbatim"
            )
    return Template(path=path, text=text, placeholders=tuple(spec.placeholders))


def load_templates(protocol: str, specs: Sequence[TemplateSpec], template_dir: Optional[str] = None) -> Dict[str, Template]:
    """Load every file of ``specs`` from ``template_dir`` (or the shipped ``templates/<protocol>/``).

    ``template_dir`` may hold the files directly, or (when it holds none of them) a
    ``<protocol>/`` sub-folder with them, so one folder can carry wording for both protocols.

    Returns:
        ``{spec.filename: Template}``.

    Raises:
        TemplateError: ``template_dir`` is not a folder or holds none of the files, or a file
            fails :func:`load_template`.
    """
    folder = template_dir if template_dir is not None else os.path.join(SHIPPED_DIR, protocol)
    nested = os.path.join(folder, protocol)
    if not any(os.path.exists(os.path.join(folder, s.filename)) for s in specs) and os.path.isdir(nested):
        folder = nested  # a folder holding one sub-folder per protocol, like the shipped templates/
    if not os.path.isdir(folder):
        raise TemplateError(
            f"judge template_dir {folder} is not a folder; it must contain "
            f"{', '.join(s.filename for s in specs)} for protocol {protocol!r}"
        )
    if not any(os.path.exists(os.path.join(folder, s.filename)) for s in specs):
        raise TemplateError(
            f"judge template_dir {folder} holds none of {', '.join(s.filename for s in specs)} "
            f"(nor a {protocol}/ sub-folder with them) for protocol {protocol!r}"
        )
    return {s.filename: load_template(os.path.join(folder, s.filename), s) for s in specs}


def _fmt_placeholders(names: Iterable[str]) -> str:
    return ", ".join("{{" + n + "}}" for n in names)


def render_context(messages: List[Mapping[str, str]]) -> str:
    """Flatten a conversation into ``Role: content`` lines joined by ``"\\n"``.

    Roles: ``user`` -> ``User:``, ``assistant`` -> ``Assistant:``, ``system`` -> ``System:``.
    Contents are copied verbatim (BR-RM reference ``generate_context_from_hf`` writes the
    same ``User: ...``/``Assistant: ...`` lines; it labels system turns "Assistant", we
    label them "System").

    Raises:
        ValueError: ``messages`` is not a non-empty list, or ``messages[i]`` is not a dict with
            a known ``role`` and a str ``content`` (the message names ``i``).
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"context must be a non-empty list of {{'role', 'content'}} messages, got {messages!r:.200}")
    lines = []
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, Mapping) else None
        content = msg.get("content") if isinstance(msg, Mapping) else None
        if role not in ROLE_LABELS or not isinstance(content, str):
            raise ValueError(
                f"context[{i}] must be {{'role': one of {sorted(ROLE_LABELS)}, 'content': str}}, got {msg!r:.200}"
            )
        lines.append(f"{ROLE_LABELS[role]}: {content}")
    return "\n".join(lines)
