"""Errors of remote workers: :class:`WorkerError` and the one-line cause of a Ray failure.

Shared by worker groups (policy ranks) and engine actors; torch-free (Ray helper processes
import it).
"""
from __future__ import annotations

import re

import ray


class WorkerError(RuntimeError):
    """A rank of a worker group raised, died or timed out.

    Attributes:
        group: the worker group's name (e.g. ``"policy"``).
        rank: the failing rank.
        method: the method being called (``"__init__"`` for actor creation).
        node: IP of the rank's node.
        cause: one-line cause (``"ValueError: ..."``, ``"actor died: ..."``, ``"timed out ..."``).
        detail: the full remote traceback / Ray message, when there is one.
    """

    def __init__(self, group: str, rank: int, method: str, cause: str, node: str = "?", detail: str = ""):
        self.group, self.rank, self.method = group, rank, method
        self.node, self.cause, self.detail = node, cause, detail
        msg = f"worker group '{group}' rank {rank} (node {node}) failed in {method}(): {cause}"
        if detail:
            msg += f"\n--- details from the worker ---\n{detail}"
        super().__init__(msg)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def describe_ray_error(exc: BaseException) -> tuple:
    """(one-line cause, detail) for an exception raised by ``ray.get``.

    A task error gives ``"<OriginalType>: <message>"`` and the remote traceback; a dead actor
    gives ``"actor died (...)"`` with Ray's exit detail (exit type, pid, node).
    """
    text = _ANSI.sub("", str(exc))
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = getattr(exc, "cause", None)
        line = f"{type(cause).__name__}: {cause}" if cause is not None else text.strip().splitlines()[-1]
        return line, text
    if isinstance(exc, ray.exceptions.RayActorError):
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if "creation task" in text:  # the actor's __init__ raised: the last line is the exception
            return f"actor died: its __init__ raised {lines[-1] if lines else '?'}", text
        pid = re.search(r"pid: (\d+)", text)
        kind = re.search(r"Worker exit type: (\w+)", text)
        why = re.search(r"Worker exit detail: (.*?\.)(?: |$)", text)
        parts = [f"pid {pid.group(1)}" if pid else "", f"exit type {kind.group(1)}" if kind else "",
                 why.group(1) if why else (lines[0] if lines else "")]
        return f"actor died ({type(exc).__name__}: {', '.join(p for p in parts if p)})", text
    return f"{type(exc).__name__}: {text}", ""
