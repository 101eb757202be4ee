"""The generation cache (fingerprints, torn lines) and compare.py's side-by-side table."""
from __future__ import annotations

import json

from megatron_brrm.evaluation.benchmarks.base import Comparison
from megatron_brrm.evaluation.cache import GenerationCache
from megatron_brrm.evaluation.orders import Presentation
from megatron_brrm.evaluation.records import Judgement


def _judgement(k: int) -> Judgement:
    cid = f"rmb:pair:{k}"
    comp = Comparison("rmb", cid, cid, [{"role": "user", "content": "q"}], "a", "b", ("pairwise/Helpfulness", "x"),
                      {"set": "pairwise", "goal": "Helpfulness", "scenario": "x"})
    return Judgement.build(Presentation(comp, bool(k % 2), True), ["one", "two"], 1, None)


def test_cache_resumes_skips_torn_lines_and_other_settings(tmp_path):
    path = tmp_path / "run.cache.jsonl"
    cache = GenerationCache(path, {"model": "m", "seed": 1})
    cache.append([_judgement(0), _judgement(1)])
    with open(path, "a") as fh:  # a run killed mid-write leaves half a line
        fh.write('{"fingerprint": "' + cache.fingerprint + '", "record": {"benchm')
    cache.append([_judgement(2)])
    GenerationCache(path, {"model": "m", "seed": 2}).append([_judgement(3)])
    loaded, stats = GenerationCache(path, {"model": "m", "seed": 1}).load()
    assert sorted(loaded) == sorted(_judgement(k).key for k in (0, 1, 2))
    assert stats == {"loaded": 3, "other_settings": 1, "unreadable": 1}
    assert loaded[_judgement(1).key] == _judgement(1)
    assert len(path.read_text().splitlines()) == 5  # the torn line did not swallow record 2


def _results(tmp_path, name, rb, partial):
    obj = {"config": {"name": name, "orders": "single"}, "summary": {"rewardbench": rb, "rmbench": None, "rmb": None,
                                                                   "avg": rb},
           "benchmarks": {"rewardbench": {"overall": rb, "coverage": {"partial": partial, "notes": []},
                                          "scores": {"sections": {"Chat": rb}, "sections_micro": {"Chat": rb},
                                                     "overall": rb, "overall_micro": rb,
                                                     "partial_sections": ["Chat Hard"]}}}}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(obj))
    return path


def test_compare_prints_files_and_published_rows(tmp_path, run_cli):
    a = _results(tmp_path, "step100", 61.0, False)
    b = _results(tmp_path, "step200", 70.0, True)
    proc = run_cli("compare.py", a, b, "--detail")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "| step100 | generative (brrm) | 61.0 | - | - | 61.0* |" in out  # avg partial: RM-Bench/RMB missing
    assert "| step200 | generative (brrm) | 70.0* |" in out
    assert "| BR-RM Qwen3-Nemotron-14B (published) | - | 92.1 | 85.9 | 74.7 | 84.2 | BR-RM card |" in out
    assert "RM-R1-DeepSeek-Distilled-Qwen-32B (published) | - | 90.9 | 83.9 | 69.8 | 81.5" in out
    assert "BR-RM-14B (published) | 97.0 | 82.4 | 90.0 | 98.8 | 92.1" in out
    none = run_cli("compare.py", a, "--reference", "none").stdout
    assert "(published)" not in none and "| step100 | generative (brrm) | 61.0 |" in none
    bad = run_cli("compare.py", tmp_path / "missing.json")
    assert bad.returncode == 2 and "cannot read" in bad.stderr
