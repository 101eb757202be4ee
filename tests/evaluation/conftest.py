"""Helpers for the evaluation tests: hand-written judge outputs and CLI runners."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]

# A well-formed BR-RM turn-1 and turn-2 output, written by hand from the format contract
# (docs/design.md §5), independent of the judge package's own formatter.
TURN1 = ("[Quality Assessment Focus]\nInformation Accuracy, Response Completeness\n"
         "[End of Quality Assessment Focus]\n"
         "[Quality Analysis for Response 1]\nAccurate and complete.\n[End of Quality Analysis for Response 1]\n"
         "[Quality Analysis for Response 2]\nContains a factual slip.\n[End of Quality Analysis for Response 2]")
TURN2 = ("[The Begin of Analysis on Response 1]\nCorrect throughout.\n[The End of Analysis on Response 1]\n"
         "[The Begin of Analysis on Response 2]\nOne wrong claim.\n[The End of Analysis on Response 2]\n"
         "[The Begin of Ranking Score]\n\\boxed{%s}\n[The End of Ranking Score]")


def turn2(verdict) -> str:
    """The hand-written turn-2 text with ``\\boxed{verdict}``."""
    return TURN2 % verdict


@pytest.fixture(scope="session")
def all_comparisons(samples_dir):
    """Every comparison of the three benchmarks on samples/, loaded once."""
    from megatron_brrm.evaluation.benchmarks import BENCHMARKS, load_benchmark

    return {name: load_benchmark(name, samples_dir) for name in BENCHMARKS}


@pytest.fixture
def write_replay(tmp_path, all_comparisons) -> Callable:
    """``write_replay(name, verdict_fn, seed=42)``: a replay file with one record per comparison
    in its seeded order; ``verdict_fn(comparison, label) -> boxed content`` (1, 2, "3", ...)."""
    from megatron_brrm.evaluation.orders import seeded_swap

    def make(name: str, verdict_fn, seed: int = 42) -> Path:
        records = []
        for data in all_comparisons.values():
            for c in data.comparisons:
                swapped = seeded_swap(seed, c.comparison_id)
                label = 2 if swapped else 1
                records.append({"comparison_id": c.comparison_id, "swapped": swapped,
                                "turn_texts": [TURN1, turn2(verdict_fn(c, label))]})
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"records": records}), encoding="utf-8")
        return path

    return make


@pytest.fixture
def run_cli() -> Callable:
    """``run_cli(script, *args)`` runs ``python evaluation/<script> args`` from the repo root;
    returns the CompletedProcess (stdout/stderr text)."""

    def run(script: str, *args: str, timeout: int = 600, env: Optional[dict] = None) -> subprocess.CompletedProcess:
        full_env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **(env or {}))
        cmd: List[str] = [sys.executable, str(REPO / "evaluation" / script), *map(str, args)]
        return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)

    return run
