"""True end status for runs whose process does not reach `on_train_end`: failed, killed, or (by heartbeat) crashed.

The excepthook and the atexit hook are installed once per process (they only act on runs being watched). The
SIGTERM/SIGINT handler is installed per run: `register` puts it in front of whatever handler is current at that
moment (re-read then, never remembered from an earlier run) and `unregister` puts that handler back when the run
that installed it ends, unless someone replaced ours since (e.g. hftrain's graceful-stop callback restoring what it
saw at train begin). So no finished run's handler stays in the chain, and a later run or test never reaches a stale
one. Every hook chains to the one it replaced, so other handlers (hftrain's checkpoint-then-stop, pytest's SIGINT,
a user's handler or excepthook) keep working, and signals are never swallowed: with the default action in place,
the signal is re-raised after the status is written.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from typing import Any, Protocol

__all__ = ["TrackedRun", "register", "unregister", "installed"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_active: dict[int, "TrackedRun"] = {}
_previous: dict[int, Any] = {}
_owner: list[int] = []  # id of the run whose register() installed the signal handlers now in place
_lock = threading.RLock()
_hooks_installed = False


class TrackedRun(Protocol):
    """What lifecycle needs from a live run: a way to write its end status and to note a signal."""

    def end_abnormally(self, status: str, error: str) -> None: ...

    def note_signal(self, signum: int, terminating: bool) -> None: ...


def register(run: TrackedRun) -> None:
    """Watch `run` until `unregister`: an uncaught exception marks it failed, SIGTERM/SIGINT killed, and an exit
    before the end failed. The signal handler goes in front of the current one unless it is there already."""
    with _lock:
        _install_hooks()
        _active[id(run)] = run
        if _install_signals():
            _owner[:] = [id(run)]


def unregister(run: TrackedRun) -> None:
    """Stop watching `run`; if it installed the signal handler (or no run is left), put back what was there."""
    with _lock:
        _active.pop(id(run), None)
        if not _active or _owner == [id(run)]:
            _restore_signals()
            _owner.clear()


def installed() -> bool:
    """Whether the tracker's signal handler is installed now (for tests and diagnostics)."""
    return any(signal.getsignal(s) is _on_signal for s in _previous)


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    previous_hook = sys.excepthook

    def excepthook(kind, value, tb):
        status = "killed" if issubclass(kind, KeyboardInterrupt) else "failed"
        _end_all(status, f"{kind.__name__}: {value}")
        previous_hook(kind, value, tb)

    sys.excepthook = excepthook
    atexit.register(_end_all, "failed", "the process exited before training ended")


def _install_signals() -> bool:
    """Put `_on_signal` in front of the current handlers (re-read now, never remembered from an earlier run);
    True if anything was installed."""
    if threading.current_thread() is not threading.main_thread():
        return False  # signal handlers can only be set from the main thread; the heartbeat still reveals a kill
    done = False
    for signum in _SIGNALS:
        try:
            current = signal.getsignal(signum)
            if current is _on_signal:
                continue  # already in front (another watched run in this process): its saved previous is current
            _previous[signum] = current
            signal.signal(signum, _on_signal)
            done = True
        except (ValueError, OSError):
            _previous.pop(signum, None)
    return done


def _restore_signals() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, previous in list(_previous.items()):
        try:
            # Only undo our own installation: if someone replaced our handler since (e.g. hftrain's graceful-stop
            # callback putting back what it saw at train begin), theirs is the current one and stays.
            if signal.getsignal(signum) is _on_signal:
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        except (ValueError, OSError):
            pass
        _previous.pop(signum, None)


def _end_all(status: str, error: str) -> None:
    for run in list(_active.values()):
        run.end_abnormally(status, error)


def _on_signal(signum, frame):
    previous = _previous.get(signum, signal.SIG_DFL)
    if previous is None:  # installed from C code, unknown to Python: treat as the default action
        previous = signal.SIG_DFL
    if previous == signal.SIG_IGN:
        return  # the process chose to ignore the signal, and so do we
    # With the default action (or Python's KeyboardInterrupt) the process ends now, so the status is written now;
    # another handler (e.g. a graceful stop) may let training finish, and then `on_train_end` writes it.
    terminating = previous in (signal.SIG_DFL, signal.default_int_handler)
    for run in list(_active.values()):
        run.note_signal(signum, terminating)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        # Restore the default action and deliver the signal again: the process ends exactly as it would have.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
