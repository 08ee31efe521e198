"""Shutdowns that keep the work: SIGTERM (what SLURM, Kubernetes and ``timeout`` send) and SIGINT (Ctrl-C).

While :func:`graceful_shutdown` is active, the first SIGTERM or SIGINT asks training to stop: the engine
then writes an ``-interrupted`` checkpoint atomically and says how to resume; a second signal exits at
once (exit code 128 + signal number; an interrupted save leaves at most a ``.tmp-*`` file, removed at the
next start).

- One process: the first signal raises :class:`TrainingInterrupted` where the program is (a training
  step, the memory-bank init pass, an evaluation).
- Distributed (``torch.distributed`` initialised): the first signal only sets a flag. Every rank polls it
  at each training step inside one all-reduce (:meth:`~profd_plugin.engine.LoopMixin.stop_flags`), so all
  ranks stop at the same step and none is left waiting in a collective. A signal that arrives during an
  evaluation or the init pass takes effect at the next training step (or when the run ends).
"""
from __future__ import annotations

import contextlib
import os
import signal
from typing import Iterator, Optional

__all__ = ["TrainingInterrupted", "graceful_shutdown", "stop_requested", "exit_code", "SIGNALS"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_EXIT_BASE = 128  # shell convention: killed by signal N -> exit status 128 + N
_state = {"signum": None, "distributed": False}


class TrainingInterrupted(KeyboardInterrupt):
    """Training was stopped by a signal (a ``KeyboardInterrupt``, so Ctrl-C handling covers it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(signum: int) -> int:
    """128 + the signal number: 143 for SIGTERM, 130 for SIGINT."""
    return _EXIT_BASE + int(signum)


def stop_requested() -> Optional[int]:
    """The signal number of a pending stop request, or None."""
    return _state["signum"]


def _handle(signum, frame) -> None:
    if _state["signum"] is not None:  # the second signal: exit now, even in the middle of a save
        os._exit(exit_code(signum))
    _state["signum"] = signum
    if not _state["distributed"]:
        raise TrainingInterrupted(signum)


@contextlib.contextmanager
def graceful_shutdown(distributed: bool) -> Iterator[None]:
    """Install the handlers of SIGTERM and SIGINT for the duration of the block (main thread only)."""
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _state.update(signum=None, distributed=distributed)
    for s in SIGNALS:
        signal.signal(s, _handle)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _state.update(signum=None, distributed=False)
