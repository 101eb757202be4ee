"""The SLURM launchers against a real one-node SLURM on localhost (tests/slurm/local_slurm.py).

Each test starts its own munged / slurmctld / slurmd (fake GPUs through gres), submits
``slurm/brrm_tiny_cpu.sub`` with ``sbatch`` exactly as a user would (inputs through environment
variables, overrides as script arguments), and tears SLURM down by PID. The job runs the real
bootstrap (Ray head through ``srun --overlap``, the join wait, the driver on the head) and the
real GRPO driver on the tiny model for a few short steps.

Every process of a job carries ``BRRM_SLURM_TEST=<uuid>`` in its environment (sbatch exports
the submitting environment), so after teardown the tests scan /proc for that marker and
assert that nothing of the job is left running.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
import uuid
from pathlib import Path

import pytest

from local_slurm import LocalSlurm, free_port, missing_programs

REPO_ROOT = Path(__file__).resolve().parents[2]
SUB = "slurm/brrm_tiny_cpu.sub"

pytestmark = [
    pytest.mark.multiprocess,
    pytest.mark.skipif(bool(missing_programs()), reason=f"SLURM/munge programs missing: {missing_programs()} "
                       "(install them with tools/ci/install_slurm.sh; CI does)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a local slurmd runs jobs as root here; run the tests as root (CI does)"),
]

# Short GRPO steps on the tiny model: 2 prompts x 2 samples, 16 new tokens per turn, the short
# judge template; no periodic checkpoint (save_every_n_steps=100), so a checkpoint before the
# last step can only come from the preemption path.
SHORT_RUN = ["grpo.num_prompts_per_step=2", "grpo.num_generations=2", "grpo.global_batch_size=4",
             "grpo.micro_batch_size=1", "grpo.val_num_pairs=8",
             "rollout.max_new_tokens_turn1=16", "rollout.max_new_tokens_turn2=16",
             "judge.template_dir=model_configs/templates/brrm_short", "logging.tensorboard=false",
             "checkpoint.save_every_n_steps=100", "grpo.val_every_n_steps=100"]


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory, tiny_qwen3_dir):
    """The tiny HF model and a small training/validation set (synthetic pairs, both orders)."""
    from megatron_brrm.data.io import write_pairs
    from megatron_brrm.data.synthetic import marker_task

    data = tmp_path_factory.mktemp("slurm_data")
    write_pairs(data / "train_data.jsonl", marker_task(16, seed=1, split="train"))
    write_pairs(data / "val_data.jsonl", marker_task(4, seed=2, split="val", both_orders=False))
    return tiny_qwen3_dir, data


def _marked_processes(marker: str):
    """(pid, state, cmdline) of live processes whose environment holds ``marker`` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() not in (entry / "environ").read_bytes():
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # exited meanwhile, or not ours to read
            continue
        if state != "Z":
            found.append((int(entry.name), state, cmd[:120]))
    return found


@pytest.fixture
def slurm(tmp_path):
    """A running one-node SLURM; afterwards: torn down by PID and no process of its jobs left."""
    marker = uuid.uuid4().hex
    cluster = LocalSlurm(tmp_path / "slurm", gpus=2)
    cluster.marker = marker
    try:
        cluster.start()
        yield cluster
    finally:
        daemons = [p.pid for p in cluster.procs]
        cluster.stop()
        assert all(not Path(f"/proc/{pid}").exists() or
                   (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z") for pid in daemons)
        deadline = time.monotonic() + 30
        left = _marked_processes(f"BRRM_SLURM_TEST={marker}")
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = _marked_processes(f"BRRM_SLURM_TEST={marker}")
        assert not left, f"processes of the SLURM job still running after teardown: {left}"


def _submit(slurm, tmp_path, tiny_inputs, overrides, python=sys.executable):
    model, data = tiny_inputs
    run, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    env = dict(slurm.env, PYTHON=str(python), BRRM_MODEL=str(model), BRRM_DATA=str(data), RUN=str(run),
               LOG_ROOT=str(logs), BRRM_SLURM_TEST=slurm.marker, RAY_PORT=str(free_port()),
               RAY_START_ARGS=f"--object-store-memory=300000000 --ray-client-server-port={free_port()} "
                              f"--dashboard-agent-listen-port={free_port()}",
               PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    slurm.env = env
    out = slurm.run("sbatch", "--parsable", "--output", str(logs / "%x-%j.out"), SUB, *overrides,
                    cwd=REPO_ROOT).stdout.strip()
    job = out.split(";")[0]
    assert job.isdigit(), out
    return job, run, logs / f"brrm-tiny-{job}.out"


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else "(no job output)"


def _metrics(run: Path):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.timeout(300)
def test_tiny_job_completes_through_the_ray_bootstrap(slurm, tmp_path, tiny_inputs):
    # The GPU launchers' #SBATCH lines are accepted by this SLURM (shrunk to its one node and
    # two fake GPUs on the command line, which overrides the script's --nodes/--gpus-per-node).
    for gpu_sub in ("slurm/brrm_8b_2node.sub", "slurm/brrm_14b_tp4pp2.sub"):
        res = slurm.run("sbatch", "--test-only", "--nodes=1", "--gpus-per-node=2", gpu_sub, check=False,
                        cwd=REPO_ROOT)
        assert res.returncode == 0 and "to start at" in res.stderr, (gpu_sub, res.stderr)

    # The job's interpreter fails the first `ray start --head` (as Ray's own "timed out during
    # startup" does on an overloaded node): the bootstrap must start the head again.
    wrapper = tmp_path / "python-first-head-fails"
    wrapper.write_text(f'''#!/usr/bin/env bash
if [[ " $* " == *" start "* && " $* " == *" --head "* ]] && mkdir "{tmp_path / 'head-failed-once'}" 2>/dev/null; then
  echo "injected: The current node timed out during startup." >&2
  exit 1
fi
exec "{sys.executable}" "$@"
''')
    wrapper.chmod(0o755)
    job, run, out = _submit(slurm, tmp_path, tiny_inputs, ["grpo.max_num_steps=2", *SHORT_RUN], python=wrapper)
    info = slurm.wait_job(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"},
                          timeout_s=240)
    log = _read(out)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{log[-4000:]}"
    assert "did not start (attempt 1 of 3" in log and "injected: The current node timed out" in log, log[-4000:]
    assert (tmp_path / "logs" / f"brrm-tiny-{job}" / "ray-{}-r0-a2.log".format(slurm.host)).is_file()
    # Ray came up through the bootstrap and the driver joined it (not a private local Ray)
    assert "ray_nodes: all 1 node(s) joined" in log and "Ray is up on 1 node(s)" in log, log[-4000:]
    assert "Connecting to existing Ray cluster" in log and "Started a local Ray instance" not in log, log[-4000:]
    assert re.search(r"cluster: 2 policy rank\(s\) \(TP 2 PP 1 CP 1 DP 1\) on CPU", log), log[-4000:]
    assert "driver exited with code 0" in log and "stopping Ray" in log
    # the job's own log folder holds the Ray head's log
    assert (tmp_path / "logs" / f"brrm-tiny-{job}" / "ray-{}-r0.log".format(slurm.host)).is_file()
    # a checkpoint and metrics were written
    ckpt = run / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step_00000002"
    assert (ckpt / "step_00000002" / "train_state.json").is_file()
    assert [m["step"] for m in _metrics(run)] == [0, 1, 2]  # step-0 validation, then two GRPO steps
    assert (run / "config.yaml").is_file()


@pytest.mark.timeout(420)
def test_signal_before_time_limit_checkpoints_requeues_and_resumes(slurm, tmp_path, tiny_inputs):
    total = 6
    # one policy rank (TP=1) to start twice as fast; the recipe's TP=2 runs in the test above
    job, run, out = _submit(slurm, tmp_path, tiny_inputs, [f"grpo.max_num_steps={total}", *SHORT_RUN,
                                                            "parallel.tensor_model_parallel_size=1"])
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 200
    # wait until the first GRPO step has been logged (line 0 is the step-0 validation)
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert time.monotonic() < deadline, f"no GRPO step logged\n{_read(out)[-4000:]}"
        assert slurm.job(job)["JobState"] in ("PENDING", "RUNNING"), _read(out)[-4000:]
        time.sleep(0.2)
    # what `#SBATCH --signal=B:USR1@120` does before the time limit: SIGUSR1 to the batch shell
    slurm.run("scancel", "--batch", "--signal=USR1", job)
    # the driver finishes its step, checkpoints, exits 3; the bootstrap runs `scontrol requeue`
    while True:
        info = slurm.job(job)
        if info.get("Restarts") == "1" and info.get("JobState") == "PENDING":
            break
        assert info.get("JobState") in ("RUNNING", "REQUEUED", "PENDING", "COMPLETING"), \
            f"{info}\n{_read(out)[-4000:]}"
        assert time.monotonic() < deadline, f"job not requeued: {info}\n{_read(out)[-4000:]}"
        time.sleep(0.3)
    first_run = _metrics(run)
    stopped_at = first_run[-1]["step"]
    assert 1 <= stopped_at < total, first_run
    # SLURM holds a requeued job back (EligibleTime ~2 minutes later); start it now. Not in the
    # same second as the requeue: slurmd refuses a credential made in the second its previous
    # one was revoked ("Job credential revoked").
    time.sleep(3)
    slurm.run("scontrol", "update", f"jobid={job}", "starttime=now")
    info = slurm.wait_job(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"},
                          timeout_s=240)
    log = _read(out)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0" and info["Restarts"] == "1", \
        f"{info}\n{log[-4000:]}\n{slurm.logs(60)}"
    assert "received SIGUSR1" in log and f"stopped by SIGUSR1 after step {stopped_at}" in log, log[-4000:]
    assert "driver exited with code 3" in log and f"requeueing job {job}" in log
    assert "(restart 1)" in log  # the same script ran again with SLURM_RESTART_COUNT=1
    # the preemption checkpoint: the step the first run stopped at (no periodic save before the end)
    ckpt = run / "checkpoints"
    assert (ckpt / f"step_{stopped_at:08d}" / "train_state.json").is_file()
    assert json.loads((ckpt / f"step_{stopped_at:08d}" / "train_state.json").read_text())["step"] == stopped_at
    assert f"resumed from {ckpt} at step {stopped_at}" in log, log[-4000:]
    # the resumed run continued from that step: steps stopped_at+1 .. total, none repeated
    steps = [m["step"] for m in _metrics(run)]
    assert steps == [0] + list(range(1, total + 1)), steps
    assert (ckpt / "latest").read_text().strip() == f"step_{total:08d}"
