"""Training and named validation sets from the shared dataset configuration (``data.*``).

One form for every trainer (GRPO, SFT, Bradley-Terry), following NeMo-RL's and verl's:

* ``data.train_data_path`` -- the training set; ``data.val_data_paths`` -- named validation sets
  ``{name: path}`` or ``{name: {path, split, format, subset, prompt_key, chosen_key, rejected_key,
  adapter_options, max_pairs}}`` (per-set settings override the ``data.*`` defaults). Metrics of
  set ``name`` go under ``validation-<name>/`` (NeMo-RL's naming). The older
  ``data.train_path`` / ``data.val_path`` (PreferencePair JSONL) are read as
  ``format: pairs`` (validation set name ``val``).
* a path is a local data file (``.jsonl``, ``.json``, ``.parquet``, optionally ``.gz``), a local
  folder (its data files, sorted; with a split, those whose name starts with the split name,
  e.g. ``train-00000.parquet``, ``validation.jsonl``) or a hub dataset name (``org/name``, read
  with ``datasets.load_dataset(name, subset, split=split)``; the split is required there).
* ``data.format`` (or a set's ``format``) picks the record layout (:data:`FORMATS`); ``auto``
  looks at the first record's keys (:func:`detect_format`). NeMo-RL class names are accepted
  (``PreferenceDataset`` = ``nemo_rl``, ``BinaryPreferenceDataset`` = ``binary``).
* ``data.custom_cls.path`` + ``.name`` load a user class instead (:mod:`.custom`), for every set
  whose format is ``auto`` or ``custom`` (a set with another ``format`` is read as data files);
  the class gets the set's path and split, and its records are checked when loaded.

Every set is read completely at start-up, so a bad record stops the run before training, with
``file:line: field: reason`` (or ``skip_invalid`` skips and counts it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from .adapters import ADAPTERS, AdapterRun, get_adapter
from .custom import load_custom_dataset
from .io import RawRecord, iter_records
from .mix import DATA_SUFFIXES
from .schema import DataError, PreferencePair
from .summary import SourceSummary

ALIASES = {"PreferenceDataset": "nemo_rl", "BinaryPreferenceDataset": "binary", "preference_pairs": "pairs"}
FORMATS = ("auto", "pairs", "binary", "custom", *ADAPTERS)
SET_KEYS = ("path", "split", "format", "subset", "prompt_key", "chosen_key", "rejected_key", "adapter_options",
            "max_pairs")
PAIR_FIELDS = {"id", "context", "response1", "response2", "preference"}


@dataclass
class DatasetSpec:
    """One dataset to load (built from ``data.*`` by :func:`dataset_specs`).

    Attributes:
        name: ``train`` or the validation set's name.
        where: the config key it came from (for messages), e.g. ``data.val_data_paths.hs``.
        path: file, folder or hub name (None only for a custom class that reads nothing).
        format, split, subset, prompt_key, chosen_key, rejected_key, adapter_options: see the
            module docstring.
        custom_cls: ``(path, name, kwargs)`` or None.
        max_pairs: keep the first N pairs (None: all).
        skip_invalid: skip and count malformed rows.
    """

    name: str
    where: str
    path: Optional[str]
    format: str = "auto"
    split: Optional[str] = None
    subset: Optional[str] = None
    prompt_key: str = "prompt"
    chosen_key: str = "chosen"
    rejected_key: str = "rejected"
    adapter_options: Dict[str, Any] = field(default_factory=dict)
    custom_cls: Optional[Tuple[str, str, Dict[str, Any]]] = None
    max_pairs: Optional[int] = None
    skip_invalid: bool = False


@dataclass
class PreferenceData:
    """The loaded sets: ``train`` pairs (None when no training set is configured) and
    ``validation`` ``{name: pairs}`` in config order; ``summaries`` per set name."""

    train: Optional[List[PreferencePair]]
    validation: Dict[str, List[PreferencePair]]
    summaries: Dict[str, SourceSummary] = field(default_factory=dict)


def normalize_format(name: str, where: str) -> str:
    """The canonical format name; raise :class:`DataError` naming ``where`` for an unknown one."""
    fmt = ALIASES.get(name, name)
    if fmt not in FORMATS:
        raise DataError(f"{where}: unknown format {name!r}; use one of {', '.join(FORMATS)} "
                        f"(or {', '.join(ALIASES)})")
    return fmt


def dataset_specs(data) -> Tuple[Optional[DatasetSpec], Dict[str, DatasetSpec]]:
    """The train and validation :class:`DatasetSpec` of a :class:`~megatron_brrm.config.DataConfig`.

    Raises:
        DataError: both ``train_path`` and ``train_data_path`` set, a validation entry that is
            neither a path nor a mapping, an unknown key in one, or an unknown format.
    """
    custom = None
    cc = data.custom_cls
    if cc.path or cc.name:
        custom = (cc.path, cc.name, dict(cc.kwargs or {}))
    fmt = normalize_format(data.format, "data.format")

    def base(name, where, path, split, max_pairs, default_format=fmt) -> DatasetSpec:
        return DatasetSpec(name=name, where=where, path=path, format=default_format, split=split, subset=data.subset,
                           prompt_key=data.prompt_key, chosen_key=data.chosen_key, rejected_key=data.rejected_key,
                           adapter_options=dict(data.adapter_options or {}), custom_cls=custom, max_pairs=max_pairs,
                           skip_invalid=data.skip_invalid)

    if data.train_data_path and data.train_path:
        raise DataError("data.train_data_path and data.train_path are both set; keep one (train_path is the "
                        "PreferencePair JSONL of tools/preprocess_data.py)")
    train = None
    if data.train_data_path or (custom and not data.train_path):
        train = base("train", "data.train_data_path", data.train_data_path, data.train_split, data.max_train_pairs)
    elif data.train_path:
        train = base("train", "data.train_path", data.train_path, None, data.max_train_pairs, "pairs")
    vals: Dict[str, DatasetSpec] = {}
    for name, entry in dict(data.val_data_paths or {}).items():
        where = f"data.val_data_paths.{name}"
        if isinstance(entry, (str, Path)):
            vals[name] = base(name, where, str(entry), data.val_split, data.max_val_pairs)
            continue
        if not isinstance(entry, Mapping):
            raise DataError(f"{where}: expected a path or a mapping with 'path' (and optional {SET_KEYS[1:]}), "
                            f"got {type(entry).__name__}")
        unknown = sorted(set(entry) - set(SET_KEYS))
        if unknown:
            raise DataError(f"{where}: unknown key(s) {unknown}; allowed: {list(SET_KEYS)}")
        spec = base(name, where, entry.get("path"), entry.get("split", data.val_split),
                    entry.get("max_pairs", data.max_val_pairs))
        for key in ("subset", "prompt_key", "chosen_key", "rejected_key"):
            if entry.get(key) is not None:
                setattr(spec, key, entry[key])
        if entry.get("adapter_options"):
            spec.adapter_options = {**spec.adapter_options, **dict(entry["adapter_options"])}
        if entry.get("format"):
            spec.format = normalize_format(entry["format"], f"{where}.format")
        vals[name] = spec
    if not vals and data.val_path:
        vals["val"] = base("val", "data.val_path", data.val_path, None, data.max_val_pairs, "pairs")
    return train, vals


def _local_files(spec: DatasetSpec) -> List[Path]:
    path = Path(spec.path)
    if path.is_file():
        return [path]
    files = [p for p in sorted(path.rglob("*")) if p.is_file() and p.name.endswith(DATA_SUFFIXES)]
    if spec.split:
        files = [p for p in files if p.name.startswith(spec.split)]
    if not files:
        extra = f" whose name starts with split {spec.split!r}" if spec.split else ""
        raise DataError(f"{spec.where}={spec.path}: no .jsonl/.json/.parquet file{extra} in this folder")
    return files


def _hub_rows(spec: DatasetSpec) -> Iterator[RawRecord]:
    if not spec.split:
        raise DataError(f"{spec.where}={spec.path}: not a local file or folder; for a hub dataset also set the split "
                        f"(data.train_split / data.val_split or the set's 'split')")
    try:
        import datasets  # lazy: heavy, only needed on this path

        ds = datasets.load_dataset(spec.path, spec.subset, split=spec.split)
    except Exception as exc:  # offline, unknown name, unknown split: one line with the fix
        raise DataError(f"{spec.where}={spec.path}: not a local file or folder, and loading it as a hub dataset "
                        f"(split {spec.split!r}) failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    for i, row in enumerate(ds, 1):
        yield RawRecord(f"{spec.path}[{spec.split}]:row {i}", i, dict(row))


class _RowsRun(AdapterRun):
    """An adapter pass over rows that do not come from one local file (hub datasets)."""

    def __init__(self, source: str, label: str, rows, **kwargs):
        super().__init__(source, label, **kwargs)
        self._rows = rows

    def records(self) -> Iterator[RawRecord]:
        for rec in self._rows:
            self.summary.rows_read += 1
            if not isinstance(rec.value, dict):
                self.invalid(rec.where, f"expected a JSON object, got {type(rec.value).__name__}")
            else:
                yield rec


def _sources(spec: DatasetSpec) -> List[Tuple[str, Any]]:
    """``[(label, rows or None)]``: a local file has no rows (adapters read it), a hub set has."""
    if Path(spec.path).exists():
        return [(str(p), None) for p in _local_files(spec)]
    return [(spec.path, list(_hub_rows(spec)))]


def detect_format(first: Mapping[str, Any], spec: DatasetSpec, where: str) -> str:
    """The record layout of a first record ``first`` (keys only).

    Raises:
        DataError: no known layout fits (the keys found and the fix are named).
    """
    keys = set(first)
    if PAIR_FIELDS <= keys:
        return "pairs"
    if {"context", "completions"} <= keys:
        return "nemo_rl"
    if {"context", "response1", "response2", "overall_preference"} <= keys:
        return "helpsteer3"
    if {"input", "output"} <= keys:
        return "helpsteer3_nested"
    if {spec.chosen_key, spec.rejected_key} <= keys:
        return "binary" if spec.prompt_key in keys else "verl"
    raise DataError(f"{where}: cannot tell the data format from the first record's keys {sorted(keys)[:12]}; set "
                    f"data.format (one of {', '.join(FORMATS[1:])}) or the key names (data.prompt_key / chosen_key / "
                    "rejected_key)")


def _first_record(label: str, rows) -> Optional[RawRecord]:
    return next(iter(rows if rows is not None else iter_records(label)), None)


def _pairs_rows(run: AdapterRun) -> Iterator[PreferencePair]:
    for rec in run.records():
        with run.guard(rec.where):
            pair = PreferencePair.from_dict(rec.value, where=rec.where)
            run.summary.pairs += 1
            yield pair


def _adapter_pairs(spec: DatasetSpec, fmt: str, run: AdapterRun) -> Iterator[PreferencePair]:
    if fmt == "pairs":
        return _pairs_rows(run)
    options = dict(spec.adapter_options)
    if fmt == "binary":
        options = {"prompt_column": spec.prompt_key, "chosen_column": spec.chosen_key,
                   "rejected_column": spec.rejected_key, **options}
        fmt = "generic"
    elif fmt == "verl":
        options = {"prompt_key": spec.prompt_key, "chosen_key": spec.chosen_key, "rejected_key": spec.rejected_key,
                   **options}
    adapter = get_adapter(fmt)
    unknown = sorted(set(options) - set(adapter.options()))
    if unknown:
        raise DataError(f"{spec.where}: format {fmt!r} has no option(s) {unknown}; its options: {adapter.options()}")
    return adapter.fn(run, **options)


def load_pairs(spec: DatasetSpec, seed: int = 42, summary: Optional[SourceSummary] = None) -> List[PreferencePair]:
    """All pairs of one dataset (see the module docstring), at most ``spec.max_pairs``.

    Raises:
        DataError: missing path, unreadable data, an unknown format, a malformed record (names
            ``file:line`` and the field), a custom class breaking its contract, or no pair at all.
    """
    summary = summary if summary is not None else SourceSummary(spec.name)
    fmt = spec.format
    if fmt == "custom" or (fmt == "auto" and spec.custom_cls):
        if not spec.custom_cls:
            raise DataError(f"{spec.where}: format 'custom' needs data.custom_cls.path and data.custom_cls.name")
        path, name, kwargs = spec.custom_cls
        pairs: List[PreferencePair] = []
        for pair in load_custom_dataset(path, name, spec.path, spec.split, kwargs, seed=seed):
            pairs.append(pair)
            if spec.max_pairs is not None and len(pairs) >= spec.max_pairs:
                break
        summary.pairs = len(pairs)
    else:
        if not spec.path:
            raise DataError(f"{spec.where} is not set: give a data file, folder or hub dataset name")
        pairs = []
        for label, rows in _sources(spec):
            this = fmt
            if this == "auto":
                first = _first_record(label, rows)
                if first is None:
                    continue
                if first.error is not None or not isinstance(first.value, dict):
                    raise DataError(f"{first.where}: {first.error or 'expected a JSON object'}")
                this = detect_format(first.value, spec, first.where)
            if rows is None:
                run = AdapterRun(this, label, seed=seed, skip_invalid=spec.skip_invalid, summary=summary)
            else:
                run = _RowsRun(this, label, rows, seed=seed, skip_invalid=spec.skip_invalid, summary=summary)
            for pair in _adapter_pairs(spec, this, run):
                pairs.append(pair)
                if spec.max_pairs is not None and len(pairs) >= spec.max_pairs:
                    break
            if spec.max_pairs is not None and len(pairs) >= spec.max_pairs:
                break
    if not pairs:
        raise DataError(f"{spec.where}={spec.path}: no preference pair could be read"
                        + (f" ({summary.skipped_invalid} malformed rows skipped)" if summary.skipped_invalid else ""))
    return pairs


def load_preference_data(data, need_train: bool = True) -> PreferenceData:
    """Load the training set and every named validation set of ``data`` (a ``DataConfig``).

    The shared entry point for every trainer (GRPO and SFT can call it in place of
    ``read_pairs(data.train_path)``).

    Raises:
        DataError: see :func:`dataset_specs` and :func:`load_pairs`; no training set configured
            while ``need_train``.
    """
    train_spec, val_specs = dataset_specs(data)
    if train_spec is None and need_train:
        raise DataError("no training data: set data.train_data_path (a file, folder or hub dataset name), "
                        "data.custom_cls, or data.train_path")
    summaries: Dict[str, SourceSummary] = {}
    train = None
    if train_spec is not None:
        summaries["train"] = SourceSummary("train")
        train = load_pairs(train_spec, seed=data.seed, summary=summaries["train"])
    validation = {}
    for name, spec in val_specs.items():
        summaries[name] = SourceSummary(name)
        validation[name] = load_pairs(spec, seed=data.seed, summary=summaries[name])
    return PreferenceData(train, validation, summaries)
