"""Rejection sampling of judge traces: keep a teacher's conversation only when its verdict is right.

RM-R1's recipe (arXiv 2505.02387, section "Distillation of reasoning traces"; repository
``rm_r1/dataset/reasoning_chain_generation``): a strong teacher writes judge traces for
labelled preference pairs and only traces whose final answer matches the label are kept
for SFT. Here every pair is judged in both orders (the swapped copy has the label flipped,
so a teacher with a position bias gets rejected in one of them), ``samples_per_pair``
times per order, and at most ``keep_per_order`` right traces per order are kept.

Each sample is classified (:func:`classify`) with the judge protocol's own parser:

* ``malformed``: a turn did not end by itself (it hit the token limit, or could not run),
  the final verdict does not parse, or, with ``strict_turn1`` (default), turn 1 breaks the
  protocol's format (BR-RM: 1-3 known focus dimensions and both analysis blocks);
* ``wrong``: a well-formed verdict naming the rejected response;
* ``kept``: a well-formed verdict naming the chosen one -> a trace
  ``{"messages": [opening messages, assistant turn 1, user turn 2, assistant turn 2, ...]}``,
  the format the SFT driver reads (``sft.traces_path``; :func:`megatron_brrm.rollout.traces.tokenize_trace`).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from megatron_brrm.data.augment import base_id, swapped_copy
from megatron_brrm.data.schema import PreferencePair
from megatron_brrm.judge import RewardRule

from .teachers import TeacherSample

KEPT, WRONG, MALFORMED = "kept", "wrong", "malformed"
ORDER_MODES = ("both", "given")


def classify(protocol, label: int, sample: TeacherSample, strict_turn1: bool = True) -> Tuple[str, Optional[str]]:
    """``(status, reason)`` of one sample against the human ``label`` (module docstring);
    ``reason`` says why a sample is malformed (else ``None``).

    Raises:
        ValueError: ``label`` is not 1 or 2, or the sample has the wrong number of turns.
    """
    if len(sample.turn_texts) != protocol.num_turns or len(sample.finish_reasons) != protocol.num_turns:
        raise ValueError(f"a {protocol.name} sample needs {protocol.num_turns} turn(s), got {len(sample.turn_texts)}")
    for k, reason in enumerate(sample.finish_reasons):
        if reason != "stop":
            return MALFORMED, f"turn {k + 1} ended with {reason!r} (token limit or no room left)"
    episode = protocol.new_episode(label=label, rule=RewardRule(strict_turn1=strict_turn1))
    for text in sample.turn_texts:
        step = episode.step(text)
    verdict = step.verdict
    if verdict.format_error is not None:
        return MALFORMED, verdict.format_error
    if strict_turn1 and step.turn1 is not None and step.turn1.format_error is not None:
        return MALFORMED, f"turn 1: {step.turn1.format_error}"
    return (KEPT, None) if verdict.preference == label else (WRONG, None)


def trace_messages(protocol, pair, turn_texts: Sequence[str]) -> List[Dict[str, str]]:
    """The chat conversation of a sample: the protocol's opening messages for ``pair``, then each
    turn's assistant text, with the protocol's user message before every later turn."""
    messages = list(protocol.turn1_messages(pair.context, pair.response1, pair.response2))
    for turn, text in enumerate(turn_texts):
        if turn > 0:
            messages.append(protocol.followup_message(turn))
        messages.append({"role": "assistant", "content": text})
    return messages


def presentation_orders(pairs: Sequence[PreferencePair], orders: str = "both") -> List[PreferencePair]:
    """The pairs to judge. ``"given"``: as they are. ``"both"``: every pair in both orders; a file
    that already holds both orders of a pair (ids ``X`` and ``X:swap``, as ``tools/preprocess_data.py``
    writes training data) is used as is, any other pair gets its swapped copy after it.

    Raises:
        ValueError: unknown ``orders``.
    """
    if orders not in ORDER_MODES:
        raise ValueError(f"--orders must be one of {list(ORDER_MODES)}, got {orders!r}")
    if orders == "given":
        return list(pairs)
    count = Counter(base_id(p.id) for p in pairs)
    out: List[PreferencePair] = []
    for p in pairs:
        out.append(p)
        if count[base_id(p.id)] == 1:
            out.append(swapped_copy(p))
    return out


@dataclass
class SourceStats:
    """Per-source counts of a distillation run.

    Attributes:
        pairs: distinct pairs (both orders count once); orders: presentations judged;
        samples: teacher conversations; kept / wrong / malformed: their classification
        (``kept`` counts right samples, also those beyond ``keep_per_order``);
        written: traces written; pairs_with_trace: pairs with at least one trace written;
        malformed_reasons: reason -> count (the first words of each reason).
    """

    pairs: int = 0
    orders: int = 0
    samples: int = 0
    kept: int = 0
    wrong: int = 0
    malformed: int = 0
    written: int = 0
    pairs_with_trace: int = 0
    malformed_reasons: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        """JSON-ready copy (reasons as a plain dict, most common first)."""
        d = dict(self.__dict__)
        d["malformed_reasons"] = dict(self.malformed_reasons.most_common())
        return d


@dataclass
class DistillResult:
    """What :func:`distill` returns: the traces to write and the per-source statistics."""

    traces: List[dict]
    stats: Dict[str, SourceStats]

    def summary(self) -> dict:
        """``{"sources": {source: stats}, "total": stats}`` (JSON-ready)."""
        total = SourceStats()
        for s in self.stats.values():
            for k in ("pairs", "orders", "samples", "kept", "wrong", "malformed", "written", "pairs_with_trace"):
                setattr(total, k, getattr(total, k) + getattr(s, k))
            total.malformed_reasons.update(s.malformed_reasons)
        return {"sources": {k: v.to_dict() for k, v in sorted(self.stats.items())}, "total": total.to_dict()}

    def table(self) -> str:
        """The summary as a markdown table, one row per source and a total row."""
        summ = self.summary()
        cols = ("pairs", "orders", "samples", "kept", "wrong", "malformed", "written", "pairs_with_trace")
        lines = ["| source | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
        for name, s in [*summ["sources"].items(), ("total", summ["total"])]:
            lines.append(f"| {name} | " + " | ".join(str(s[c]) for c in cols) + " |")
        return "\n".join(lines)


def distill(pairs: Sequence[PreferencePair], teacher, protocol, orders: str = "both", keep_per_order: int = 1,
            strict_turn1: bool = True, teacher_name: str = "", batch_size: int = 64,
            progress: Optional[Callable[[int], None]] = None) -> DistillResult:
    """Judge every pair with ``teacher`` and keep the right traces (module docstring).

    Args:
        pairs: labelled preference pairs.
        teacher: an :class:`~megatron_brrm.distill.teachers.EngineTeacher` or
            :class:`~megatron_brrm.distill.teachers.HTTPTeacher` (its ``n`` = samples per order).
        protocol: the judge protocol the traces follow.
        orders: ``"both"`` or ``"given"`` (:func:`presentation_orders`).
        keep_per_order: right traces kept per presentation (the first ones); 0 keeps all.
        strict_turn1: a malformed turn 1 makes the sample malformed.
        teacher_name: recorded in each trace's ``meta``.
        batch_size: presentations handed to the teacher at a time.
        progress: called with the number of samples finished.

    Returns:
        :class:`DistillResult`; each trace is ``{"messages": [...], "meta": {"pair_id", "source",
        "label", "sample", "teacher"}}``.
    """
    todo = presentation_orders(pairs, orders)
    stats: Dict[str, SourceStats] = {}
    seen_pairs: Dict[str, set] = {}
    with_trace: Dict[str, set] = {}
    traces: List[dict] = []
    for start in range(0, len(todo), max(1, int(batch_size))):
        batch = todo[start:start + max(1, int(batch_size))]
        samples = teacher.sample(batch, progress=progress)
        for pair, mine in zip(batch, samples):
            st = stats.setdefault(pair.source, SourceStats())
            seen_pairs.setdefault(pair.source, set()).add(base_id(pair.id))
            st.orders += 1
            written = 0
            for k, sample in enumerate(mine):
                st.samples += 1
                status, reason = classify(protocol, pair.preference, sample, strict_turn1)
                if status == MALFORMED:
                    st.malformed += 1
                    st.malformed_reasons[(reason or "").split(":")[0][:80]] += 1
                    continue
                if status == WRONG:
                    st.wrong += 1
                    continue
                st.kept += 1
                if keep_per_order and written >= keep_per_order:
                    continue
                written += 1
                st.written += 1
                with_trace.setdefault(pair.source, set()).add(base_id(pair.id))
                traces.append({"messages": trace_messages(protocol, pair, sample.turn_texts),
                               "meta": {"pair_id": pair.id, "source": pair.source, "label": pair.preference,
                                        "sample": k, "teacher": teacher_name}})
    for src, st in stats.items():
        st.pairs = len(seen_pairs[src])
        st.pairs_with_trace = len(with_trace.get(src, ()))
    return DistillResult(traces, stats)
