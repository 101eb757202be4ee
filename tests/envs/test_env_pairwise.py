"""Pairwise judge scores (megatron_brrm.envs.pairwise) against hand-computed tables.

The rule under test (its docstring): score_i = the mean of response i's points over the comparisons
it takes part in; a point is 1 for a win, 0 for a loss, 0.5 for an unparseable verdict. With both
orders in win-rate mode that is mean over j != i of P(i beats j), P averaged over the two orders.
Every expected number below is worked out by hand in the comment beside it.
"""
from __future__ import annotations

import pytest

from megatron_brrm.envs.pairwise import REFERENCE, Comparison, plan_comparisons, position_consistency, win_rates

R = REFERENCE


def test_win_rate_both_orders_matches_the_hand_table():
    comps = plan_comparisons([3, 2], "win_rate", both_orders=True)
    assert comps == [Comparison(0, 0, 1), Comparison(0, 1, 0), Comparison(0, 0, 2), Comparison(0, 2, 0),
                     Comparison(0, 1, 2), Comparison(0, 2, 1), Comparison(1, 0, 1), Comparison(1, 1, 0)]
    table = {  # (group, shown first, shown second) -> verdict (1: first is better, 2: second, None: unparseable)
        (0, 0, 1): 1, (0, 1, 0): 2,        # 0 beats 1 in both orders
        (0, 0, 2): None, (0, 2, 0): 1,     # a tie, then 2 beats 0
        (0, 1, 2): 2, (0, 2, 1): None,     # 2 beats 1, then a tie
        (1, 0, 1): 2, (1, 1, 0): 2,        # a judge that always names position 2
    }
    scores = win_rates([3, 2], comps, [table[(c.group, c.first, c.second)] for c in comps])
    # response 0: 1 + 1 (vs 1) + 0.5 + 0 (vs 2) = 2.5 over 4 comparisons
    # response 1: 0 + 0 (vs 0) + 0 + 0.5 (vs 2) = 0.5 over 4
    # response 2: 0.5 + 1 (vs 0) + 1 + 0.5 (vs 1) = 3.0 over 4
    assert scores[0] == [0.625, 0.125, 0.75]
    assert sum(scores[0]) == 3 / 2  # every comparison hands out one point: the scores of n responses sum to n / 2
    assert scores[1] == [0.5, 0.5]  # pure position bias: each wins the order where it is second
    # the same as "mean over j != i of P(i beats j), both orders averaged": P(0>1) = 1, P(0>2) = 0.25
    assert scores[0][0] == (1.0 + 0.25) / 2


def test_reference_mode_counts_wins_against_the_reference_only():
    comps = plan_comparisons([2], "reference", both_orders=True)
    assert comps == [Comparison(0, 0, R), Comparison(0, R, 0), Comparison(0, 1, R), Comparison(0, R, 1)]
    verdicts = [1, 1, None, 2]  # 0 beats R, R beats 0; a tie, then 1 beats R
    assert win_rates([2], comps, verdicts) == [[0.5, 0.75]]  # (1 + 0) / 2; (0.5 + 1) / 2


def test_single_order_alternates_positions():
    # win rate: (i, j) when i + j is even, (j, i) when odd; reference: (i, R) for even i, (R, i) for odd i
    assert plan_comparisons([3], "win_rate", both_orders=False) == [Comparison(0, 1, 0), Comparison(0, 0, 2),
                                                                    Comparison(0, 2, 1)]
    assert plan_comparisons([3], "reference", both_orders=False) == [Comparison(0, 0, R), Comparison(0, R, 1),
                                                                     Comparison(0, 2, R)]
    comps = plan_comparisons([3], "win_rate", both_orders=False)
    # (1, 0) -> 1: 1 beats 0; (0, 2) -> 2: 2 beats 0; (2, 1) -> None: a tie
    assert win_rates([3], comps, [1, 2, None]) == [[0.0, 0.75, 0.75]]  # 0: 0, 0; 1: 1, 0.5; 2: 1, 0.5


def test_a_group_of_one_has_no_comparison_and_scores_one_half():
    assert plan_comparisons([1], "win_rate") == []
    assert win_rates([1], [], []) == [[0.5]]


def test_position_consistency_counts_pairs_whose_two_orders_agree():
    comps = plan_comparisons([3], "win_rate", both_orders=True)
    verdicts = [1, 2, None, 1, 2, None]  # {0,1}: 0 and 0 (agree); {0,2}: none and 2; {1,2}: 2 and none
    assert position_consistency(comps, verdicts) == pytest.approx(1 / 3)
    assert position_consistency(plan_comparisons([3], "win_rate", both_orders=False), [1, 1, 1]) is None


@pytest.mark.parametrize("verdicts, message", [
    ([1, 3], "must be 1, 2 or None"),
    ([1, True], "must be 1, 2 or None"),
    ([1], "1 verdicts for 2 comparisons"),
])
def test_bad_verdicts_are_named(verdicts, message):
    with pytest.raises(ValueError, match=message):
        win_rates([2], plan_comparisons([2]), verdicts)


def test_bad_plans_are_named():
    with pytest.raises(ValueError, match="judge mode must be one of"):
        plan_comparisons([2], "elo")
    with pytest.raises(ValueError, match="group 0 has 0 responses"):
        plan_comparisons([0])
    with pytest.raises(ValueError, match="names response 2 of a group of 2"):
        win_rates([2], [Comparison(0, 0, 2)], [1])
