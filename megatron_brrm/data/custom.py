"""User dataset classes named in the config (verl's ``data.custom_cls.path`` + ``custom_cls.name``).

The class is imported from a Python file at start-up and called as
``cls(data_path=<path or None>, split=<split or None>, **kwargs)``. The object must be
iterable (``__iter__``, or ``__len__`` + ``__getitem__``) and yield, per pair, either a
:class:`~megatron_brrm.data.schema.PreferencePair` or a dict

``{"context": str | [{"role", "content"}, ...] ending with a user turn, "chosen": str,
"rejected": str, "id": optional str|int, "domain": optional str}``.

Every record is checked when the dataset is loaded; the first bad one stops the run with a
:class:`~megatron_brrm.data.schema.DataError` naming the file, the class, the record index and
the missing or malformed field. Dict records get the usual seeded position for the chosen
response (:func:`~megatron_brrm.data.adapters.base.chosen_first`) and ids
``custom:<class>:<id or index>``.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from .adapters.base import AdapterRun
from .schema import DataError, PreferencePair

CONTRACT = ("a custom dataset must yield PreferencePair objects or dicts with 'context' (str, or chat messages "
            "ending with a user turn), 'chosen' and 'rejected' (str), and optional 'id' and 'domain'")
REQUIRED = ("context", "chosen", "rejected")


def import_class(path: str, name: str, where: str = "data.custom_cls") -> type:
    """The class ``name`` defined in the Python file ``path``.

    Raises:
        DataError: no such file, the file fails to import (its error in one line), or it has no
            class ``name`` (the classes it has are listed).
    """
    if not path or not name:
        raise DataError(f"{where}: set both path (a .py file) and name (the class in it)")
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{where}.path={path}: no such file")
    module_name = f"_brrm_custom_{file.stem}_{abs(hash(str(file.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise DataError(f"{where}.path={path}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's module failed: say where, in one line
        del sys.modules[module_name]
        raise DataError(f"{where}.path={path}: importing it failed: {type(exc).__name__}: {exc}") from None
    cls = getattr(module, name, None)
    if not isinstance(cls, type):
        found = sorted(k for k, v in vars(module).items() if isinstance(v, type) and v.__module__ == module_name)
        raise DataError(f"{where}.name={name}: {path} defines no class {name!r} (classes there: {found or 'none'})")
    return cls


def _records(obj: Any, label: str) -> Iterator[Any]:
    if hasattr(obj, "__iter__"):
        yield from obj
    elif hasattr(obj, "__len__") and hasattr(obj, "__getitem__"):
        for i in range(len(obj)):
            yield obj[i]
    else:
        raise DataError(f"{label}: the dataset object is neither iterable nor indexable (__len__ + __getitem__)")


def load_custom_dataset(path: str, name: str, data_path: Optional[str] = None, split: Optional[str] = None,
                        kwargs: Optional[Dict[str, Any]] = None, seed: int = 42,
                        where: str = "data.custom_cls") -> Iterator[PreferencePair]:
    """Instantiate the custom class and stream its records as validated pairs (module docstring).

    Raises:
        DataError: import problems (:func:`import_class`), a constructor that rejects the
            arguments, or a record that breaks the contract (names the record and the field).
    """
    cls = import_class(path, name, where)
    label = f"{path}:{name}"
    try:
        obj = cls(data_path=data_path, split=split, **dict(kwargs or {}))
    except Exception as exc:
        raise DataError(f"{label}: {name}(data_path=..., split=..., **{where}.kwargs) failed: "
                        f"{type(exc).__name__}: {exc}") from None
    run = AdapterRun(f"custom:{name}", path, seed=seed)
    for k, rec in enumerate(_records(obj, label)):
        at = f"{label} record {k}"
        if isinstance(rec, PreferencePair):
            yield rec.validate(at)
            continue
        if not isinstance(rec, dict):
            raise DataError(f"{at}: got {type(rec).__name__}; {CONTRACT}")
        missing = [f for f in REQUIRED if f not in rec]
        if missing:
            raise DataError(f"{at}: missing field '{missing[0]}'; {CONTRACT}")
        context = rec["context"]
        if isinstance(context, str):
            context = [{"role": "user", "content": context}]
        for field in ("chosen", "rejected"):
            if not isinstance(rec[field], str) or not rec[field].strip():
                raise DataError(f"{at}: field '{field}' must be a non-empty string; {CONTRACT}")
        key = str(rec.get("id", k))
        pair = run.make_pair(key, context, rec["chosen"], rec["rejected"], domain=str(rec.get("domain", "general")),
                             where=at)
        if pair is not None:
            yield pair
