"""Read a launcher's ``#SBATCH`` lines and its recipe, and check them before submission.

``parse_sbatch`` reads the directives sbatch itself reads (``#SBATCH`` lines at the top of the
script, before the first command) and the ``RECIPE=model_configs/<name>.yaml`` assignment the
``slurm/*.sub`` scripts carry. ``check_sbatch`` checks what makes a job die late or lose work:
the preemption signal (``--signal=B:USR1@<seconds>``, shorter than the time limit), ``--requeue``
(the driver's exit code 3 becomes ``scontrol requeue``), and that the recipe exists. The
planner then checks the recipe's layout against the allocation (``--nodes`` x
``--gpus-per-node``; a script without GPUs is a CPU job whose ``--cpus-per-task`` must hold one
CPU per policy rank).

Imports nothing of the project.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

_SHORT = {"-N": "nodes", "-t": "time", "-J": "job-name", "-c": "cpus-per-task", "-o": "output", "-p": "partition",
          "-A": "account", "-n": "ntasks", "-G": "gpus"}
_RECIPE = re.compile(r"^\s*(?:export\s+)?RECIPE=(\S+)\s*(?:#.*)?$")


class SbatchError(ValueError):
    """A launcher cannot be read or parsed; the message names the file and line."""


@dataclass
class SbatchSpec:
    """What a launcher asks SLURM for.

    Attributes:
        path: the script.
        options: long option name -> value (``"requeue"`` -> ``""`` for flags).
        lines: option name -> line number where it was set.
        recipe: the ``RECIPE=`` path (relative to the submit directory), or None.
    """

    path: Path
    options: Dict[str, str] = field(default_factory=dict)
    lines: Dict[str, int] = field(default_factory=dict)
    recipe: Optional[str] = None

    def _int(self, key: str, default: int) -> int:
        val = self.options.get(key)
        if val is None:
            return default
        m = re.match(r"^(?:[A-Za-z0-9_]+:)?(\d+)$", val)  # --gpus-per-node=8 or =h100:8
        if not m:
            raise SbatchError(f"{self.path}:{self.lines[key]}: --{key}={val} is not a count")
        return int(m.group(1))

    @property
    def nodes(self) -> int:
        """``--nodes`` (a range ``2-4`` counts its minimum)."""
        val = self.options.get("nodes", "1").split("-")[0]
        if not val.isdigit():
            raise SbatchError(f"{self.path}:{self.lines.get('nodes', '?')}: --nodes={self.options['nodes']} is not a count")
        return int(val)

    @property
    def gpus_per_node(self) -> int:
        """``--gpus-per-node`` (0 when absent: a CPU job)."""
        return self._int("gpus-per-node", 0)

    @property
    def cpus_per_task(self) -> Optional[int]:
        """``--cpus-per-task`` or None."""
        return self._int("cpus-per-task", 0) or None

    @property
    def time_limit_s(self) -> Optional[int]:
        """``--time`` in seconds, or None when absent."""
        val = self.options.get("time")
        return None if val is None else parse_time(val, f"{self.path}:{self.lines['time']}")

    @property
    def signal(self) -> Optional[tuple]:
        """``--signal=[B:]SIG[@seconds]`` as ``(batch_only, name, seconds)``, or None."""
        val = self.options.get("signal")
        if val is None:
            return None
        m = re.match(r"^(?:([BR]+):)?([A-Z0-9]+)(?:@(\d+))?$", val)
        if not m:
            raise SbatchError(f"{self.path}:{self.lines['signal']}: --signal={val} is not [B:]SIGNAL[@seconds]")
        name = m.group(2)
        name = name if name.startswith("SIG") or name.isdigit() else "SIG" + name
        return "B" in (m.group(1) or ""), name, int(m.group(3) or 60)


def parse_time(val: str, where: str = "--time") -> int:
    """sbatch ``--time`` formats -> seconds: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``.

    Raises:
        SbatchError: another format (``where`` names the source).
    """
    days = 0
    rest = val
    if "-" in val:
        d, rest = val.split("-", 1)
        if not d.isdigit():
            raise SbatchError(f"{where}: --time={val} is not a SLURM time")
        days = int(d)
    parts = rest.split(":")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3:
        raise SbatchError(f"{where}: --time={val} is not a SLURM time (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S)")
    nums = [int(p) for p in parts]
    if days:
        h, m, s = (nums + [0, 0])[:3]
    elif len(nums) == 1:
        h, m, s = 0, nums[0], 0
    elif len(nums) == 2:
        h, m, s = 0, nums[0], nums[1]
    else:
        h, m, s = nums
    return ((days * 24 + h) * 60 + m) * 60 + s


def parse_sbatch(path) -> SbatchSpec:
    """Read ``#SBATCH`` directives (until the first command line, as sbatch does) and ``RECIPE=``.

    Raises:
        SbatchError: unreadable file or a malformed directive (file:line named).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SbatchError(f"{path}: cannot read ({exc})") from None
    spec = SbatchSpec(path=path)
    in_header = True
    for no, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if in_header and stripped.startswith("#SBATCH"):
            try:
                tokens = shlex.split(stripped[len("#SBATCH"):], comments=True)
            except ValueError as exc:
                raise SbatchError(f"{path}:{no}: cannot parse '{stripped}' ({exc})") from None
            i = 0
            while i < len(tokens):
                tok = tokens[i]
                if tok.startswith("--"):
                    key, _, val = tok[2:].partition("=")
                elif tok in _SHORT:
                    key = _SHORT[tok]
                    i += 1
                    val = tokens[i] if i < len(tokens) else ""
                else:
                    raise SbatchError(f"{path}:{no}: unrecognised #SBATCH token '{tok}'")
                spec.options[key] = val
                spec.lines[key] = no
                i += 1
            continue
        if in_header and stripped and not stripped.startswith("#"):
            in_header = False  # sbatch stops reading directives at the first command
        m = _RECIPE.match(line)
        if m and spec.recipe is None:
            spec.recipe = m.group(1).strip("'\"")
    return spec


def check_sbatch(spec: SbatchSpec, repo_root: Optional[Path] = None) -> List[str]:
    """Problems with a launcher's requeue/preemption setup and recipe (empty when none).

    Checks: ``--signal`` present, sent to the batch shell (``B:``), ``SIGUSR1`` or ``SIGTERM``,
    its lead time below ``--time``; ``--requeue`` present; ``RECIPE=`` names an existing file
    (relative to ``repo_root``, the submit directory).
    """
    problems = []
    where = str(spec.path)
    sig = spec.signal
    if sig is None:
        problems.append(f"{where}: no #SBATCH --signal: at the time limit the job dies without a checkpoint; add "
                        "#SBATCH --signal=B:USR1@<seconds longer than one step + checkpoint>")
    else:
        batch_only, name, lead = sig
        line = spec.lines["signal"]
        if not batch_only:
            problems.append(f"{where}:{line}: --signal={spec.options['signal']} goes to every job step (Ray too); "
                            "use B: so only the batch shell gets it and forwards it to the driver")
        if name not in ("SIGUSR1", "SIGTERM"):
            problems.append(f"{where}:{line}: --signal={spec.options['signal']}: the driver checkpoints on SIGUSR1 "
                            f"or SIGTERM, not {name}")
        limit = spec.time_limit_s
        if limit is not None and lead >= limit:
            problems.append(f"{where}:{line}: the signal comes {lead} s before a time limit of {limit} s "
                            f"(--time={spec.options['time']}): it would fire at once")
    if "requeue" not in spec.options:
        problems.append(f"{where}: no #SBATCH --requeue: the driver's 'requeue me' exit (code 3) would end the job "
                        "instead of resuming it")
    if spec.recipe is None:
        problems.append(f"{where}: no RECIPE=model_configs/<name>.yaml line naming the recipe it runs")
    elif repo_root is not None and not (Path(repo_root) / spec.recipe).is_file():
        problems.append(f"{where}: RECIPE={spec.recipe} does not exist under {repo_root}")
    return problems
