"""A real one-node SLURM on localhost for the launcher tests (Debian's slurm-wlm + munge).

``LocalSlurm(root)`` writes its own ``slurm.conf`` / ``gres.conf`` (two fake GPUs: gres files
that are symlinks to ``/dev/null``), a munge key, and starts ``munged``, ``slurmctld -D`` and
``slurmd -D`` with every state, spool, log, pid file and socket under ``root`` and free TCP
ports, so it does not touch a system SLURM and two instances can run side by side.
:meth:`LocalSlurm.stop` cancels the jobs, waits for them to leave, then stops the daemons it
started by PID (newest first) and reaps them. Client commands get the instance through
``SLURM_CONF`` (:attr:`LocalSlurm.env`).

Needs root (slurmd runs jobs as their user; the tests submit as root) and the programs that
``tools/ci/install_slurm.sh`` installs.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")


def missing_programs() -> List[str]:
    """The SLURM/munge programs that are not on PATH (also looked up in /usr/sbin)."""
    return [p for p in PROGRAMS if not _which(p)]


def _which(name: str) -> Optional[str]:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def free_port() -> int:
    """A TCP port that was free a moment ago (bound to port 0 on 127.0.0.1 and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmError(RuntimeError):
    """The local SLURM did not come up or a command failed; the message holds the daemon logs."""


class LocalSlurm:
    """A one-node SLURM under ``root`` (see the module docstring).

    Args:
        root: an empty folder for configuration, state, spool, logs and sockets.
        gpus: fake GPUs on the node (gres ``gpu``; files are symlinks to ``/dev/null``).
        start_timeout_s: seconds to wait for each daemon.
    """

    def __init__(self, root: Path, gpus: int = 2, start_timeout_s: float = 30.0):
        self.root = Path(root)
        self.gpus = gpus
        self.timeout = start_timeout_s
        self.host = socket.gethostname().split(".")[0]
        self.procs: List[subprocess.Popen] = []
        self.conf = self.root / "etc" / "slurm.conf"
        # Unix socket paths are limited to 108 bytes: slurmd's step sockets (spool) and munged's socket
        # live in a short folder of their own, not under ``root`` (pytest-xdist's temporary folders are
        # long enough to break them: "Unix socket path ... is too long (111 > 108)", measured).
        self.sockets = Path(tempfile.mkdtemp(prefix="slurm-"))
        os.chmod(self.sockets, 0o755)
        self.env: Dict[str, str] = dict(os.environ, SLURM_CONF=str(self.conf))

    # ------------------------------------------------------------------ config
    def _node_line(self) -> str:
        # slurmd -C prints this machine's topology; with only CPUs=N slurmd logs a mismatch.
        out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, timeout=30).stdout
        first = out.splitlines()[0]
        fields = dict(kv.split("=", 1) for kv in first.split() if "=" in kv)
        keep = ["CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore"]
        topo = " ".join(f"{k}={fields[k]}" for k in keep if k in fields)
        self.cpus = int(fields.get("CPUs", os.cpu_count() or 1))
        gres = f" Gres=gpu:{self.gpus}" if self.gpus else ""
        return f"NodeName={self.host} NodeAddr=127.0.0.1 {topo} RealMemory=1000{gres} State=UNKNOWN"

    def write_config(self) -> None:
        r = self.root
        for sub in ("etc", "state", "spool", "log", "run", "munge", "gpus"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o755)  # munged: "Socket is inaccessible" unless its folder is 755
        os.chmod(r, 0o755)
        (self.sockets / "munge").mkdir(exist_ok=True)
        (self.sockets / "spool").mkdir(exist_ok=True)
        os.chmod(self.sockets / "munge", 0o755)
        self.munge_socket = self.sockets / "munge" / "munge.socket"
        gres = ""
        if self.gpus:
            for i in range(self.gpus):
                dev = r / "gpus" / f"gpu{i}"
                if not dev.is_symlink():
                    dev.symlink_to("/dev/null")  # gres files must be devices; plain files are refused
            gres = "GresTypes=gpu\n"
            (r / "etc" / "gres.conf").write_text(
                f"AutoDetect=off\nNodeName={self.host} Name=gpu File={r}/gpus/gpu[0-{self.gpus - 1}]\n")
        ctld_port, d_port = free_port(), free_port()
        self.conf.write_text(f"""ClusterName=brrmtest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={self.sockets}/spool/slurmd-%n
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={r}/log/jobcomp.txt
MailProg=/bin/true
ReturnToService=2
MinJobAge=600
KillWait=10
{gres}{self._node_line()}
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")

    # ------------------------------------------------------------------ lifecycle
    def _spawn(self, args: List[str], name: str) -> subprocess.Popen:
        log = open(self.root / "log" / f"{name}.stdout", "ab")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def _wait(self, what: str, check) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise SlurmError(f"{p.args[0]} exited with {p.returncode} while waiting for {what}\n{self.logs()}")
            if check():
                return
            time.sleep(0.2)
        raise SlurmError(f"timed out after {self.timeout:g} s waiting for {what}\n{self.logs()}")

    def start(self) -> "LocalSlurm":
        """Write the configuration, start munged, slurmctld and slurmd, wait until the node is idle."""
        self.write_config()
        r = self.root
        key = r / "etc" / "munge.key"
        if not key.exists():
            subprocess.run([_which("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True,
                           timeout=30)
            os.chmod(key, 0o600)
        self._spawn([_which("munged"), "-F", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
                     f"--pid-file={r}/run/munged.pid", f"--seed-file={r}/munge/seed",
                     f"--log-file={r}/log/munged.log"], "munged")
        self._wait("munged's socket", self.munge_socket.exists)
        self._spawn([_which("slurmctld"), "-D", "-f", str(self.conf)], "slurmctld")
        self._wait("slurmctld (scontrol ping)", lambda: "UP" in self.run("scontrol", "ping", check=False).stdout)
        self._spawn([_which("slurmd"), "-D", "-f", str(self.conf)], "slurmd")
        self._wait("the node to be idle (sinfo)",
                   lambda: self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip() == "idle")
        return self

    def run(self, *args: str, check: bool = True, timeout: float = 60.0, cwd=None) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this instance (environment :attr:`env`, folder ``cwd``)."""
        proc = subprocess.run([_which(args[0]), *args[1:]], capture_output=True, text=True, env=self.env,
                              timeout=timeout, cwd=cwd)
        if check and proc.returncode:
            raise SlurmError(f"{' '.join(args)} -> exit {proc.returncode}: {proc.stderr.strip()}\n{self.logs()}")
        return proc

    def job(self, job_id: str) -> Dict[str, str]:
        """``scontrol show job -o`` as a dict (``JobState``, ``ExitCode``, ``Restarts``, ...)."""
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", out))

    def wait_job(self, job_id: str, states, timeout_s: float) -> Dict[str, str]:
        """Poll until the job's ``JobState`` is one of ``states``; returns the job record."""
        deadline = time.monotonic() + timeout_s
        info: Dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(0.5)
        raise SlurmError(f"job {job_id} not in {states} after {timeout_s:g} s: {info}\n{self.logs()}")

    def logs(self, tail: int = 30) -> str:
        """The last lines of every daemon log (for failure messages)."""
        parts = []
        for p in sorted((self.root / "log").glob("*")):
            lines = p.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {p.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Cancel every job, wait for the queue to drain, stop the daemons by PID (newest first)."""
        if any(p.poll() is None for p in self.procs[1:]):
            self.run("scancel", "--full", "--user", str(os.getuid()), check=False)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                q = self.run("squeue", "-h", "-o", "%i %T", check=False)
                if q.returncode or not q.stdout.strip():
                    break
                time.sleep(0.5)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        self.procs = []
        shutil.rmtree(self.sockets, ignore_errors=True)

    def __enter__(self) -> "LocalSlurm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
