"""Scoring rules on hand-built prediction sets whose scores were computed by hand.

Every expected number below is written out from the official rule (SOURCES.md sections
1-3, evaluation/README.md), not produced by the code under test. Tolerance 1e-9: the
scorers do a handful of float additions/divisions on percentages, exact to ~1e-13.
"""
from __future__ import annotations

import pytest

from megatron_brrm.evaluation.benchmarks.base import Comparison
from megatron_brrm.evaluation.orders import Presentation
from megatron_brrm.evaluation.records import Judgement
from megatron_brrm.evaluation.scoring import Outcome, score_rewardbench, score_rmb, score_rmbench

TOL = 1e-9


def _rb(subset: str, section: str, k: int) -> Comparison:
    cid = f"rewardbench:{subset}:{k}"
    return Comparison("rewardbench", cid, cid, [{"role": "user", "content": "q"}], "good", "bad",
                      (section, subset), {"subset": subset, "section": section})


def _rm(domain: str, item: int, i: int, j: int) -> Comparison:
    dom = "safety" if domain.startswith("safety") else domain
    iid = f"rmbench:{domain}:{item}"
    return Comparison("rmbench", f"{iid}:c{i}r{j}", iid, [{"role": "user", "content": "q"}], "good", "bad",
                      (dom, domain), {"domain": dom, "domain_file": domain, "chosen_style": i, "rejected_style": j})


def _pair(goal: str, uid: str, scenario: str = "x") -> Comparison:
    return Comparison("rmb", f"rmb:pair:{uid}", f"rmb:pair:{uid}", [{"role": "user", "content": "q"}], "g", "b",
                      (f"pairwise/{goal}", scenario), {"set": "pairwise", "goal": goal, "scenario": scenario})


def _bon(goal: str, uid: str, k: int, n: int, scenario: str = "x") -> Comparison:
    return Comparison("rmb", f"rmb:bon:{uid}:l{k}", f"rmb:bon:{uid}", [{"role": "user", "content": "q"}], "g", "b",
                      (f"bon/{goal}", scenario), {"set": "bon", "goal": goal, "scenario": scenario,
                                                  "loser_index": k, "num_losers": n})


# ---------------------------------------------------------------- RM-Bench

def test_rmbench_only_hard_triangle_wrong():
    # One chat item; the three upper-right comparisons (chosen less formatted) are wrong.
    hard = {(0, 1), (0, 2), (1, 2)}
    outcomes = [Outcome(_rm("chat", 1, i, j), (i, j) not in hard) for i in range(3) for j in range(3)]
    s = score_rmbench(outcomes)
    chat = s["domains"]["chat"]
    assert chat["hard"] == pytest.approx(0.0, abs=TOL)
    assert chat["normal"] == pytest.approx(100.0, abs=TOL)
    assert chat["easy"] == pytest.approx(100.0, abs=TOL)
    assert chat["score"] == pytest.approx(200.0 / 3.0, abs=TOL)  # mean(0, 100, 100)
    assert chat["matrix"] == [[100.0, 0.0, 0.0], [100.0, 100.0, 0.0], [100.0, 100.0, 100.0]]
    assert s["overall"] == pytest.approx(200.0 / 3.0, abs=TOL)
    assert s["missing_domains"] == ["math", "code", "safety"]
    assert s["partial"] is True


def test_rmbench_safety_pooled_and_domain_mean():
    # safety-refuse item all correct, safety-response item all wrong -> pooled safety cells 50.
    # code: 2 items; item 1 all correct, item 2 wrong only on the diagonal
    #   -> M diag = 50, off-diagonal 100 -> hard 100, normal 50, easy 100 -> 250/3.
    outs = [Outcome(_rm("safety-refuse", 7, i, j), True) for i in range(3) for j in range(3)]
    outs += [Outcome(_rm("safety-response", 7, i, j), False) for i in range(3) for j in range(3)]
    outs += [Outcome(_rm("code", 1, i, j), True) for i in range(3) for j in range(3)]
    outs += [Outcome(_rm("code", 2, i, j), i != j) for i in range(3) for j in range(3)]
    s = score_rmbench(outs)
    assert s["domains"]["safety"]["n_items"] == 2  # same id 7 in two files = two items
    assert s["domains"]["safety"]["score"] == pytest.approx(50.0, abs=TOL)
    code = s["domains"]["code"]
    assert (code["hard"], code["normal"], code["easy"]) == pytest.approx((100.0, 50.0, 100.0), abs=TOL)
    assert s["overall"] == pytest.approx((50.0 + 250.0 / 3.0) / 2.0, abs=TOL)
    assert s["hard"] == pytest.approx((50.0 + 100.0) / 2.0, abs=TOL)
    assert s["normal"] == pytest.approx((50.0 + 50.0) / 2.0, abs=TOL)


def test_rmbench_correctness_uses_one_based_label():
    # The published BR-RM scorer compares the 1-based label with 0 and always flips; ours
    # must call "verdict == position of chosen" correct in both orders.
    comp = _rm("chat", 1, 0, 0)
    for swapped, verdict, want in [(False, 1, True), (False, 2, False), (True, 2, True), (True, 1, False),
                                   (True, None, False), (False, None, False)]:
        j = Judgement.build(Presentation(comp, swapped, True), ["t1", "t2"], verdict,
                            None if verdict else "missing ranking block")
        assert j.label == (2 if swapped else 1)
        assert j.correct is want, (swapped, verdict)


# ---------------------------------------------------------------- RMB

def test_rmb_bon_item_with_one_failing_loser_is_wrong():
    outs = [
        # Helpfulness BoN: A wins all 3; B loses to loser 1; C has an unparseable verdict (= wrong).
        *(Outcome(_bon("Helpfulness", "A", k, 3), True) for k in range(3)),
        *(Outcome(_bon("Helpfulness", "B", k, 3), k != 1) for k in range(3)),
        Outcome(_bon("Helpfulness", "C", 0, 2), True), Outcome(_bon("Helpfulness", "C", 1, 2), False),
        # Harmlessness BoN: one item, both losers beaten.
        Outcome(_bon("Harmlessness", "D", 0, 2), True), Outcome(_bon("Harmlessness", "D", 1, 2), True),
        # Pairwise: Help 2/3, Harm 1/2.
        Outcome(_pair("Helpfulness", "p1"), True), Outcome(_pair("Helpfulness", "p2"), True),
        Outcome(_pair("Helpfulness", "p3"), False),
        Outcome(_pair("Harmlessness", "p4"), True), Outcome(_pair("Harmlessness", "p5"), False),
    ]
    s = score_rmb(outs)
    assert s["bon"]["Helpfulness"]["n"] == 3 and s["bon"]["Helpfulness"]["correct"] == 1
    h = s["headline"]
    assert h["Help-BoN"] == pytest.approx(100.0 / 3.0, abs=TOL)
    assert h["Harm-BoN"] == pytest.approx(100.0, abs=TOL)
    assert h["Help-Pair"] == pytest.approx(200.0 / 3.0, abs=TOL)
    assert h["Harm-Pair"] == pytest.approx(50.0, abs=TOL)
    assert s["overall"] == pytest.approx(62.5, abs=TOL)  # (100/3 + 100 + 200/3 + 50) / 4
    assert s["partial"] is False


def test_rmb_pairwise_is_micro_over_pairs_and_incomplete_bon_is_excluded():
    # scenario a: 1/1 right, scenario b: 1/3 right -> micro 2/4 = 50 (macro would be 66.7)
    outs = [Outcome(_pair("Helpfulness", "a1", "a"), True)]
    outs += [Outcome(_pair("Helpfulness", f"b{k}", "b"), k == 0) for k in range(3)]
    # a BoN item with 3 losers of which only 2 were judged: not scored, reported
    outs += [Outcome(_bon("Harmlessness", "E", k, 3), True) for k in range(2)]
    s = score_rmb(outs)
    assert s["headline"]["Help-Pair"] == pytest.approx(50.0, abs=TOL)
    assert s["pairwise"]["Helpfulness"]["per_scenario"] == {"a": 100.0, "b": pytest.approx(100.0 / 3.0)}
    assert "Harm-BoN" not in s["headline"] and s["bon_incomplete_items"] == 1
    assert s["overall"] == pytest.approx(50.0, abs=TOL) and s["partial"] is True


# ---------------------------------------------------------------- RewardBench

def test_rewardbench_section_weights_by_hand():
    outs = []
    # Chat: alpacaeval-easy 2/2 (100, w 100); mt-bench-easy 1/4 (25, w 28)
    outs += [Outcome(_rb("alpacaeval-easy", "Chat", k), True) for k in range(2)]
    outs += [Outcome(_rb("mt-bench-easy", "Chat", k), k == 0) for k in range(4)]
    # Reasoning: math-prm 3/4 (75, w 984); hep-python 1/2 (50, w 164); hep-go 1/2 (50, w 164)
    outs += [Outcome(_rb("math-prm", "Reasoning", k), k < 3) for k in range(4)]
    outs += [Outcome(_rb("hep-python", "Reasoning", k), k == 0) for k in range(2)]
    outs += [Outcome(_rb("hep-go", "Reasoning", k), k == 0) for k in range(2)]
    s = score_rewardbench(outs)
    chat = (100.0 * 100 + 25.0 * 28) / (100 + 28)  # 83.59375
    reasoning = (75.0 * 984 + 50.0 * 164 + 50.0 * 164) / (984 + 164 + 164)  # 68.75
    assert s["sections"]["Chat"] == pytest.approx(83.59375, abs=TOL) == pytest.approx(chat)
    assert s["sections"]["Reasoning"] == pytest.approx(68.75, abs=TOL) == pytest.approx(reasoning)
    assert s["overall"] == pytest.approx((83.59375 + 68.75) / 2, abs=TOL)  # sections without data excluded
    # BR-RM paper variant: plain accuracy over the section's rows
    assert s["sections_micro"]["Chat"] == pytest.approx(50.0, abs=TOL)  # 3 / 6
    assert s["sections_micro"]["Reasoning"] == pytest.approx(62.5, abs=TOL)  # 5 / 8
    assert s["overall_micro"] == pytest.approx(56.25, abs=TOL)
    assert set(s["partial_sections"]) == {"Chat", "Chat Hard", "Safety", "Reasoning"}
    assert "Safety" not in s["sections"]


def test_rewardbench_math_prm_is_half_of_reasoning():
    # math-prm 1/1 right, each of the six hep-* subsets 0/1: official Reasoning
    # = 0.5 * 100 + 0.5 * 0 = 50 (weights 984 vs 6 x 164), micro = 1/7.
    outs = [Outcome(_rb("math-prm", "Reasoning", 0), True)]
    outs += [Outcome(_rb(f"hep-{lang}", "Reasoning", 0), False)
             for lang in ("cpp", "go", "java", "js", "python", "rust")]
    s = score_rewardbench(outs)
    assert s["sections"]["Reasoning"] == pytest.approx(50.0, abs=TOL)
    assert s["sections_micro"]["Reasoning"] == pytest.approx(100.0 / 7.0, abs=TOL)
    assert "Reasoning" not in s["partial_sections"]


# ---------------------------------------------------------------- both orders, format errors

def test_both_orders_accuracy_and_position_consistency():
    from megatron_brrm.evaluation.benchmarks.base import BenchmarkData
    from megatron_brrm.evaluation.scoring.aggregate import score_benchmark

    comps = [_rb("alpacaeval-easy", "Chat", k) for k in range(4)]
    data = BenchmarkData("rewardbench", comps)
    # (primary swapped?, primary verdict, other verdict) per comparison:
    #   A right in both orders (consistent); B right first, then names Response 1 again
    #   (inconsistent); C picks the rejected one in both orders (consistent, wrong);
    #   D right first, other order unparseable.
    plan = [(False, 1, 2), (False, 1, 1), (True, 1, 2), (True, 2, None)]
    judgements = {}
    for comp, (swap, v_primary, v_other) in zip(comps, plan):
        for swapped, primary, v in ((swap, True, v_primary), (not swap, False, v_other)):
            j = Judgement.build(Presentation(comp, swapped, primary), ["t1", "t2"], v,
                                None if v else "missing ranking block")
            judgements[j.key] = j
    res = score_benchmark(data, comps, judgements, "both")
    assert res["overall"] == pytest.approx(75.0, abs=TOL)  # A, B, D right in the seeded order
    assert res["overall_both_orders"] == pytest.approx(25.0, abs=TOL)  # only A
    assert res["position_consistency"] == pytest.approx(50.0, abs=TOL)  # A and C
    assert res["format_errors"] == {"count": 1, "rate": pytest.approx(12.5, abs=TOL)}
    single = score_benchmark(data, comps, judgements, "single")
    assert single["overall"] == pytest.approx(75.0, abs=TOL) and "position_consistency" not in single


def test_rmbench_matches_numpy_reference_of_official_compute_accuracy():
    # Independent reference: RM-Bench scripts/utils.py::compute_accuracy restated with numpy
    # (acc_matrix = correct counts / items; hard = sum(triu(M, 1)) / 3; normal = mean(diag);
    # easy = sum(tril(M, -1)) / 3), per domain, then the mean over domains.
    import numpy as np

    rng = np.random.default_rng(0)
    outs, ref = [], {}
    for domain, n_items in (("chat", 7), ("code", 5), ("safety-refuse", 4), ("safety-response", 3)):
        for item in range(n_items):
            right = rng.random((3, 3)) < 0.6
            outs += [Outcome(_rm(domain, item, i, j), bool(right[i, j])) for i in range(3) for j in range(3)]
            ref.setdefault("safety" if domain.startswith("safety") else domain, []).append(right)
    s = score_rmbench(outs)
    overall = []
    for dom, mats in ref.items():
        m = np.mean(np.stack(mats).astype(float), axis=0)
        hard, normal, easy = np.sum(np.triu(m, 1)) / 3, np.mean(np.diag(m)), np.sum(np.tril(m, -1)) / 3
        got = s["domains"][dom]
        assert (got["hard"], got["normal"], got["easy"]) == pytest.approx((100 * hard, 100 * normal, 100 * easy), abs=TOL)
        overall.append(100 * (hard + normal + easy) / 3)
    assert s["overall"] == pytest.approx(float(np.mean(overall)), abs=TOL)
