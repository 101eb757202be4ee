"""Bad input to every command-line tool ends in one line naming the file and the problem, never a traceback.

Four kinds of bad input, each given to the tools that take it: a truncated safetensors shard, a
``config.json`` of an architecture the project cannot train (GPT-2), an empty folder, and a JSONL
file with a broken line. Each tool runs as a subprocess, as a user runs it; it must exit non-zero
with the named path in its error line and print no Python traceback.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
           TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")


@pytest.fixture(scope="module")
def bad(tiny_qwen3_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    trunc = root / "truncated"
    shutil.copytree(tiny_qwen3_dir, trunc)
    shard = trunc / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    other = root / "gpt2"
    shutil.copytree(tiny_qwen3_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (other / "config.json").write_text(json.dumps(cfg))
    empty = root / "empty"
    empty.mkdir()
    good = {"id": "p0", "context": [{"role": "user", "content": "Is 2 even?"}], "response1": "Yes.",
            "response2": "No.", "preference": 1, "domain": "general", "source": "test"}
    pairs = root / "pairs.jsonl"
    pairs.write_text(json.dumps(good) + "\n" + '{"id": "p1", "context": [\n')
    generic = root / "generic.jsonl"
    generic.write_text(json.dumps({"prompt": "Is 2 even?", "chosen": "Yes.", "rejected": "No."}) + "\n{broken\n")
    traces = root / "traces.jsonl"
    traces.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                               {"role": "assistant", "content": "yo"}]}) + "\n" + '{"messages": [\n')
    good_pairs = root / "good_pairs.jsonl"
    good_pairs.write_text(json.dumps(good) + "\n")
    return {"trunc": trunc, "other": other, "empty": empty, "pairs": pairs, "generic": generic, "traces": traces,
            "good_pairs": good_pairs, "out": root / "out", "model": Path(tiny_qwen3_dir)}


CASES = [
    # (id, argv (with {placeholders}), the path the error must name, what it must say)
    ("convert-truncated", ["tools/convert_hf_to_megatron.py", "--hf-path", "{trunc}", "--megatron-path", "{out}/m1"],
     "{trunc}/model.safetensors", "truncated"),
    ("convert-gpt2", ["tools/convert_hf_to_megatron.py", "--hf-path", "{other}", "--megatron-path", "{out}/m2"],
     "gpt2", "unsupported architecture"),
    ("convert-empty", ["tools/convert_hf_to_megatron.py", "--hf-path", "{empty}", "--megatron-path", "{out}/m3"],
     "{empty}/config.json", "not found"),
    ("export-empty", ["tools/convert_megatron_to_hf.py", "--megatron-path", "{empty}", "--hf-path", "{out}/h1"],
     "{empty}", "not a Megatron"),
    ("preprocess-broken-line", ["tools/preprocess_data.py", "--source", "generic:{generic}", "--output-dir", "{out}/d"],
     "{generic}:2", "JSON"),
    ("evaluate-truncated", ["evaluation/run.py", "--model", "{trunc}", "--bench", "rmb", "--limit", "1", "--output",
                            "{out}/e/r.json"], "{trunc}/model.safetensors", "truncated"),
    ("evaluate-empty", ["evaluation/run.py", "--model", "{empty}", "--bench", "rmb", "--output", "{out}/e/r.json"],
     "{empty}", "no config.json"),
    ("replay-broken-line", ["evaluation/run.py", "--engine", "replay", "--replay", "{pairs}", "--output",
                            "{out}/e/r.json"], "{pairs}:2", "invalid JSON"),
    ("train-truncated", ["-m", "megatron_brrm.train", "--config", "model_configs/tiny_cpu.yaml", "model.hf_path={trunc}",
                         "data.train_path={good_pairs}"], "{trunc}/model.safetensors", "truncated"),
    ("train-gpt2", ["-m", "megatron_brrm.train", "--config", "model_configs/tiny_cpu.yaml", "model.hf_path={other}",
                    "data.train_path={good_pairs}"], "gpt2", "unsupported architecture"),
    ("train-broken-line", ["-m", "megatron_brrm.train", "--config", "model_configs/tiny_cpu.yaml",
                           "model.hf_path={model}", "data.train_path={pairs}"], "{pairs}:2", "invalid JSON"),
    ("policy-env-not-a-reward-model", ["-m", "megatron_brrm.train_policy", "--config",
                                       "model_configs/policy_tiny_bt_cpu.yaml", "model.hf_path={model}",
                                       "env.model_path={model}", "logging.output_dir={out}/p1"], "env.model_path={model}",
     "not a Bradley-Terry reward model"),
    ("policy-broken-line", ["-m", "megatron_brrm.train_policy", "--config", "model_configs/policy_tiny_bt_cpu.yaml",
                            "model.hf_path={model}", "data.train_data_path={pairs}", "logging.output_dir={out}/p2"],
     "{pairs}:2", "invalid JSON"),
    ("sft-broken-line", ["-m", "megatron_brrm.sft", "--config", "model_configs/tiny_cpu.yaml", "model.hf_path={model}",
                         "sft.traces_path={traces}"], "{traces}:2", "invalid JSON"),
    ("distill-broken-line", ["tools/distill_traces.py", "--pairs", "{pairs}", "--output", "{out}/t.jsonl",
                             "--teacher-model", "{model}"], "{pairs}:2", "invalid JSON"),
    ("plan-gpt2", ["-m", "megatron_brrm.plan", "--config", "model_configs/tiny_cpu.yaml", "model.hf_path={other}"],
     "gpt2", "unsupported architecture"),
]


@pytest.mark.parametrize("argv, names, says", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_one_line_error_naming_the_file(bad, argv, names, says):
    args = [a.format(**bad) for a in argv]
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode not in (0, None), err[-2000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, err[-3000:]
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, err[-3000:]
    assert names.format(**bad) in lines[0] and says in lines[0], lines[0]
