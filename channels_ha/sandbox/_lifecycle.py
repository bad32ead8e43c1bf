"""Keeping child processes tied to their launcher, stopping cleanly on Ctrl-C or SIGTERM, and
removing what a launcher killed outright left behind.

Shared by the sandbox (redis-server children, ``channels-ha sandbox``) and the demo's
launcher (its ASGI workers).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGKILL the child when this process dies (None
    elsewhere); everything it needs is resolved here, before the fork."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook


def owned_directory(prefix: str, label: str = "") -> Path:
    """A fresh temporary directory ``<prefix><pid>-<label>...`` of this process, made after
    removing those of ``prefix`` whose owner is dead.

    A launcher killed by SIGKILL, or by SIGHUP (its terminal closed), runs no cleanup: its
    children die with it (:func:`die_with_parent`), its directory stays, sockets and logs
    included. The next launcher of the same kind removes it.
    """
    sweep_orphans(prefix)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-{label}"))


def sweep_orphans(prefix: str) -> None:
    """Remove the ``<prefix><pid>-...`` directories whose owner ``<pid>`` is no longer alive."""
    for path in Path(tempfile.gettempdir()).glob(f"{prefix}*-*"):
        owner = path.name.removeprefix(prefix).partition("-")[0]
        if owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive, and not ours to judge
        return True
    return True


class _Stop(BaseException):
    """Raised by the signal handlers to unwind into the cleanup."""


class _Holding:
    """Whether the main thread is in :func:`signals_held`, and whether a stop came meanwhile.

    Python runs signal handlers in the main thread, so this needs no lock; blocking the
    signals at the OS level would not do (with other threads running, the kernel delivers a
    process-wide signal to one of them, and Python still runs the handler in the main thread).
    """

    depth = 0
    stop_pending = False


def _stop() -> None:
    # Ignore repeats: a second Ctrl-C must not interrupt the cleanup the first one started.
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise _Stop


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    if _Holding.depth:
        _Holding.stop_pending = True  # raised when the held block ends
        return
    _stop()


@contextmanager
def signals_held() -> Iterator[None]:
    """Holds a stop by SIGINT or SIGTERM back for the block; it takes effect when it ends.

    For calls into ``subprocess`` under :func:`stopped_by_signals`: a ``_Stop`` raised inside
    ``Popen.poll()`` between its taking and releasing an internal lock leaves the lock held,
    and the cleanup's ``wait()`` on that process then blocks forever.
    """
    _Holding.depth += 1
    try:
        yield
    finally:
        _Holding.depth -= 1
    if not _Holding.depth and _Holding.stop_pending:
        _Holding.stop_pending = False
        _stop()


@contextmanager
def stopped_by_signals() -> Iterator[None]:
    """Turns SIGINT and SIGTERM into leaving this block (through every ``finally`` in it)."""
    _Holding.stop_pending = False
    previous = {sig: signal.signal(sig, _raise_stop) for sig in _STOP_SIGNALS}
    try:
        yield
    except _Stop:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
