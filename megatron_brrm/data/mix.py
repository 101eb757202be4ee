"""Building a train/val mix from several sources: decontaminate, de-duplicate, cap, split, shuffle.

The steps, in order (all deterministic given ``seed``; the result does not depend on the order
rows are read in, because every random choice is keyed by pair id or made after sorting by id):

1. load every source file with its adapter (:func:`~megatron_brrm.data.adapters.load_source`);
2. decontaminate: drop a pair when any user turn of its context (normalised) equals a prompt of
   an evaluation benchmark (RewardBench, RM-Bench, RMB);
3. de-duplicate by prompt: the normalised context is claimed by the first prompt group that
   emits it (validation sources first, then training sources in the given order); pairs of
   other groups with the same context are dropped. Pairs of one group (several responses to
   one prompt) are kept together;
4. cap: at most ``cap`` pairs per source, the kept ones chosen by a seeded hash of the id;
5. split: the validation sources if any, else a seeded ``val_fraction`` of the prompt groups;
6. train rows = both orders of every train pair, shuffled; val rows = one order, shuffled.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from .adapters import ADAPTERS, get_adapter, group_of, load_source
from .augment import both_orders
from .schema import DataError, PreferencePair
from .summary import MixSummary
from .text import context_key, user_turn_keys

DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
BRRM_ONLY = ("helpsteer3", "skywork80k", "math_step_dpo")
VAL_NAME_HINTS = ("validation", "val")


@dataclass
class SourceSpec:
    """One input file (or folder of files) of a named source.

    Attributes:
        name: adapter name.
        path: a data file, or a folder whose data files (recursively, sorted) are all read.
        cap: at most this many pairs from this source name (``None``: no cap).
        role: ``"train"`` or ``"val"``.
    """

    name: str
    path: Path
    cap: Optional[int] = None
    role: str = "train"

    def files(self) -> List[Path]:
        """The data files of ``path``.

        Raises:
            DataError: the path does not exist or a folder holds no data file.
        """
        if self.path.is_file():
            return [self.path]
        if not self.path.is_dir():
            raise DataError(f"{self.path}: no such file or folder (source {self.name!r})")
        files = [p for p in sorted(self.path.rglob("*")) if p.is_file() and p.name.endswith(DATA_SUFFIXES)]
        if not files:
            raise DataError(f"{self.path}: no .jsonl/.json/.parquet file in this folder (source {self.name!r})")
        return files


def parse_source_spec(text: str, role: str = "train") -> SourceSpec:
    """Parse ``"NAME:PATH[:CAP]"``.

    Raises:
        DataError: no ``:``, unknown source name, or a non-positive cap.
    """
    name, sep, rest = text.partition(":")
    if not sep or not rest:
        raise DataError(f"source spec {text!r} must look like NAME:PATH[:CAP], e.g. hh_rlhf:samples/hh_rlhf:100")
    get_adapter(name)
    cap = None
    head, sep2, tail = rest.rpartition(":")
    if sep2 and tail.isdigit():
        rest, cap = head, int(tail)
        if cap <= 0:
            raise DataError(f"source spec {text!r}: the cap must be a positive integer")
    return SourceSpec(name, Path(rest), cap, role)


def discover_sources(data_dir: Path, mix: str = "auto") -> List[SourceSpec]:
    """Source specs for the known folders of a directory laid out like ``samples/``.

    Each source lives in a folder named after its adapter (``hh_rlhf/``, ``helpsteer3/``, ...).
    ``mix="brrm"`` takes the BR-RM sources (helpsteer3, skywork80k, code_preference_pairs,
    math_step_dpo); ``"all"`` every known folder except the BR-RM-only ones when absent;
    ``"auto"`` is ``brrm`` when any of helpsteer3/skywork80k/math_step_dpo is present, else
    ``all``. HelpSteer3 files whose name contains ``validation``/``val`` become validation
    sources (the BR-RM recipe's validation split).

    Raises:
        DataError: the folder does not exist, ``mix`` is unknown, or no known source is found.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder does not exist")
    if mix not in ("auto", "brrm", "all"):
        raise DataError(f"unknown mix {mix!r}; use auto, brrm or all")
    present = [n for n in ADAPTERS if n != "generic" and (data_dir / n).is_dir()]
    if mix == "auto":
        mix = "brrm" if any(n in present for n in BRRM_ONLY) else "all"
    names = [n for n in present if ADAPTERS[n].brrm] if mix == "brrm" else present
    specs: List[SourceSpec] = []
    for name in names:
        for f in SourceSpec(name, data_dir / name).files() if _has_data(data_dir / name) else []:
            tag = f.name.lower()
            role = "val" if name == "helpsteer3" and any(h in tag for h in VAL_NAME_HINTS) else "train"
            specs.append(SourceSpec(name, f, None, role))
    if not specs:
        raise DataError(f"{data_dir}: found no data of the {mix} mix (looked for folders "
                        f"{', '.join(n + '/' for n in ADAPTERS if n != 'generic')})")
    return specs


def _has_data(folder: Path) -> bool:
    return any(p.is_file() and p.name.endswith(DATA_SUFFIXES) for p in folder.rglob("*"))


def _rank(seed: int, salt: str, pair_id: str) -> bytes:
    return hashlib.sha256(f"{seed}:{salt}:{pair_id}".encode("utf-8")).digest()


@dataclass
class MixResult:
    """Rows to write and what happened on the way."""

    train_rows: List[PreferencePair]
    val_rows: List[PreferencePair]
    summary: MixSummary = field(default_factory=MixSummary)


def build_mix(specs: Sequence[SourceSpec], *, seed: int = 42, val_fraction: float = 0.05,
              dedup: bool = True, benchmark_keys: Optional[Set[str]] = None, skip_invalid: bool = False,
              caps: Optional[Dict[str, int]] = None, options: Optional[Dict[str, Dict[str, Any]]] = None
              ) -> MixResult:
    """Load, decontaminate, de-duplicate, cap, split and order-augment (module docstring).

    Args:
        specs: train and val source specs (``role``); val specs, if any, replace ``val_fraction``.
        seed: seed of placement, caps, split and shuffles.
        val_fraction: share of prompt groups sent to validation when no val spec is given (0..1).
        dedup: de-duplicate by prompt (step 3).
        benchmark_keys: normalised benchmark prompts (step 2); ``None`` or empty: no decontamination.
        skip_invalid: skip and count malformed rows instead of raising.
        caps: source name -> cap, combined with the specs' own caps (the smaller wins).
        options: source name -> adapter options.

    Raises:
        DataError: a malformed row (without ``skip_invalid``), a bad option, a duplicate pair id
            (the same file given twice), or ``val_fraction`` outside [0, 1).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    summary = MixSummary(benchmark_prompts=len(benchmark_keys or ()))
    options = options or {}
    caps = dict(caps or {})
    for s in specs:
        if s.cap is not None:
            caps[s.name] = min(caps.get(s.name, s.cap), s.cap)
    ordered = [s for s in specs if s.role == "val"] + [s for s in specs if s.role != "val"]

    # 1. load
    loaded: List[Tuple[SourceSpec, str, List[PreferencePair]]] = []
    seen_ids: Dict[str, str] = {}
    for spec in ordered:
        label = spec.name if spec.role != "val" else f"{spec.name} (val)"
        src_summary = summary.source(label)
        for path in spec.files():
            pairs = list(load_source(spec.name, path, seed=seed, skip_invalid=skip_invalid,
                                     summary=src_summary, **options.get(spec.name, {})))
            for p in pairs:
                if p.id in seen_ids:
                    raise DataError(f"{path}: pair id {p.id!r} was already produced from {seen_ids[p.id]} "
                                    "(the same file given twice?)")
                seen_ids[p.id] = str(path)
            loaded.append((spec, label, pairs))

    # 2. decontaminate, 3. dedup
    claims: Dict[str, str] = {}
    kept: Dict[str, List[PreferencePair]] = {}
    roles: Dict[str, str] = {}
    for spec, label, pairs in loaded:
        roles[label] = spec.role
        out = kept.setdefault(label, [])
        for p in pairs:
            if benchmark_keys and any(k in benchmark_keys for k in user_turn_keys(p.context)):
                summary.sources[label].decontaminated += 1
                continue
            if dedup:
                key, group = context_key(p.context), group_of(p.id)
                owner = claims.setdefault(key, group)
                if owner != group:
                    summary.sources[label].deduplicated += 1
                    continue
            out.append(p)

    # 4. caps (per source name, over its kept pairs; val sources keep their own cap)
    for label, pairs in kept.items():
        cap = caps.get(label.split(" ")[0])
        if cap is not None and len(pairs) > cap:
            chosen = set(sorted((p.id for p in pairs), key=lambda i: _rank(seed, "cap", i))[:cap])
            summary.sources[label].capped += len(pairs) - cap
            kept[label] = [p for p in pairs if p.id in chosen]

    # 5. split
    train = [p for label, ps in kept.items() if roles[label] != "val" for p in ps]
    val = [p for label, ps in kept.items() if roles[label] == "val" for p in ps]
    if not any(s.role == "val" for s in specs) and val_fraction > 0:
        groups = sorted({group_of(p.id) for p in train})
        random.Random(seed).shuffle(groups)
        n_val = round(val_fraction * len(groups))
        if n_val == 0 and len(groups) > 1:
            n_val = 1
        val_groups = set(groups[:n_val])
        val = [p for p in train if group_of(p.id) in val_groups]
        train = [p for p in train if group_of(p.id) not in val_groups]
    label_of = {p.id: label for label, ps in kept.items() for p in ps}
    for p in train:
        summary.sources[label_of[p.id]].train += 1
        summary.train_domains[p.domain] += 1
    for p in val:
        summary.sources[label_of[p.id]].val += 1
        summary.val_domains[p.domain] += 1

    # 6. order augmentation and shuffles
    train_rows = both_orders(sorted(train, key=lambda p: p.id))
    random.Random(seed).shuffle(train_rows)
    val_rows = sorted(val, key=lambda p: p.id)
    random.Random(seed + 1).shuffle(val_rows)
    summary.train_pairs, summary.train_rows = len(train), len(train_rows)
    summary.val_pairs, summary.val_rows = len(val), len(val_rows)
    return MixResult(train_rows, val_rows, summary)
