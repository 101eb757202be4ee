"""Partial-score bookkeeping (missing judgements, --limit, missing files -> starred cells), the
RMB count of incomplete best-of-N items, and ``--unparseable-as tie|wrong``.

Expected values are worked out by hand from the rules in evaluation/README.md: a row scores
1 (right), 0 (wrong) or, for an unparseable verdict, 0 (``wrong``) or 0.5 (``tie``, RewardBench
``scripts/run_generative.py``); a best-of-N item's credit is the product of its comparisons'.
"""
from __future__ import annotations

import json

import pytest

from megatron_brrm.evaluation.benchmarks.base import BenchmarkData, Comparison
from megatron_brrm.evaluation.orders import Presentation
from megatron_brrm.evaluation.records import Judgement
from megatron_brrm.evaluation.report import detail_rows, format_report
from megatron_brrm.evaluation.scoring import Outcome, score_rmb
from megatron_brrm.evaluation.scoring.aggregate import score_benchmark

TOL = 1e-9
CHAT = ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med")


def _rb(subset: str, k: int, section: str = "Chat") -> Comparison:
    cid = f"rewardbench:{subset}:{k}"
    return Comparison("rewardbench", cid, cid, [{"role": "user", "content": "q"}], "good", "bad",
                      (section, subset), {"subset": subset, "section": section})


def _pair(goal: str, uid: str) -> Comparison:
    return Comparison("rmb", f"rmb:pair:{uid}", f"rmb:pair:{uid}", [{"role": "user", "content": "q"}], "g", "b",
                      (f"pairwise/{goal}", "x"), {"set": "pairwise", "goal": goal, "scenario": "x"})


def _bon(goal: str, uid: str, k: int, n: int) -> Comparison:
    return Comparison("rmb", f"rmb:bon:{uid}:l{k}", f"rmb:bon:{uid}", [{"role": "user", "content": "q"}], "g", "b",
                      (f"bon/{goal}", "x"), {"set": "bon", "goal": goal, "scenario": "x", "loser_index": k,
                                             "num_losers": n})


def _rm(domain_file: str, item: int, i: int, j: int) -> Comparison:
    dom = "safety" if domain_file.startswith("safety") else domain_file
    iid = f"rmbench:{domain_file}:{item}"
    return Comparison("rmbench", f"{iid}:c{i}r{j}", iid, [{"role": "user", "content": "q"}], "good", "bad",
                      (dom, domain_file), {"domain": dom, "domain_file": domain_file, "chosen_style": i,
                                           "rejected_style": j})


def _judge(comps, verdict_of=lambda c: "right", swapped=False, primary=True):
    """Judgements (unswapped order: label 1) whose verdict is right (1), wrong (2) or unparseable (None)."""
    out = {}
    for c in comps:
        kind = verdict_of(c)
        label = 2 if swapped else 1
        v = {"right": label, "wrong": 3 - label, "bad": None}[kind]
        j = Judgement.build(Presentation(c, swapped, primary), ["t1", "t2"], v, None if v else "missing ranking block")
        out[j.key] = j
    return out


# ------------------------------------------------------------------ RMB incomplete best-of-N items

def test_rmb_item_with_no_judged_comparison_is_counted_and_partial():
    # Helpfulness BoN: A judged in full (both losers beaten), B judged for 1 of 2 losers,
    # C for none of its 3 (the case a replay of an incomplete file produces). Before the fix
    # C was invisible: 1 incomplete item reported instead of 2, and Help-BoN not partial.
    outs = [Outcome(_bon("Helpfulness", "A", k, 2), True) for k in range(2)]
    outs += [Outcome(_bon("Helpfulness", "B", 0, 2), True), Outcome(_bon("Helpfulness", "B", 1, 2), None)]
    outs += [Outcome(_bon("Helpfulness", "C", k, 3), None) for k in range(3)]
    outs += [Outcome(_bon("Harmlessness", "D", k, 2), True) for k in range(2)]
    outs += [Outcome(_pair("Helpfulness", "p1"), True), Outcome(_pair("Harmlessness", "p2"), False)]
    s = score_rmb(outs)
    assert s["bon_incomplete_items"] == 2
    assert s["bon"]["Helpfulness"]["n"] == 1 and s["headline"]["Help-BoN"] == pytest.approx(100.0, abs=TOL)
    assert s["partial_headline"] == ["Help-BoN"] and s["partial"] is True
    # the same data with C fully judged and B complete: nothing partial
    full = [o if o.judged else Outcome(o.comparison, True) for o in outs]
    s2 = score_rmb(full)
    assert s2["bon_incomplete_items"] == 0 and s2["partial_headline"] == [] and s2["partial"] is False
    assert s2["headline"]["Help-BoN"] == pytest.approx(100.0, abs=TOL)  # A, B, C all beat every loser


def test_rmb_replay_with_items_missing_entirely_counts_every_incomplete_item(all_comparisons):
    # On the shipped RMB sample: drop every comparison of the first 3 best-of-N items and one
    # comparison of the next 2 -> 5 incomplete items (the independent check found 58 reported
    # where 60 were incomplete: items without any judged comparison were not counted).
    data = BenchmarkData("rmb", all_comparisons["rmb"].comparisons)  # no missing files: isolate the items
    bon_items = []
    for c in data.comparisons:
        if c.meta["set"] == "bon" and c.meta["num_losers"] >= 2 and c.item_id not in bon_items:
            bon_items.append(c.item_id)
    gone_all, gone_one = set(bon_items[:3]), set(bon_items[3:5])
    kept = [c for c in data.comparisons
            if c.item_id not in gone_all and not (c.item_id in gone_one and c.meta["loser_index"] == 0)]
    res = score_benchmark(data, data.comparisons, _judge(kept), "single")
    assert res["scores"]["bon_incomplete_items"] == 5
    assert res["missing_generations"] == len(data.comparisons) - len(kept)
    assert any("5 best-of-N item(s)" in n for n in res["coverage"]["notes"])
    goals = {c.meta["goal"] for c in data.comparisons if c.item_id in gone_all | gone_one}
    want = sorted({"Helpfulness": "Help-BoN", "Harmlessness": "Harm-BoN"}[g] for g in goals)
    assert sorted(res["scores"]["partial_headline"]) == want


# ------------------------------------------------------------------ stars on every partial cell

def test_detail_cells_star_missing_judgements_limit_and_missing_files():
    chat = [_rb(s, k) for s in CHAT for k in range(2)]  # the whole Chat section, 2 rows per subset
    data = BenchmarkData("rewardbench", chat)
    full = score_benchmark(data, chat, _judge(chat), "single")
    cells = detail_rows("rewardbench", full)["RewardBench (official section weights, EXAMPLE_COUNTS)"]
    assert cells == ["100.0", "-", "-", "-", "100.0*"]  # overall partial: three sections have no data
    # one generation missing from a Chat subset -> the Chat cells are partial (before: never starred)
    dropped = {k: v for k, v in _judge(chat).items() if not k.startswith("rewardbench:mt-bench-med:1|")}
    res = score_benchmark(data, chat, dropped, "single")
    for title, row in detail_rows("rewardbench", res).items():
        assert row[0] == "100.0*", title
    assert res["scores"]["incomplete_subsets"] == ["mt-bench-med"]
    # --limit: every cell of the benchmark is starred
    limited = score_benchmark(data, chat[:4], _judge(chat[:4]), "single")
    assert limited["coverage"]["sampled"] is True
    assert detail_rows("rewardbench", limited)["RewardBench (official section weights, EXAMPLE_COUNTS)"][0] == "100.0*"

    # RMB: all four headline numbers complete -> no star; a missing pairwise judgement stars
    # Harm-Pair and the overall only; a missing scenario file stars its set and goal.
    rmb = [_pair("Helpfulness", "h"), _pair("Harmlessness", "x")]
    rmb += [_bon(g, g[:4], k, 2) for g in ("Helpfulness", "Harmlessness") for k in range(2)]
    rdata = BenchmarkData("rmb", rmb)
    assert detail_rows("rmb", score_benchmark(rdata, rmb, _judge(rmb), "single"))["RMB"] == ["100.0"] * 5
    part = score_benchmark(rdata, rmb, _judge([c for c in rmb if c.comparison_id != "rmb:pair:x"]), "single")
    # columns: Help-BoN, Help-Pair, Harm-BoN, Harm-Pair, Overall (Harm-Pair has no judged pair left)
    assert detail_rows("rmb", part)["RMB"] == ["100.0", "100.0", "100.0", "-", "100.0*"]
    nofile = score_benchmark(BenchmarkData("rmb", rmb, missing=["Pairwise_set/Helpfulness/Chat/Discussion"]),
                             rmb, _judge(rmb), "single")
    assert detail_rows("rmb", nofile)["RMB"] == ["100.0", "100.0*", "100.0", "100.0", "100.0*"]

    # RM-Bench: safety pools two files; with safety-response absent, Safety is partial, Chat is not.
    rm = [_rm(f, 1, i, j) for f in ("chat", "safety-refuse") for i in range(3) for j in range(3)]
    mres = score_benchmark(BenchmarkData("rmbench", rm, missing=["math", "code", "safety-response"]), rm,
                           _judge(rm), "single")
    assert detail_rows("rmbench", mres)["RM-Bench"] == ["100.0", "-", "-", "100.0*", "100.0*", "100.0*", "100.0*",
                                                        "100.0*"]


# ------------------------------------------------------------------ --unparseable-as

def test_unparseable_as_tie_scores_half_by_hand():
    # RewardBench alpacaeval-easy: right, wrong, unparseable, unparseable
    #   wrong rule: 1/4 = 25;  tie rule: (1 + 0 + 0.5 + 0.5) / 4 = 50
    rows = [_rb("alpacaeval-easy", k) for k in range(4)]
    kinds = dict(zip((c.comparison_id for c in rows), ("right", "wrong", "bad", "bad")))
    judged = _judge(rows, lambda c: kinds[c.comparison_id])
    data = BenchmarkData("rewardbench", rows)
    assert score_benchmark(data, rows, judged, "single")["scores"]["subsets"]["alpacaeval-easy"]["accuracy"] == \
        pytest.approx(25.0, abs=TOL)
    tie = score_benchmark(data, rows, judged, "single", "tie")
    assert tie["scores"]["subsets"]["alpacaeval-easy"]["accuracy"] == pytest.approx(50.0, abs=TOL)
    assert tie["scores"]["subsets"]["alpacaeval-easy"]["correct"] == 2
    assert tie["unparseable_as"] == "tie" and tie["format_errors"]["count"] == 2

    # RMB BoN (2 losers each): E right + unparseable -> wrong 0, tie 0.5;
    # F unparseable twice -> tie 0.25; G right twice -> 1.  Help-BoN: wrong 1/3, tie (0.5+0.25+1)/3.
    bon = [_bon("Helpfulness", u, k, 2) for u in "EFG" for k in range(2)]
    plan = {"rmb:bon:E:l0": "right", "rmb:bon:E:l1": "bad", "rmb:bon:F:l0": "bad", "rmb:bon:F:l1": "bad"}
    jb = _judge(bon, lambda c: plan.get(c.comparison_id, "right"))
    bdata = BenchmarkData("rmb", bon)
    assert score_benchmark(bdata, bon, jb, "single")["scores"]["headline"]["Help-BoN"] == \
        pytest.approx(100.0 / 3.0, abs=TOL)
    assert score_benchmark(bdata, bon, jb, "single", "tie")["scores"]["headline"]["Help-BoN"] == \
        pytest.approx(100.0 * 1.75 / 3.0, abs=TOL)

    # both orders: right in the seeded order, unparseable in the other -> tie 0.5, wrong 0
    one = [_rb("alpacaeval-easy", 9)]
    jj = {**_judge(one, primary=True), **_judge(one, lambda c: "bad", swapped=True, primary=False)}
    d1 = BenchmarkData("rewardbench", one)
    assert score_benchmark(d1, one, jj, "both")["overall_both_orders"] == pytest.approx(0.0, abs=TOL)
    assert score_benchmark(d1, one, jj, "both", "tie")["overall_both_orders"] == pytest.approx(50.0, abs=TOL)
    with pytest.raises(ValueError, match="unparseable-as"):
        score_benchmark(d1, one, jj, "single", "half")


def test_replay_cli_unparseable_as_is_reported_and_kept(run_cli, write_replay, tmp_path):
    # every verdict is \boxed{3} (unparseable): wrong -> 0, tie -> 50 everywhere
    replay = write_replay("bad", lambda c, label: "3")
    out = tmp_path / "tie.json"
    proc = run_cli("run.py", "--engine", "replay", "--replay", replay, "--bench", "rewardbench",
                   "--unparseable-as", "tie", "--output", out, "--no-png")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["config"]["unparseable_as"] == "tie"
    assert res["summary"]["rewardbench"] == pytest.approx(50.0, abs=TOL)
    assert "scored 0.5 each (RewardBench's generative rule" in proc.stdout and "--unparseable-as tie" in proc.stdout
    # replaying that file again without the flag keeps its rule; --unparseable-as wrong overrides it
    again = run_cli("run.py", "--engine", "replay", "--replay", out, "--output", tmp_path / "again.json", "--no-png")
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "again.json").read_text())["summary"]["rewardbench"] == pytest.approx(50.0, abs=TOL)
    wrong = run_cli("run.py", "--engine", "replay", "--replay", out, "--unparseable-as", "wrong",
                    "--output", tmp_path / "wrong.json", "--no-png")
    assert json.loads((tmp_path / "wrong.json").read_text())["summary"]["rewardbench"] == pytest.approx(0.0, abs=TOL)
    assert "counted as wrong (BR-RM's rule)" in wrong.stdout


def test_run_help_shows_the_whole_description_and_points_at_the_readme(run_cli):
    proc = run_cli("run.py", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "--engine replay --replay FILE" in text and '"comparison_id": "rmbench:chat:12:c0r2"' in text
    assert "evaluation/README.md gives the full replay schema" in text
    assert "--unparseable-as {wrong,tie}" in text


def test_format_report_names_the_rule(all_comparisons):
    data = BenchmarkData("rewardbench", [_rb("alpacaeval-easy", 0)])
    res = {"config": {"name": "m", "unparseable_as": "tie"}, "summary": {},
           "benchmarks": {"rewardbench": score_benchmark(data, data.comparisons, _judge(data.comparisons), "single",
                                                         "tie")}}
    assert "Judging (unparseable verdicts scored 0.5 each" in format_report(res)
