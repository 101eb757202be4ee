"""BR-RM: the two-turn Branch-and-Rethink judge (arXiv 2510.23596; docs/design.md §5).

Turn 0 ("adaptive branching"): one user message holding the context and both responses;
the judge names 1-3 focus dimensions and analyses each response. Turn 1 ("branch-conditioned
rethinking"): the same conversation continues with a constant user message (the turn-2
instructions, context not repeated); the judge re-analyses and ends with
``[The Begin of Ranking Score]`` ``\\boxed{1|2}`` ``[The End of Ranking Score]``, where
generation stops. Templates: ``templates/brrm/turn1.txt`` (placeholders ``{{context}}``,
``{{response1}}``, ``{{response2}}``) and ``turn2.txt`` (no placeholders).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from . import brrm_parse
from . import markers as M
from .protocol import JudgeProtocol, check_analysis, check_preference, check_responses
from .results import DIMENSIONS, Turn1Result, Verdict, canonical_dimension
from .templates import TemplateSpec, load_templates, render_context

TURN1_SPEC = TemplateSpec("turn1.txt", ("context", "response1", "response2"), M.BRRM_TURN1_MARKERS)
TURN2_SPEC = TemplateSpec("turn2.txt", (), M.BRRM_TURN2_MARKERS)
_ALL_MARKERS = M.BRRM_TURN1_MARKERS + M.BRRM_TURN2_MARKERS + (M.THINK_END,)


class BRRMProtocol(JudgeProtocol):
    """The BR-RM two-turn protocol. See the module docstring and ``brrm_parse`` for the rules.

    Args:
        template_dir: folder with ``turn1.txt`` and ``turn2.txt`` replacing the shipped wording.

    Raises:
        TemplateError: a template file is missing or lacks a placeholder/marker (names both).
    """

    name = "brrm"
    num_turns = 2
    DEFAULT_DIMENSIONS = ("Information Accuracy",)

    def __init__(self, template_dir: Optional[str] = None):
        self.template_dir = template_dir
        t = load_templates("brrm", (TURN1_SPEC, TURN2_SPEC), template_dir)
        self._turn1 = t[TURN1_SPEC.filename]
        self._turn2 = t[TURN2_SPEC.filename]

    def turn1_messages(self, context: List[Dict[str, str]], response1: str, response2: str) -> List[Dict[str, str]]:
        """One user message: the turn-1 template with the rendered context and both responses."""
        check_responses(response1, response2)
        content = self._turn1.render(context=render_context(context), response1=response1, response2=response2)
        return [{"role": "user", "content": content}]

    def followup_message(self, turn: int) -> Optional[Dict[str, str]]:
        """Turn 1 -> the turn-2 instructions as a user message; any other turn -> ``None``."""
        if turn == 1 and not isinstance(turn, bool):
            return {"role": "user", "content": self._turn2.render()}
        return None

    def stop_strings(self, turn: int) -> List[str]:
        """Turn 0: none (ends at EOS, as in the reference); turn 1: ``[The End of Ranking Score]``."""
        return [] if self._check_turn(turn) == 0 else [M.RANKING_END]

    def parse_turn1(self, text: str) -> Turn1Result:
        """See :func:`brrm_parse.parse_turn1`."""
        return brrm_parse.parse_turn1(text)

    def parse_verdict(self, text: str) -> Verdict:
        """See :func:`brrm_parse.parse_verdict`."""
        return brrm_parse.parse_verdict(text)

    def format_turn_output(self, turn: int, *, preference: int, dimensions: Optional[Sequence[str]] = None,
                           analysis1: str = "", analysis2: str = "") -> str:
        """Turn 0: focus block (``dimensions``, default ``["Information Accuracy"]``) + the two
        quality analyses. Turn 1: the two analyses + the ranking block for ``preference``,
        ending with the stop string. Empty analyses get a neutral placeholder sentence."""
        self._check_turn(turn)
        check_preference(preference)
        a1 = check_analysis("analysis1", analysis1, _ALL_MARKERS)
        a2 = check_analysis("analysis2", analysis2, _ALL_MARKERS)
        if turn == 0:
            names = self._canonical_dimensions(dimensions)
            a1 = a1 or "- Critical Issues: None identified."
            a2 = a2 or "- Critical Issues: None identified."
            return (
                f"{M.FOCUS_BEGIN}\n{', '.join(names)}\n{M.FOCUS_END}\n\n"
                f"{M.quality_begin(1)}\n{a1}\n{M.quality_end(1)}\n\n"
                f"{M.quality_begin(2)}\n{a2}\n{M.quality_end(2)}"
            )
        a1 = a1 or "Re-evaluated under the selected dimensions."
        a2 = a2 or "Re-evaluated under the selected dimensions."
        return (
            f"{M.analysis_begin(1)}\n{a1}\n{M.analysis_end(1)}\n\n"
            f"{M.analysis_begin(2)}\n{a2}\n{M.analysis_end(2)}\n\n"
            f"{M.RANKING_BEGIN}\n{M.boxed(preference)}\n{M.RANKING_END}"
        )

    def _canonical_dimensions(self, dimensions: Optional[Sequence[str]]) -> List[str]:
        if dimensions is None:
            return list(self.DEFAULT_DIMENSIONS)
        if isinstance(dimensions, str):
            raise ValueError(f"dimensions must be a list of names, got the string {dimensions!r}")
        names = []
        for d in dimensions:
            canon = canonical_dimension(d)
            if canon is None:
                raise ValueError(f"unknown dimension {d!r}; valid: {', '.join(DIMENSIONS)}")
            if canon not in names:
                names.append(canon)
        if not 1 <= len(names) <= 3:
            raise ValueError(f"choose 1-3 distinct dimensions, got {len(names)}: {names}")
        return names
