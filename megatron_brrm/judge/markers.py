"""Byte-exact block markers of the BR-RM and RM-R1 judge formats.

These strings are a compatibility contract (docs/design.md §5): the released checkpoints
``nvidia/Qwen3-Nemotron-{8B,14B}-BRRM`` emit exactly these markers (note the ungrammatical
"The Begin of"), and RM-R1 (arXiv 2505.02387) models emit the ``<answer>[[A]]</answer>``
verdict. Templates must contain them verbatim and parsers look for them verbatim.
"""
from __future__ import annotations

# --- BR-RM turn-1 input blocks ---
CONTEXT_BEGIN = "[The Begin of Context]"
CONTEXT_END = "[The End of Context]"


def response_begin(k: int) -> str:
    """``[The Begin of Response k]`` for k in (1, 2)."""
    return f"[The Begin of Response {k}]"


def response_end(k: int) -> str:
    """``[The End of Response k]`` for k in (1, 2)."""
    return f"[The End of Response {k}]"


# --- BR-RM turn-1 output blocks ---
FOCUS_BEGIN = "[Quality Assessment Focus]"
FOCUS_END = "[End of Quality Assessment Focus]"


def quality_begin(k: int) -> str:
    """``[Quality Analysis for Response k]`` (turn-1 output)."""
    return f"[Quality Analysis for Response {k}]"


def quality_end(k: int) -> str:
    """``[End of Quality Analysis for Response k]`` (turn-1 output)."""
    return f"[End of Quality Analysis for Response {k}]"


# --- BR-RM turn-2 output blocks ---
def analysis_begin(k: int) -> str:
    """``[The Begin of Analysis on Response k]`` (turn-2 output)."""
    return f"[The Begin of Analysis on Response {k}]"


def analysis_end(k: int) -> str:
    """``[The End of Analysis on Response k]`` (turn-2 output)."""
    return f"[The End of Analysis on Response {k}]"


RANKING_BEGIN = "[The Begin of Ranking Score]"
RANKING_END = "[The End of Ranking Score]"
BOXED = "\\boxed"  # the LaTeX command, one backslash


def boxed(value: int) -> str:
    """``\\boxed{value}`` with a single backslash, e.g. ``\\boxed{1}``."""
    return BOXED + "{" + str(value) + "}"


THINK_END = "</think>"

# --- RM-R1 (chain-of-rubrics) ---
RMR1_QUESTION = "[Client Question]"


def chatbot_begin(letter: str) -> str:
    """``[The Start of Chatbot A's Response]`` for letter in ("A", "B")."""
    return f"[The Start of Chatbot {letter}'s Response]"


def chatbot_end(letter: str) -> str:
    """``[The End of Chatbot A's Response]`` for letter in ("A", "B")."""
    return f"[The End of Chatbot {letter}'s Response]"


ANSWER_BEGIN = "<answer>"
ANSWER_END = "</answer>"


def rmr1_answer(letter: str) -> str:
    """``<answer>[[A]]</answer>`` for letter in ("A", "B")."""
    return f"{ANSWER_BEGIN}[[{letter}]]{ANSWER_END}"


# Markers each shipped/user template must contain (checked when templates load).
BRRM_TURN1_MARKERS = (
    CONTEXT_BEGIN, CONTEXT_END,
    response_begin(1), response_end(1), response_begin(2), response_end(2),
    FOCUS_BEGIN, FOCUS_END,
    quality_begin(1), quality_end(1), quality_begin(2), quality_end(2),
)
BRRM_TURN2_MARKERS = (
    analysis_begin(1), analysis_end(1), analysis_begin(2), analysis_end(2),
    RANKING_BEGIN, boxed(1), boxed(2), RANKING_END,
)
RMR1_SYSTEM_MARKERS = (rmr1_answer("A"), rmr1_answer("B"))
RMR1_USER_MARKERS = (
    RMR1_QUESTION, chatbot_begin("A"), chatbot_end("A"), chatbot_begin("B"), chatbot_end("B"),
)
