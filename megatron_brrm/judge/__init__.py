"""The judge protocol: prompt templates, output parsers and the reward, framework-free.

Pure standard library (no torch, nothing else of the project), so data tools, the rollout
loop, the GRPO driver and the evaluation harness can all share it.

Quick use::

    from megatron_brrm.judge import get_protocol, RewardRule

    proto = get_protocol("brrm")                       # or "rmr1"; template_dir=... for own wording
    messages = proto.turn1_messages(pair.context, pair.response1, pair.response2)
    episode = proto.new_episode(label=pair.preference, rule=RewardRule.preset("paper"))
    # generate turn 0 with stop=proto.stop_strings(0) ...
    step = episode.step(turn0_text)                    # -> step.next_message (turn-2 instructions)
    # append the generated tokens + step.next_message, generate turn 1 with proto.stop_strings(1) ...
    step = episode.step(turn1_text)                    # -> step.done, step.reward, step.verdict

Protocols (docs/design.md §5):
    ``brrm``  BR-RM two-turn judge (arXiv 2510.23596). Turn 0: choose 1-3 of :data:`DIMENSIONS`
              and analyse both responses. Turn 1 (same conversation, a constant user message
              with three evaluation hierarchies): re-analyse and output
              ``[The Begin of Ranking Score]\\n\\boxed{1|2}\\n[The End of Ranking Score]``.
    ``rmr1``  RM-R1 chain-of-rubrics single-turn judge (arXiv 2505.02387):
              ``<answer>[[A]]</answer>`` (= 1) or ``<answer>[[B]]</answer>`` (= 2).

Parsing rules and tolerances: ``brrm_parse`` and ``rmr1`` module docstrings. Parsers never
raise on a string; a malformed output becomes ``Verdict.format_error`` and the
``malformed`` reward. Reward presets (``RewardRule.preset``): ``"paper"`` 0 / -1 / -100 (default)
and ``"reference"`` 0 / -10 / -100 (what the BR-RM code used); ``strict_turn1=True`` also
penalises a malformed turn 1.

Templates: ``templates/<protocol>/*.txt`` with ``{{placeholder}}`` slots; see ``templates.py``.
"""
from .markers import RANKING_BEGIN, RANKING_END
from .protocol import Episode, JudgeProtocol
from .registry import PROTOCOLS, get_protocol
from .results import DIMENSIONS, EnvStep, Turn1Result, Verdict, canonical_dimension
from .reward import RewardRule, compute_reward
from .templates import TemplateError, render_context

__all__ = [
    "DIMENSIONS", "EnvStep", "Episode", "JudgeProtocol", "PROTOCOLS", "RANKING_BEGIN", "RANKING_END",
    "RewardRule", "TemplateError", "Turn1Result", "Verdict", "canonical_dimension", "compute_reward",
    "get_protocol", "render_context",
]
