"""RMB (Zhou-Zoey/RMB-Reward-Model-Benchmark) loader.

Reads the ``RMB_dataset`` tree under ``<data_dir>/rmb/``:
``{Pairwise_set,BoN_set}/Harmlessness/<scenario>.json`` and
``{Pairwise_set,BoN_set}/Helpfulness/<task>/<scenario>.json`` (file names contain spaces).

* Pairwise record: ``pair_uid``, ``conversation_input`` (turns ending with a user turn),
  ``chosen.answer``, ``reject.answer`` -> one comparison.
* BoN record: ``bon_uid``, ``conversation_input``, ``bon_best.answer``,
  ``loser_list[*].answer`` -> one comparison (best vs loser k) per loser; the item is the
  group of these comparisons (RMB paper; RM-R1's re-implementation
  ``run_generative_bestofn.py``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from megatron_brrm.data.schema import DataError

from .base import BenchmarkData, Comparison, check_unique, messages_from_turns, read_json_file, require

GOALS = ("Helpfulness", "Harmlessness")
SETS = {"Pairwise_set": "pairwise", "BoN_set": "bon"}
# The scenario files of the official release (same list for Pairwise_set and BoN_set).
HELPFULNESS_SCENARIOS: Dict[str, List[str]] = {
    "Brainstorming": ["Idea Development", "Problem Solving"],
    "Chat": ["Casual Conversation", "Discussion", "Supportive Conversation"],
    "Classification": ["Content Categorization", "Quality and Compliance Assessment"],
    "Closed QA": ["ContextBased", "OptionBased"],
    "Code": ["Data Management", "Development and Implementation", "Documentation", "Quality and Optimization"],
    "Generation": ["Creative Writing", "Professional Content Generation"],
    "Open QA": ["Factual", "General Explanation", "Hypothetical Scenarios", "Interpretative Analysis",
                "Personal Opinion and Advice", "Technical and Practical Support"],
    "Reasoning": ["Analytical Reasoning", "Critical Thinking", "Human Decision Making", "Logical Deduction",
                  "Pattern Recognition"],
    "Rewrite": ["Paraphrasing", "PostQuality Assessment Rewriting", "Textual ExpansionReduction", "Tone Adjustment"],
    "Role Playing": ["General Character", "Specific Character"],
    "Summarization": ["Specialized Summaries", "Standard Summaries"],
    "Translation": ["GeneralExcerpt Language Translation", "Literary and Cultural Translation",
                    "Technical and Scientific Translation"],
}
HARMLESSNESS_SCENARIOS: List[str] = [f"S{k}" for k in range(1, 12)] + ["multi"]
# best-of-N items in the official release (SOURCES.md section 2; RM-R1's copy of RMB)
OFFICIAL_BON_ITEMS = {"Helpfulness": 2109, "Harmlessness": 1677}


def expected_files() -> List[str]:
    """The official release's scenario files, relative to ``RMB_dataset`` without ``.json`` (98 paths)."""
    out = []
    for set_dir in SETS:
        out += [f"{set_dir}/Harmlessness/{s}" for s in HARMLESSNESS_SCENARIOS]
        out += [f"{set_dir}/Helpfulness/{task}/{s}" for task, ss in HELPFULNESS_SCENARIOS.items() for s in ss]
    return out


def _answer(record: dict, key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, dict) or not isinstance(value.get("answer"), str):
        raise DataError(f"{where}: {key!r} must be {{'llm_name': str, 'answer': str}}, got {str(value)[:200]}")
    return value["answer"]


def _file_comparisons(path: Path, rel: str) -> List[Comparison]:
    set_dir, goal = rel.split("/")[:2]
    set_name = SETS[set_dir]
    scenario = rel.split("/", 1)[1]  # e.g. "Helpfulness/Chat/Discussion"
    records = read_json_file(path)
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    out: List[Comparison] = []
    for k, rec in enumerate(records):
        where = f"{path}[{k}]"
        base_meta = {"set": set_name, "goal": goal, "scenario": scenario, "source": where}
        stratum = (f"{set_name}/{goal}", scenario)
        if set_name == "pairwise":
            require(rec, ("pair_uid", "conversation_input", "chosen", "reject"), where)
            context = messages_from_turns(rec["conversation_input"], where + ".conversation_input")
            cid = f"rmb:pair:{rec['pair_uid']}"
            out.append(Comparison("rmb", cid, cid, context, _answer(rec, "chosen", where),
                                  _answer(rec, "reject", where), stratum, dict(base_meta)))
        else:
            require(rec, ("bon_uid", "conversation_input", "bon_best", "loser_list"), where, {"loser_list": list})
            context = messages_from_turns(rec["conversation_input"], where + ".conversation_input")
            if not rec["loser_list"]:
                raise DataError(f"{where}: 'loser_list' is empty; a best-of-N item needs at least one loser")
            best = _answer(rec, "bon_best", where)
            item_id = f"rmb:bon:{rec['bon_uid']}"
            for j, loser in enumerate(rec["loser_list"]):
                if not isinstance(loser, dict) or not isinstance(loser.get("answer"), str):
                    raise DataError(f"{where}: loser_list[{j}] must be {{'llm_name': str, 'answer': str}}")
                meta = dict(base_meta, loser_index=j, num_losers=len(rec["loser_list"]))
                out.append(Comparison("rmb", f"{item_id}:l{j}", item_id, context, best, loser["answer"], stratum, meta))
    return out


def load_rmb(data_dir: Path) -> BenchmarkData:
    """Load RMB from ``<data_dir>/rmb/RMB_dataset`` (or ``<data_dir>/rmb`` holding the set folders).

    Returns:
        BenchmarkData; ``meta`` has ``set`` ("pairwise"|"bon"), ``goal``
        ("Helpfulness"|"Harmlessness"), ``scenario`` and, for BoN, ``loser_index``.
        ``missing`` lists the official scenario files that are absent.

    Raises:
        DataError: no data, or a malformed record (names the file, record index and key).
    """
    base = Path(data_dir) / "rmb"
    root = base / "RMB_dataset" if (base / "RMB_dataset").is_dir() else base
    files = sorted(p for set_dir in SETS for p in (root / set_dir).rglob("*.json")) if root.is_dir() else []
    if not files:
        raise DataError(f"{root}: no RMB data; expected the RMB_dataset tree "
                        f"(Pairwise_set/... and BoN_set/... JSON files) under {base}")
    comparisons: List[Comparison] = []
    present = set()
    notes: List[str] = []
    for path in files:
        rel = path.relative_to(root).with_suffix("").as_posix()
        parts = rel.split("/")
        if len(parts) < 3 or parts[1] not in GOALS:
            notes.append(f"RMB: skipped {path} (not under <set>/Helpfulness or <set>/Harmlessness)")
            continue
        present.add(rel)
        comparisons += _file_comparisons(path, rel)
    check_unique(comparisons)
    expected = expected_files()
    missing = [f for f in expected if f not in present]
    extra = sorted(present - set(expected))
    if extra:
        notes.append(f"RMB: {len(extra)} file(s) not in the official release were included: {extra}")
    for set_dir, set_name in SETS.items():
        for goal in GOALS:
            lacking = [f.split("/", 2)[2] for f in missing if f.startswith(f"{set_dir}/{goal}/")]
            if lacking:
                notes.append(f"RMB {set_name} {goal} is partial: missing scenario files {lacking}")
    bon_items = {g: len({c.item_id for c in comparisons if c.meta["set"] == "bon" and c.meta["goal"] == g})
                 for g in GOALS}
    short = {g: f"{bon_items[g]} of {OFFICIAL_BON_ITEMS[g]}" for g in GOALS if bon_items[g] < OFFICIAL_BON_ITEMS[g]}
    if short:
        notes.append(f"RMB is subsampled (best-of-N items: {short}); scores are not comparable to published numbers")
    return BenchmarkData("rmb", comparisons, missing=missing, notes=notes, root=str(root), subsampled=bool(short))
