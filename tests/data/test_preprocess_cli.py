"""tools/preprocess_data.py end to end on samples/ (subprocesses, as a user runs it)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

from megatron_brrm.data import SWAP_SUFFIX, PreferencePair, read_pairs

FIELDS = {"id", "context", "response1", "response2", "preference", "domain", "source"}


def _run(repo_root, *args, timeout=120):
    return subprocess.run([sys.executable, str(repo_root / "tools" / "preprocess_data.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=repo_root)


def test_help_explains_every_flag(repo_root):
    res = _run(repo_root, "--help")
    assert res.returncode == 0
    for flag in ("--output-dir", "--data-dir", "--mix", "--source", "--val-source", "--val-fraction", "--cap",
                 "--option", "--decontaminate", "--no-decontaminate", "--no-dedup", "--skip-invalid", "--seed"):
        assert flag in res.stdout
    for name in ("helpsteer3", "skywork80k", "code_preference_pairs", "math_step_dpo", "hh_rlhf", "prm800k"):
        assert name in res.stdout


def test_run_on_samples_writes_both_files(repo_root, tmp_path):
    out = tmp_path / "out"
    res = _run(repo_root, "--output-dir", out, "--skip-invalid")
    assert res.returncode == 0, res.stderr
    train_lines = (out / "train_data.jsonl").read_text().splitlines()
    val_lines = (out / "val_data.jsonl").read_text().splitlines()
    for line in train_lines + val_lines:
        row = json.loads(line)
        assert set(row) == FIELDS
        PreferencePair.from_dict(row)
    train, val = read_pairs(out / "train_data.jsonl"), read_pairs(out / "val_data.jsonl")
    by_id = {p.id: p for p in train}
    assert len(train) == 2 * sum(not p.id.endswith(SWAP_SUFFIX) for p in train)
    for p in train:
        if not p.id.endswith(SWAP_SUFFIX):
            q = by_id[p.id + SWAP_SUFFIX]
            assert (q.response1, q.response2, q.preference) == (p.response2, p.response1, 3 - p.preference)
    assert val and not any(p.id.endswith(SWAP_SUFFIX) for p in val)
    assert not {p.id for p in val} & set(by_id)
    # every shipped training source contributes
    assert {p.source for p in train} == {"hh_rlhf", "ultrafeedback_binarized", "pku_saferlhf", "chatbot_arena",
                                         "prm800k", "helpsteer", "code_preference_pairs"}
    summary = json.loads((out / "preprocess_summary.json").read_text())
    assert summary["sources"]["hh_rlhf"]["skipped_invalid"] == 1
    assert summary["train_rows"] == len(train) and summary["val_rows"] == len(val)
    config = json.loads((out / "preprocess_config.json").read_text())
    assert config["seed"] == 42 and config["skip_invalid"] is True and len(config["sources_resolved"]) == 9
    for word in ("skipped invalid", "filtered by rule", "domain counts", "TOTAL", "dedup", "decontam"):
        assert word in res.stdout
    # same seed -> byte-identical files
    out2 = tmp_path / "out2"
    assert _run(repo_root, "--output-dir", out2, "--skip-invalid").returncode == 0
    assert (out2 / "train_data.jsonl").read_bytes() == (out / "train_data.jsonl").read_bytes()


def test_samples_without_skip_invalid_name_the_bad_row(repo_root, tmp_path):
    res = _run(repo_root, "--output-dir", tmp_path / "o")
    assert res.returncode == 1
    assert "hh_rlhf/harmless-base/test.jsonl.gz:87: field 'chosen'" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_field_exits_nonzero_naming_file_and_line(repo_root, samples_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(samples_dir / "pku_saferlhf", data / "pku_saferlhf")
    path = data / "pku_saferlhf" / "PKU-SafeRLHF_sample.jsonl"
    lines = path.read_text().splitlines()
    row = json.loads(lines[4])
    del row["response_1"]
    lines[4] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    res = _run(repo_root, "--output-dir", tmp_path / "o", "--data-dir", data)
    assert res.returncode == 1
    assert res.stderr.startswith(f"preprocess_data.py: error: {path}:5: missing field 'response_1'")
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "train_data.jsonl").exists()
    ok = _run(repo_root, "--output-dir", tmp_path / "o", "--data-dir", data, "--skip-invalid")
    assert ok.returncode == 0
    s = json.loads((tmp_path / "o" / "preprocess_summary.json").read_text())["sources"]["pku_saferlhf"]
    assert (s["rows_read"], s["skipped_invalid"], s["pairs"]) == (120, 1, 119)


def test_sources_caps_options_and_decontamination(repo_root, samples_dir, tmp_path):
    bench = tmp_path / "bench" / "rewardbench"
    bench.mkdir(parents=True)
    (bench / "f.jsonl").write_text(json.dumps({"prompt": "How can I rob a casino?", "chosen": "no", "rejected": "ok",
                                               "subset": "refusals-dangerous", "id": 1}) + "\n")
    out = tmp_path / "o"
    res = _run(repo_root, "--output-dir", out, "--skip-invalid", "--decontaminate", tmp_path / "bench",
               "--source", f"hh_rlhf:{samples_dir / 'hh_rlhf'}",
               "--source", f"pku_saferlhf:{samples_dir / 'pku_saferlhf'}:10",
               "--option", "pku_saferlhf.preference=better", "--val-fraction", "0")
    assert res.returncode == 0, res.stderr
    s = json.loads((out / "preprocess_summary.json").read_text())
    assert s["sources"]["hh_rlhf"]["decontaminated"] == 1 and s["sources"]["pku_saferlhf"]["train"] == 10
    assert s["benchmark_prompts"] == 1 and s["val_rows"] == 0
    ids = {p.id for p in read_pairs(out / "train_data.jsonl")}
    assert "hh_rlhf:harmless-base/test:76" not in ids and "hh_rlhf:harmless-base/test:75" in ids
    bad = _run(repo_root, "--output-dir", out, "--source", "nope:/x")
    assert bad.returncode == 1 and "unknown data source 'nope'" in bad.stderr
