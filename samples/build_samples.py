"""Rebuild the small data samples shipped in this folder from a full local copy of the source data sets.

Each sample keeps the source file's format and keys, and takes the first records of the
source file in source order (see SOURCES.md here for sources and licenses). Run:

    python samples/build_samples.py --source-dir /path/to/full/data
"""
import argparse
import gzip
import json
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent

JSONL_HEADS = {  # relative path -> rows kept
    "chatbot_arena/lmsys-arena-human-preference-55k_sample.jsonl": 120,
    "code_preference_pairs/code_preference_eval.jsonl": 100,
    "helpsteer/nvidia_HelpSteer_sample.jsonl": 120,
    "hh_rlhf/helpful-base/train_sample.jsonl": 120,
    "pku_saferlhf/PKU-SafeRLHF_sample.jsonl": 120,
    "prm800k/phase1_train_plus.stepwise-critic.subset.jsonl": 300,
    "ultrafeedback_binarized/train_clean.jsonl": 150,
    "ultrafeedback_binarized/eval_clean.jsonl": 40,
}


def head_jsonl(src: Path, dst: Path, n: int, gz: bool = False) -> None:
    opener = gzip.open if gz else open
    with opener(src, "rt", encoding="utf-8") as f:
        lines = [line for _, line in zip(range(n), f)]
    dst.parent.mkdir(parents=True, exist_ok=True)
    with opener(dst, "wt", encoding="utf-8") as f:
        f.writelines(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source-dir", required=True, type=Path,
                    help="folder holding full copies of the data sets, one sub-folder each, as in this folder")
    args = ap.parse_args()
    src = args.source_dir
    for rel, n in JSONL_HEADS.items():
        head_jsonl(src / rel, HERE / rel, n)
    head_jsonl(src / "hh_rlhf/harmless-base/test.jsonl.gz", HERE / "hh_rlhf/harmless-base/test.jsonl.gz", 120, gz=True)
    # RewardBench: the first 8 rows of every subset across both files, in file order.
    per_subset = defaultdict(list)
    for name in ("filtered_sample.jsonl", "filtered_part2.jsonl"):
        for line in (src / "rewardbench" / name).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if len(per_subset[row["subset"]]) < 8:
                per_subset[row["subset"]].append(line)
    out = HERE / "rewardbench/filtered_sample.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(l + "\n" for rows in per_subset.values() for l in rows), encoding="utf-8")
    # RM-Bench: the first 12 items of each domain file.
    for path in sorted((src / "rmbench").glob("*.json")):
        items = json.loads(path.read_text(encoding="utf-8"))[:12]
        dst = HERE / "rmbench" / path.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(json.dumps(items, indent=4, ensure_ascii=False), encoding="utf-8")
    # RMB: every scenario file, first 2 records of each.
    for path in sorted((src / "rmb").rglob("*.json")):
        items = json.loads(path.read_text(encoding="utf-8"))[:2]
        dst = HERE / "rmb" / path.relative_to(src / "rmb")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(json.dumps(items, indent=1, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
