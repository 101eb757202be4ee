"""Parsers for BR-RM turn-1 and turn-2 outputs. Pure functions; they never raise on a str.

Rules (docs/design.md §5, with the tolerances we chose; the reference is the BR-RM code's
``parse_scoring_response`` / ``parse_unified_analysis_response``):

Common to both turns
    * Windows (CRLF) and old-Mac (CR) newlines are turned into LF first.
    * If the text contains ``</think>`` (Qwen3 thinking mode), only the text after the *last*
      ``</think>`` is parsed: drafts inside the reasoning do not count. Text without
      ``</think>`` is parsed whole. (The reference parses everything, so a draft verdict in
      the thinking would win there.)
    * Text before, between and after the blocks is ignored.
    * A block runs from its begin marker to the first matching end marker after it; a begin
      marker without its end marker is "not closed".

Turn 2 (the verdict; markers matched case-sensitively, byte-exact)
    * Only *closed* ranking blocks ``[The Begin of Ranking Score]`` ... ``[The End of
      Ranking Score]`` count; ``\\boxed{}`` elsewhere (e.g. a math answer in an analysis) is
      ignored.
    * Inside a block, every ``\\boxed{...}`` (balanced braces) is a verdict; its content,
      stripped of surrounding whitespace, must be exactly ``1`` or ``2``
      (``\\boxed{ 2 }`` is accepted; ``\\boxed{Response 2}``, ``\\boxed{1,2}``, ``\\boxed{}`` are not:
      the reference would read ``Response 2`` as 2, docs/design.md §5 calls it malformed).
    * Newlines around ``\\boxed{}`` are NOT required (the reference regex requires a newline
      on both sides). Any whitespace, or none, and other text inside the block are
      tolerated: the released checkpoints always write the newline form, which both accept.
    * Several blocks or several boxes with the same value are one verdict; different values
      are ``"conflicting verdicts 1 and 2"``.
    * Malformed reasons: ``missing ranking block ...``, ``ranking block not closed ...``,
      ``ranking block has no \\boxed{...}``, ``unterminated \\boxed{ ...``,
      ``boxed value '<v>' is not 1 or 2``, ``conflicting verdicts 1 and 2``.
    * The turn-2 analyses ``[The Begin of Analysis on Response k]`` are returned when present
      and never make a verdict malformed (the reference does not check them either).

Turn 1 (markers matched case-insensitively, as the reference does)
    * The first ``[Quality Assessment Focus]`` block holds the dimension names. It is read line
      by line: a leading bullet (``-``, ``*``, ``+``, ``•``, ``1.``, ``1)``) is dropped; text
      after the first ``:`` is an explanation and ignored (but when the part before the ``:``
      is a label such as ``Selected:``, the part after it is read instead); the rest is split
      on ``,`` ``;`` ``/`` ``|`` ``&`` and the word ``and``; each piece, with markdown
      emphasis, quotes, a trailing period and parenthesised remarks removed, must be one of
      the eight names (case-insensitive, whitespace-collapsed). Duplicates count once.
    * Errors (joined by ``"; "``): missing/unclosed focus block, no dimension, more than 3,
      unknown names, missing/unclosed/empty ``[Quality Analysis for Response k]`` blocks.
"""
from __future__ import annotations

import functools
import re
from typing import List, Optional, Tuple

from . import markers as M
from .results import Turn1Result, Verdict, canonical_dimension

_BOXED_OPEN = re.compile(r"\\boxed\s*\{")
_BULLET = re.compile(r"^(?:[-*+\u2022]+|\d+[.)])\s*")
_SPLIT = re.compile(r"[,;/|&]|\s+and\s+", re.IGNORECASE)
_PAREN = re.compile(r"\([^()]*\)")
_STRIP_CHARS = " \t*_`\"'.\u201c\u201d\u2018\u2019"


def normalize_newlines(text: str) -> str:
    """CRLF and lone CR -> LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def answer_part(text: str) -> str:
    """The text after the last ``</think>``, or all of it when there is none."""
    i = text.rfind(M.THINK_END)
    return text[i + len(M.THINK_END):] if i >= 0 else text


@functools.lru_cache(maxsize=None)
def _pattern(marker: str, ignore_case: bool) -> "re.Pattern[str]":
    return re.compile(re.escape(marker), re.IGNORECASE if ignore_case else 0)


def find_block(text: str, begin: str, end: str, *, ignore_case: bool = False, start: int = 0) -> Tuple[Optional[str], str, int]:
    """Locate the first ``begin ... end`` block at or after ``start``.

    Returns:
        ``(content, status, next_pos)``: status ``"ok"`` (content = the raw text between the
        markers, next_pos = index after ``end``), ``"missing"`` (no ``begin``) or
        ``"unclosed"`` (``begin`` without a later ``end``); content is ``None`` unless ok.
    """
    b = _pattern(begin, ignore_case).search(text, start)
    if b is None:
        return None, "missing", len(text)
    e = _pattern(end, ignore_case).search(text, b.end())
    if e is None:
        return None, "unclosed", len(text)
    return text[b.end():e.start()], "ok", e.end()


def _short(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


# ----------------------------------------------------------------------------- turn 2
def boxed_contents(block: str) -> Tuple[List[str], Optional[str]]:
    """Contents of every ``\\boxed{...}`` in ``block`` (balanced braces), and an error if one
    is unterminated."""
    values: List[str] = []
    pos = 0
    while True:
        m = _BOXED_OPEN.search(block, pos)
        if m is None:
            return values, None
        depth, i = 1, m.end()
        while i < len(block) and depth:
            ch = block[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            i += 1
        if depth:
            return values, "unterminated \\boxed{ in ranking block (no matching '}')"
        values.append(block[m.end():i - 1])
        pos = i


def parse_verdict(text: str) -> Verdict:
    """Parse a BR-RM turn-2 output into a :class:`Verdict` (rules in the module docstring).

    Never raises: a non-str input is a malformed verdict too.
    """
    if not isinstance(text, str):
        return Verdict(preference=None, format_error=f"output is not a string (got {type(text).__name__})")
    full = normalize_newlines(text)
    body = answer_part(full)
    analyses = []
    for k in (1, 2):
        content, status, _ = find_block(body, M.analysis_begin(k), M.analysis_end(k))
        analyses.append(content.strip() if status == "ok" else None)

    values: List[str] = []
    error: Optional[str] = None
    pos, closed, status = 0, 0, "missing"
    while error is None:
        block, status, pos = find_block(body, M.RANKING_BEGIN, M.RANKING_END, start=pos)
        if status != "ok":
            break
        closed += 1
        found, error = boxed_contents(block)
        if error is None and not found:
            error = "ranking block has no \\boxed{...}"
        for v in found:
            if error is None and v.strip() not in ("1", "2"):
                error = f"boxed value {_short(v.strip())} is not 1 or 2"
            values.append(v.strip())
    if error is None and closed == 0:
        if status == "unclosed":
            error = f"ranking block not closed: {M.RANKING_END!r} not found after {M.RANKING_BEGIN!r}"
        elif M.THINK_END in full:
            error = f"missing ranking block: {M.RANKING_BEGIN!r} not found after the last {M.THINK_END!r}"
        else:
            error = f"missing ranking block: {M.RANKING_BEGIN!r} not found"
    if error is None and len(set(values)) > 1:
        error = "conflicting verdicts 1 and 2"
    if error is not None:
        return Verdict(preference=None, format_error=error, analysis1=analyses[0], analysis2=analyses[1])
    return Verdict(preference=int(values[0]), format_error=None, analysis1=analyses[0], analysis2=analyses[1])


# ----------------------------------------------------------------------------- turn 1
def _clean_piece(piece: str) -> str:
    piece = _PAREN.sub(" ", piece)
    return piece.strip(_STRIP_CHARS)


def _names_in(segment: str) -> Tuple[List[str], List[str]]:
    known: List[str] = []
    unknown: List[str] = []
    for piece in _SPLIT.split(segment):
        piece = _clean_piece(piece)
        if not piece:
            continue
        canon = canonical_dimension(piece)
        (known if canon else unknown).append(canon or piece)
    return known, unknown


def parse_dimensions(block: str) -> Tuple[List[str], List[str]]:
    """``(dimensions, unknown_names)`` named in a focus block (rules in the module docstring)."""
    dims: List[str] = []
    unknown: List[str] = []
    for line in block.split("\n"):
        line = _BULLET.sub("", line.strip()).strip()
        if not line:
            continue
        head, sep, tail = line.partition(":")
        known, bad = _names_in(head)
        if sep and not known:
            known, bad = _names_in(tail)  # "Selected abilities: A, B"
        for name in known:
            if name not in dims:
                dims.append(name)
        unknown.extend(bad)
    return dims, unknown


def parse_turn1(text: str) -> Turn1Result:
    """Parse a BR-RM turn-1 output into a :class:`Turn1Result` (rules in the module docstring).

    Never raises: a non-str input gives a result with a format error.
    """
    if not isinstance(text, str):
        return Turn1Result(format_error=f"output is not a string (got {type(text).__name__})")
    body = answer_part(normalize_newlines(text))
    errors: List[str] = []
    dims: List[str] = []
    block, status, _ = find_block(body, M.FOCUS_BEGIN, M.FOCUS_END, ignore_case=True)
    if status == "missing":
        errors.append(f"missing {M.FOCUS_BEGIN!r} block")
    elif status == "unclosed":
        errors.append(f"{M.FOCUS_BEGIN!r} block not closed by {M.FOCUS_END!r}")
    else:
        dims, unknown = parse_dimensions(block)
        if unknown:
            shown = ", ".join(_short(u) for u in unknown[:3]) + (" ..." if len(unknown) > 3 else "")
            errors.append(f"unknown dimension name(s) {shown}")
        if not dims:
            errors.append("no focus dimension named (choose 1-3)")
        elif len(dims) > 3:
            errors.append(f"too many focus dimensions ({len(dims)}; choose 1-3)")
    analyses: List[Optional[str]] = []
    for k in (1, 2):
        content, status, _ = find_block(body, M.quality_begin(k), M.quality_end(k), ignore_case=True)
        if status == "missing":
            errors.append(f"missing {M.quality_begin(k)!r} block")
        elif status == "unclosed":
            errors.append(f"{M.quality_begin(k)!r} block not closed by {M.quality_end(k)!r}")
        elif not content.strip():
            errors.append(f"empty quality analysis for Response {k}")
        analyses.append(content.strip() if status == "ok" else None)
    return Turn1Result(
        dimensions=dims, analysis1=analyses[0], analysis2=analyses[1],
        format_error="; ".join(errors) if errors else None,
    )
