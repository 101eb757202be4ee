"""tools/gpu_check.py: its help says how to run it on an offline GPU box; without CUDA every GPU row
is n/a and it exits 0; the rows' code runs through its CPU forms (--device cpu)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOL = REPO_ROOT / "tools" / "gpu_check.py"


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO_ROOT, env={"PYTHONWARNINGS": "ignore", "PATH": "/usr/bin:/bin",
                                              "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})


def test_help_explains_the_offline_install():
    proc = _run("--help")
    assert proc.returncode == 0
    for needle in ("pip wheel --wheel-dir wheels", "--no-index --find-links wheels", "vllm_fp8", "fp8_<recipe>"):
        assert needle in proc.stdout, needle


def test_table_and_exit_code(tmp_path):
    out = tmp_path / "results.json"
    if torch.cuda.is_available():  # a GPU machine: the device row must pass
        proc = _run("--rows", "cuda", "--json", str(out))
        assert proc.returncode == 0 and json.loads(out.read_text())["cuda"]["status"] == "pass", proc.stdout
        return
    proc = _run("--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    assert len(results) == 13 and {r["status"] for r in results.values()} == {"n/a"}
    assert {r["detail"] for r in results.values()} == {"no CUDA device"}
    assert "13 of 13 rows pass or are n/a; 0 failed" in proc.stdout
    bad = _run("--rows", "cuda,warp_drive")
    assert bad.returncode == 2 and "unknown row(s) ['warp_drive']" in bad.stderr


def test_rows_run_through_their_cpu_forms(tmp_path):
    out = tmp_path / "results.json"
    proc = _run("--device", "cpu", "--rows", "megatron_local,refit,vllm", "--json", str(out))
    results = json.loads(out.read_text())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert results["megatron_local"]["status"] == "pass" and "3 Adam steps" in results["megatron_local"]["detail"]
    assert results["refit"]["status"] == "pass" and "bit-equal" in results["refit"]["detail"]
    assert results["vllm"]["status"] == "n/a"
