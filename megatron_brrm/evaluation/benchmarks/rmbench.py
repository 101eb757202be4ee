"""RM-Bench (THU-KEG/RM-Bench) loader.

Reads ``<data_dir>/rmbench/total_dataset.json`` (items carry a ``domain`` field) when it
exists, else the per-domain files ``<data_dir>/rmbench/<domain>_filtered.json`` for the
domains chat, code, math, safety-refuse and safety-response. Each item has ``id``,
``prompt``, ``chosen`` and ``rejected`` (3 responses each, styles 0 = concise,
1 = detailed plain text, 2 = detailed markdown); it becomes 9 comparisons
``chosen[i]`` vs ``rejected[j]`` (RM-Bench README "how to compute the accuracy").
Item ids are unique only within a domain, so items are keyed by ``(domain, id)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

from megatron_brrm.data.schema import DataError

from .base import BenchmarkData, Comparison, check_unique, read_json_file, require

DOMAIN_FILES = ("chat", "code", "math", "safety-refuse", "safety-response")
# scoring domain: safety-refuse and safety-response are pooled (RM-Bench scripts/utils.py)
SCORING_DOMAINS = ("chat", "math", "code", "safety")
STYLES = ("concise", "detailed", "detailed-markdown")
# items per domain file in the official release (THU-KEG/RM-Bench data/*_filtered.json;
# SOURCES.md section 1); math is not listed because its count was not verified here.
OFFICIAL_ITEMS = {"chat": 129, "code": 228, "safety-refuse": 284, "safety-response": 157}


def scoring_domain(domain: str) -> str:
    """Map a file/item domain to its scoring domain (``safety-*`` -> ``safety``); raise DataError if unknown."""
    for d in SCORING_DOMAINS:
        if domain == d or domain.startswith(d + "-"):
            return d
    raise DataError(f"unknown RM-Bench domain {domain!r}; expected one of {list(DOMAIN_FILES)}")


def _item_comparisons(item: dict, domain: str, where: str) -> List[Comparison]:
    require(item, ("id", "prompt", "chosen", "rejected"), where, {"prompt": str, "chosen": list, "rejected": list})
    for key in ("chosen", "rejected"):
        if len(item[key]) != 3 or not all(isinstance(x, str) for x in item[key]):
            raise DataError(f"{where}: {key!r} must be a list of 3 strings (styles concise, detailed, markdown), "
                            f"got {len(item[key])} entries")
    sdom = scoring_domain(domain)
    item_id = f"rmbench:{domain}:{item['id']}"
    out = []
    for i in range(3):
        for j in range(3):
            out.append(Comparison(
                benchmark="rmbench", comparison_id=f"{item_id}:c{i}r{j}", item_id=item_id,
                context=[{"role": "user", "content": item["prompt"]}],
                chosen=item["chosen"][i], rejected=item["rejected"][j], stratum=(sdom, domain),
                meta={"domain": sdom, "domain_file": domain, "subset": item.get("subset", ""),
                      "chosen_style": i, "rejected_style": j, "source": where},
            ))
    return out


def load_rmbench(data_dir: Path) -> BenchmarkData:
    """Load RM-Bench from ``<data_dir>/rmbench/`` (combined file or per-domain files).

    Returns:
        BenchmarkData with 9 comparisons per item; ``meta`` has ``domain`` (scoring domain),
        ``domain_file``, ``chosen_style`` i and ``rejected_style`` j. ``missing`` lists
        absent domains (e.g. ``"math"``).

    Raises:
        DataError: no data, a malformed item (names the file, index and key), an unknown
            domain, or duplicate ``(domain, id)``.
    """
    root = Path(data_dir) / "rmbench"
    total = root / "total_dataset.json"
    comparisons: List[Comparison] = []
    notes: List[str] = []
    if total.is_file():
        items = read_json_file(total)
        if not isinstance(items, list):
            raise DataError(f"{total}: expected a JSON list of items, got {type(items).__name__}")
        for k, item in enumerate(items):
            where = f"{total}[{k}]"
            require(item, ("domain",), where, {"domain": str})
            try:
                scoring_domain(item["domain"])
            except DataError as exc:
                raise DataError(f"{where}: {exc}") from None
            comparisons += _item_comparisons(item, item["domain"], where)
        if any(root.glob("*_filtered.json")):
            notes.append(f"RM-Bench: read {total.name}; the per-domain *_filtered.json files next to it were ignored")
    else:
        for domain in DOMAIN_FILES:
            path = root / f"{domain}_filtered.json"
            if not path.is_file():
                continue
            items = read_json_file(path)
            if not isinstance(items, list):
                raise DataError(f"{path}: expected a JSON list of items, got {type(items).__name__}")
            for k, item in enumerate(items):
                comparisons += _item_comparisons(item, domain, f"{path}[{k}]")
    if not comparisons:
        raise DataError(f"{root}: no RM-Bench data; expected total_dataset.json or "
                        f"{', '.join(d + '_filtered.json' for d in DOMAIN_FILES)}")
    check_unique(comparisons)
    present_files = {c.meta["domain_file"] for c in comparisons}
    missing = [d for d in DOMAIN_FILES if d not in present_files]
    present_domains = {c.meta["domain"] for c in comparisons}
    for d in SCORING_DOMAINS:
        if d not in present_domains:
            notes.append(f"RM-Bench domain {d!r} is absent: the overall is the mean of "
                         f"{sorted(present_domains)} only and is not comparable to the published 4-domain score")
    for d in ("safety-refuse", "safety-response"):
        if d in missing and "safety" in present_domains:
            notes.append(f"RM-Bench safety domain is partial: {d} items are absent")
    counts = {d: len({c.item_id for c in comparisons if c.meta["domain_file"] == d}) for d in DOMAIN_FILES
              if d in present_files}
    short = {d: f"{counts[d]} of {OFFICIAL_ITEMS[d]}" for d in counts if d in OFFICIAL_ITEMS and counts[d] < OFFICIAL_ITEMS[d]}
    if short:
        notes.append(f"RM-Bench is subsampled (items per domain: {short}); scores are not comparable "
                     f"to published full-benchmark numbers")
    return BenchmarkData("rmbench", comparisons, missing=missing, notes=notes, root=str(root), subsampled=bool(short))
