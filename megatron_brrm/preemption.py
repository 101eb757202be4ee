"""Preemption and time limits: a signal asks the driver to checkpoint at the end of the step and exit.

SLURM warns a job before its time limit or a preemption with a signal
(``#SBATCH --signal=B:USR1@<seconds>`` sends SIGUSR1 to the batch shell, which forwards it to
the driver; at the limit itself every process gets SIGTERM). :class:`PreemptionHandler` turns
SIGUSR1 and SIGTERM into a flag instead of an abrupt exit; the GRPO driver checks it after
every step, writes a checkpoint for the step it just finished and exits with
:data:`REQUEUE_EXIT_CODE`. ``slurm/ray_bootstrap.sh`` turns that exit code into
``scontrol requeue``, and the requeued job resumes from ``checkpoint.save_dir/latest``.

Exit codes of ``python -m megatron_brrm.train``: 0 finished, 1 crashed, 2 bad config or
inputs, 3 (:data:`REQUEUE_EXIT_CODE`) stopped by a signal after a checkpoint: requeue me.

Imports nothing of the project.
"""
from __future__ import annotations

import signal
import threading
from typing import Dict, Optional, Sequence

REQUEUE_EXIT_CODE = 3
DEFAULT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class PreemptionHandler:
    """Record the first stop signal instead of dying from it.

    Use as a context manager (handlers are restored on exit) or call :meth:`install` /
    :meth:`uninstall`. :meth:`install` may be called again to take the signals back from a
    library that replaced the handlers (``ray.init`` installs its own SIGTERM handler in the
    driver, so the driver installs this one again after Ray has started).

    Args:
        signals: signals to catch (default SIGUSR1 and SIGTERM).

    Attributes:
        received: name of the first signal received (``"SIGUSR1"``), or None.

    Raises:
        RuntimeError: :meth:`install` called outside the main thread (Python delivers
            signals to the main thread only).
    """

    def __init__(self, signals: Sequence[int] = DEFAULT_SIGNALS):
        self.signals = tuple(signals)
        self.received: Optional[str] = None
        self._previous: Dict[int, object] = {}

    def _handle(self, signum, frame) -> None:  # runs in the main thread between bytecodes
        if self.received is None:
            self.received = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        """True once a stop signal has arrived."""
        return self.received is not None

    def install(self) -> "PreemptionHandler":
        """Install (or re-install) the handler for every signal; returns self."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionHandler.install must run in the main thread (signals go to it)")
        for sig in self.signals:
            previous = signal.signal(sig, self._handle)
            if sig not in self._previous:
                self._previous[sig] = previous
        return self

    def uninstall(self) -> None:
        """Restore the handlers that were installed before the first :meth:`install`."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def __enter__(self) -> "PreemptionHandler":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()
