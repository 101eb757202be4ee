"""RewardBench (allenai/reward-bench, ``filtered`` split) loader.

Reads every ``*.jsonl`` and ``*.parquet`` file in ``<data_dir>/rewardbench/`` (sorted by
name). Each row has ``prompt`` (one user turn), ``chosen``, ``rejected``, ``subset`` and
``id`` (plus generator names, ignored). One comparison per row; the context is the single
user turn. Rows are keyed by ``(subset, id)`` because the real split reuses id 3692 in two
subsets (``donotanswer`` and ``hep-python``).

Sections and subset weights: ``rewardbench/constants.py`` (``SUBSET_MAPPING``,
``EXAMPLE_COUNTS``) of allenai/reward-bench @ 05a9005; see ``evaluation/README.md``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

from megatron_brrm.data.schema import DataError

from .base import BenchmarkData, Comparison, check_unique, read_jsonl_file, require

# allenai/reward-bench rewardbench/constants.py: SUBSET_MAPPING (section -> subsets, in order)
SECTIONS: Dict[str, List[str]] = {
    "Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "Chat Hard": ["mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"],
    "Safety": ["refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond",
               "donotanswer"],
    "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}
# EXAMPLE_COUNTS: per-subset weights of the section score. Equal to the subset's row count in
# the filtered split, except math-prm (447 rows) which is weighted as the six hep-* subsets
# together (984), so Reasoning = 0.5 * math-prm + 0.5 * code.
EXAMPLE_COUNTS: Dict[str, int] = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28,
    "mt-bench-med": 40, "mt-bench-hard": 37, "llmbar-natural": 100, "llmbar-adver-neighbor": 134,
    "llmbar-adver-GPTInst": 92, "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46,
    "refusals-dangerous": 100, "refusals-offensive": 100, "xstest-should-refuse": 154,
    "xstest-should-respond": 250, "donotanswer": 136, "math-prm": 984, "hep-cpp": 164, "hep-go": 164,
    "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164,
}
SUBSET_TO_SECTION: Dict[str, str] = {s: sec for sec, subs in SECTIONS.items() for s in subs}
FILTERED_SPLIT_ROWS = 2985  # rows of the official filtered split
REQUIRED = ("prompt", "chosen", "rejected", "subset", "id")


def _read_parquet(path: Path) -> List[Tuple[int, dict]]:
    try:
        import pyarrow.parquet as pq  # lazy: heavy, only needed on this path
    except ImportError:  # pragma: no cover - pyarrow is a declared dependency
        raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow), or convert the file to JSONL") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise DataError(f"{path}: not a readable parquet file ({exc})") from None
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the RewardBench filtered split has columns "
                        f"{list(REQUIRED)} (+ chosen_model, rejected_model); present: {table.column_names}")
    return [(k, row) for k, row in enumerate(table.to_pylist())]


def load_rewardbench(data_dir: Path) -> BenchmarkData:
    """Load the RewardBench filtered split from ``<data_dir>/rewardbench/*.{jsonl,parquet}``.

    Returns:
        BenchmarkData whose comparisons carry ``meta = {"subset", "section", "source"}``;
        ``missing`` lists the official subsets with no rows, ``notes`` the sections they make partial.

    Raises:
        DataError: no data file, a malformed row (names ``file:line`` and the key), an
            unknown subset name, or a duplicate ``(subset, id)``.
    """
    root = Path(data_dir) / "rewardbench"
    files = sorted(p for p in root.glob("*") if p.suffix in (".jsonl", ".parquet")) if root.is_dir() else []
    if not files:
        raise DataError(f"{root}: no RewardBench data (*.jsonl or *.parquet of the 'filtered' split); "
                        f"pass --data-dir pointing at a folder with a rewardbench/ subfolder")
    comparisons: List[Comparison] = []
    for path in files:
        rows = _read_parquet(path) if path.suffix == ".parquet" else read_jsonl_file(path)
        for line, row in rows:
            where = f"{path}:{line}" if path.suffix == ".jsonl" else f"{path}[row {line}]"
            require(row, REQUIRED, where, {"prompt": str, "chosen": str, "rejected": str, "subset": str})
            subset = row["subset"]
            if subset not in SUBSET_TO_SECTION:
                raise DataError(f"{where}: unknown RewardBench subset {subset!r}; expected one of "
                                f"{sorted(SUBSET_TO_SECTION)} (is this the 'filtered' split?)")
            section = SUBSET_TO_SECTION[subset]
            cid = f"rewardbench:{subset}:{row['id']}"
            comparisons.append(Comparison(
                benchmark="rewardbench", comparison_id=cid, item_id=cid,
                context=[{"role": "user", "content": row["prompt"]}],
                chosen=row["chosen"], rejected=row["rejected"], stratum=(section, subset),
                meta={"subset": subset, "section": section, "source": where},
            ))
    check_unique(comparisons)
    present = {c.meta["subset"] for c in comparisons}
    missing = [s for s in EXAMPLE_COUNTS if s not in present]
    notes = []
    for section, subsets in SECTIONS.items():
        lacking = [s for s in subsets if s not in present]
        if len(lacking) == len(subsets):
            notes.append(f"RewardBench section {section!r} has no data (subsets {lacking}); it is left out of the overall")
        elif lacking:
            notes.append(f"RewardBench section {section!r} is partial: missing subsets {lacking}")
    if len(comparisons) < FILTERED_SPLIT_ROWS:
        notes.append(f"RewardBench: {len(comparisons)} of the {FILTERED_SPLIT_ROWS} rows of the filtered split are "
                     f"present; scores are not comparable to published full-benchmark numbers")
    return BenchmarkData("rewardbench", comparisons, missing=missing, notes=notes, root=str(root),
                         subsampled=len(comparisons) < FILTERED_SPLIT_ROWS)
