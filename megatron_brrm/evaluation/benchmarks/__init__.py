"""Benchmark loaders: each turns a benchmark's own files into :class:`Comparison` objects."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict

from .base import BenchmarkData, Comparison, select_items
from .rewardbench import load_rewardbench
from .rmb import load_rmb
from .rmbench import load_rmbench

LOADERS: Dict[str, Callable[[Path], BenchmarkData]] = {
    "rewardbench": load_rewardbench,
    "rmbench": load_rmbench,
    "rmb": load_rmb,
}
BENCHMARKS = tuple(LOADERS)


def load_benchmark(name: str, data_dir: Path) -> BenchmarkData:
    """Load benchmark ``name`` ("rewardbench" | "rmbench" | "rmb") from ``data_dir``.

    Raises:
        ValueError: unknown benchmark name.
        megatron_brrm.data.schema.DataError: missing or malformed data (see each loader).
    """
    if name not in LOADERS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {list(LOADERS)}")
    return LOADERS[name](Path(data_dir))


__all__ = ["BENCHMARKS", "BenchmarkData", "Comparison", "LOADERS", "load_benchmark", "select_items"]
