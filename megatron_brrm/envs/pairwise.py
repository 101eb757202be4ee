"""Pairwise comparisons within GRPO groups and their scores: which comparisons a judge runs, and how
its verdicts become one score per response.

Modes (``env.judge_mode``):

* ``win_rate`` -- every unordered pair ``{i, j}`` of a group of ``n`` responses is compared.
  With ``both_orders`` each pair is judged twice, ``(i, j)`` and ``(j, i)`` (``i`` shown as
  Response 1 first), ``n (n - 1)`` comparisons per group; otherwise once, ``n (n - 1) / 2``
  comparisons, in the order ``(i, j)`` when ``i + j`` is even and ``(j, i)`` when it is odd
  (``i < j``), so a judge that always names one position favours no index systematically.
* ``reference`` -- every response ``i`` is compared with the group's reference response ``R``:
  ``(i, R)`` and ``(R, i)`` with ``both_orders`` (2 comparisons per response), else one, ``(i, R)``
  for even ``i`` and ``(R, i)`` for odd ``i``.

Score of response ``i`` (a win rate, in [0, 1]): each comparison it takes part in gives it a point
``w`` = 1 when the judge prefers it, 0 when the judge prefers the other response, and **0.5 when
the verdict is malformed** (unparseable or truncated: the judge expressed no preference, counted
as a tie); the score is the mean of its points over its comparisons:

    score_i = (1 / |C_i|) * sum_{c in C_i} w_i(c)

With both orders in ``win_rate`` mode this is ``score_i = mean_{j != i} P(i beats j)``, ``P`` averaged
over the two presentation orders (which cancels a judge's position bias); in ``reference`` mode
``score_i`` is the fraction of orders in which response ``i`` beats the reference.

Source of the rule: our own, stated here: the winning percentage of a round-robin tournament
within each group (a tie counts half), used to turn a pairwise judge into per-response GRPO
rewards, in the spirit of the pairwise generative reward models of RM-R1 (arXiv 2505.02387) and
BR-RM (arXiv 2510.23596), which judge two responses per call and are evaluated in both orders;
neither paper specifies a policy-training aggregation. Ties at 0.5 follow RewardBench's rule for
a generative judge without a verdict (this project's ``evaluation/run.py --unparseable-as tie``).

In ``win_rate`` mode the scores of a group sum to ``n / 2`` (every comparison hands out one point
in total), so their mean is 0.5 by construction: they rank responses within the group and say
nothing across groups. A group of one response has no comparison and scores 0.5. In ``reference``
mode the reference response collects no score; the mean score measures the policy against the
references and can rise over training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

REFERENCE = -1  # the index of a group's reference response in a Comparison
MODES = ("win_rate", "reference")


@dataclass(frozen=True)
class Comparison:
    """One judge call: in group ``group``, response ``first`` shown as Response 1 and ``second`` as
    Response 2 (either may be :data:`REFERENCE`)."""

    group: int
    first: int
    second: int


def plan_comparisons(group_sizes: Sequence[int], mode: str = "win_rate", both_orders: bool = True) -> List[Comparison]:
    """The comparisons to run for groups of ``group_sizes`` responses (rules in the module docstring).

    Returns:
        Comparisons grouped by group, in a deterministic order.

    Raises:
        ValueError: an unknown ``mode`` or a group size < 1.
    """
    if mode not in MODES:
        raise ValueError(f"judge mode must be one of {MODES}, got {mode!r}")
    out: List[Comparison] = []
    for g, n in enumerate(group_sizes):
        if int(n) < 1:
            raise ValueError(f"group {g} has {n} responses; every group needs at least one")
        if mode == "reference":
            for i in range(n):
                if both_orders:
                    out += [Comparison(g, i, REFERENCE), Comparison(g, REFERENCE, i)]
                else:
                    out.append(Comparison(g, i, REFERENCE) if i % 2 == 0 else Comparison(g, REFERENCE, i))
            continue
        for i in range(n):
            for j in range(i + 1, n):
                if both_orders:
                    out += [Comparison(g, i, j), Comparison(g, j, i)]
                else:
                    out.append(Comparison(g, i, j) if (i + j) % 2 == 0 else Comparison(g, j, i))
    return out


def win_rates(group_sizes: Sequence[int], comparisons: Sequence[Comparison],
              verdicts: Sequence[Optional[int]]) -> List[List[float]]:
    """Per-response scores from the judge's verdicts (module docstring).

    Args:
        group_sizes: responses per group.
        comparisons: what was judged (:func:`plan_comparisons`).
        verdicts: per comparison, 1 (Response 1 = ``first`` is better), 2 (``second`` is better) or
            ``None`` (malformed: a tie, 0.5 to each side).

    Returns:
        ``len(group_sizes)`` lists of float scores in [0, 1] (0.5 for a response in no comparison).

    Raises:
        ValueError: ``verdicts`` and ``comparisons`` differ in length, a verdict is not 1, 2 or None,
            or a comparison names a response outside its group.
    """
    if len(verdicts) != len(comparisons):
        raise ValueError(f"{len(verdicts)} verdicts for {len(comparisons)} comparisons")
    points = [[0.0] * int(n) for n in group_sizes]
    counts = [[0] * int(n) for n in group_sizes]
    for c, v in zip(comparisons, verdicts):
        if v not in (1, 2, None) or isinstance(v, bool):
            raise ValueError(f"verdict {v!r} of {c}: must be 1, 2 or None")
        for idx in (c.first, c.second):
            if idx != REFERENCE and not 0 <= idx < len(points[c.group]):
                raise ValueError(f"{c} names response {idx} of a group of {len(points[c.group])}")
        won_first = 0.5 if v is None else float(v == 1)
        for idx, w in ((c.first, won_first), (c.second, 1.0 - won_first)):
            if idx != REFERENCE:
                points[c.group][idx] += w
                counts[c.group][idx] += 1
    return [[p / k if k else 0.5 for p, k in zip(ps, ks)] for ps, ks in zip(points, counts)]


def position_consistency(comparisons: Sequence[Comparison], verdicts: Sequence[Optional[int]]) -> Optional[float]:
    """The fraction of comparisons judged in both orders whose two verdicts name the same response
    (both parseable); ``None`` when no comparison was judged in both orders."""
    seen = {}
    agree = total = 0
    for c, v in zip(comparisons, verdicts):
        winner = None if v is None else (c.first if v == 1 else c.second)
        key = (c.group, min(c.first, c.second), max(c.first, c.second))
        if key in seen:
            total += 1
            agree += int(winner is not None and seen[key] == winner)
        else:
            seen[key] = winner
    return agree / total if total else None
