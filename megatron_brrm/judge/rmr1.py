"""RM-R1 "chain-of-rubrics" single-turn judge (arXiv 2505.02387), behind the same interface.

Messages: a system prompt (classify the task as Reasoning or Chat, solve or write a rubric,
evaluate, then answer) and a user message with ``[Client Question]``,
``[The Start of Chatbot A's Response]`` ... ``[The End of Chatbot B's Response]``.
Chatbot A is ``response1`` and B is ``response2``. The question is the sole user turn's
text when the context is one user message, else the rendered ``User:``/``Assistant:``
transcript. Templates: ``templates/rmr1/system.txt`` (no placeholders) and ``user.txt``
(``{{context}}``, ``{{response1}}``, ``{{response2}}``).

Verdict rules (parse_verdict; never raises):
    * CRLF -> LF; only the text after the last ``</think>`` is read.
    * At least one ``<answer>`` block is required (``missing <answer> block`` otherwise). A block
      runs to the next ``</answer>``, or to the end of the text when the closing tag is absent
      (an engine that drops the ``</answer>`` stop string still parses).
    * Each block, stripped, must be exactly ``[[A]]`` or ``[[B]]`` (else
      ``answer '<v>' is not [[A]] or [[B]]``); ties are not supported.
    * If both ``[[A]]`` and ``[[B]]`` appear anywhere in the read text the verdict is
      ``conflicting verdicts A and B`` (RM-R1's evaluation harness rule); A -> 1, B -> 2.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from . import markers as M
from .brrm_parse import answer_part, normalize_newlines
from .protocol import JudgeProtocol, check_analysis, check_preference, check_responses
from .results import Turn1Result, Verdict
from .templates import TemplateSpec, load_templates, render_context

SYSTEM_SPEC = TemplateSpec("system.txt", (), M.RMR1_SYSTEM_MARKERS)
USER_SPEC = TemplateSpec("user.txt", ("context", "response1", "response2"), M.RMR1_USER_MARKERS)
_FORBIDDEN = ("[[A]]", "[[B]]", M.ANSWER_BEGIN, M.ANSWER_END, "<eval>", "</eval>", M.THINK_END)


def parse_rmr1_verdict(text: str) -> Verdict:
    """Parse an RM-R1 output (rules in the module docstring)."""
    if not isinstance(text, str):
        return Verdict(preference=None, format_error=f"output is not a string (got {type(text).__name__})")
    body = answer_part(normalize_newlines(text))
    values: List[str] = []
    pos = body.find(M.ANSWER_BEGIN)
    if pos < 0:
        return Verdict(preference=None, format_error=f"missing {M.ANSWER_BEGIN} block")
    while pos >= 0:
        start = pos + len(M.ANSWER_BEGIN)
        end = body.find(M.ANSWER_END, start)
        content = (body[start:] if end < 0 else body[start:end]).strip()
        if content not in ("[[A]]", "[[B]]"):
            shown = repr(content if len(content) <= 40 else content[:40] + "...")
            return Verdict(preference=None, format_error=f"answer {shown} is not [[A]] or [[B]]")
        values.append(content)
        pos = -1 if end < 0 else body.find(M.ANSWER_BEGIN, end)
    if "[[A]]" in body and "[[B]]" in body:
        return Verdict(preference=None, format_error="conflicting verdicts A and B")
    return Verdict(preference=1 if values[0] == "[[A]]" else 2, format_error=None)


class RMR1Protocol(JudgeProtocol):
    """RM-R1 chain-of-rubrics, one generated turn, stop at ``</answer>``.

    Args:
        template_dir: folder with ``system.txt`` and ``user.txt`` replacing the shipped wording.

    Raises:
        TemplateError: a template file is missing or lacks a placeholder/marker.
    """

    name = "rmr1"
    num_turns = 1

    def __init__(self, template_dir: Optional[str] = None):
        self.template_dir = template_dir
        t = load_templates("rmr1", (SYSTEM_SPEC, USER_SPEC), template_dir)
        self._system = t[SYSTEM_SPEC.filename]
        self._user = t[USER_SPEC.filename]

    def turn1_messages(self, context: List[Dict[str, str]], response1: str, response2: str) -> List[Dict[str, str]]:
        """``[system, user]`` messages (see the module docstring for the question text)."""
        check_responses(response1, response2)
        rendered = render_context(context)  # validates every message
        if len(context) == 1 and context[0]["role"] == "user":
            rendered = context[0]["content"]
        return [
            {"role": "system", "content": self._system.render()},
            {"role": "user", "content": self._user.render(context=rendered, response1=response1, response2=response2)},
        ]

    def followup_message(self, turn: int) -> Optional[Dict[str, str]]:
        """Always ``None`` (single turn)."""
        return None

    def stop_strings(self, turn: int) -> List[str]:
        """``["</answer>"]`` for turn 0."""
        self._check_turn(turn)
        return [M.ANSWER_END]

    def parse_turn1(self, text: str) -> Turn1Result:
        """Not applicable to a single-turn judge: always a well-formed, empty result."""
        return Turn1Result()

    def parse_verdict(self, text: str) -> Verdict:
        """See :func:`parse_rmr1_verdict`."""
        return parse_rmr1_verdict(text)

    def format_turn_output(self, turn: int, *, preference: int, dimensions: Optional[Sequence[str]] = None,
                           analysis1: str = "", analysis2: str = "") -> str:
        """A Chat-type chain-of-rubrics output ending with ``<answer>[[A|B]]</answer>``;
        ``dimensions`` is ignored; the analyses become ``<summary_A>``/``<summary_B>``."""
        self._check_turn(turn)
        check_preference(preference)
        a1 = check_analysis("analysis1", analysis1, _FORBIDDEN) or "Chatbot A's reply assessed against the rubric."
        a2 = check_analysis("analysis2", analysis2, _FORBIDDEN) or "Chatbot B's reply assessed against the rubric."
        return (
            "<type>Chat</type>\n"
            "<rubric>\n1. Helpfulness and correctness for the client's question (weight 70%).\n"
            "2. Clarity (weight 30%).\n<justify>Serving the request matters most.</justify>\n</rubric>\n"
            f"<eval>\n<summary_A>{a1}</summary_A>\n<summary_B>{a2}</summary_B>\n</eval>\n"
            f"{M.rmr1_answer('A' if preference == 1 else 'B')}"
        )
