"""The demo's command line: a bad override is one line naming the key, exit code 2, and nothing
is written (the output folder is not even created). The full demo run is the README's main
command; its stages are tested one by one elsewhere."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bad_override_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "megatron_brrm.demo", "--output-dir", str(out),
                           "output_dir=elsewhere"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[0].startswith("error: command line ('output_dir=elsewhere')") and "'output_dir'" in lines[0]
    assert not out.exists()
