"""Spawning redis-server processes that cannot outlive the Python process that started them.

On Linux each child asks the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``), so
a test run killed with ``kill -9`` leaves no Redis behind. The kernel ties that signal to the
*thread* that forked the child, not to the process: a node restarted from a worker thread (say
``asyncio.to_thread``, whose executor is shut down when a test's event loop closes) would be
killed when that thread ends. Every spawn therefore runs on one daemon thread that lives as long
as the interpreter.
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import IO

from ..exceptions import SandboxError
from ._lifecycle import die_with_parent

_INSTALL_HINT = (
    "redis-server was not found on PATH; install Redis 7 "
    "(Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis)"
)

Process = subprocess.Popen[bytes]


def redis_server_path() -> str:
    """Return the path of ``redis-server``, or explain how to install it."""
    path = shutil.which("redis-server")
    if path is None:
        raise SandboxError(_INSTALL_HINT)
    return path


def spawn(argv: Sequence[str], cwd: Path, log: IO[bytes]) -> Process:
    """Start ``argv`` in its own session, output to ``log``, bound to this process's life."""
    future: Future[Process] = Future()
    _spawner().put((lambda: _popen(argv, cwd, log), future))
    return future.result()


def _popen(argv: Sequence[str], cwd: Path, log: IO[bytes]) -> Process:
    # A new session keeps Ctrl-C in a terminal from reaching the nodes: their owner stops them.
    return subprocess.Popen(
        list(argv),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent(),  # noqa: PLW1509 - prctl has no other Python entry point
    )


_Job = tuple[Callable[[], Process], "Future[Process]"]
_jobs: queue.SimpleQueue[_Job] | None = None
_jobs_lock = threading.Lock()


def _spawner() -> queue.SimpleQueue[_Job]:
    """Return the queue of the spawner thread, starting the thread on first use."""
    global _jobs  # noqa: PLW0603 - one spawner thread per interpreter, started lazily
    with _jobs_lock:
        if _jobs is None:
            _jobs = queue.SimpleQueue()
            threading.Thread(
                target=_serve, args=(_jobs,), name="channels-ha-sandbox-spawner", daemon=True
            ).start()
        return _jobs


def _serve(jobs: queue.SimpleQueue[_Job]) -> None:
    while True:
        job, future = jobs.get()
        try:
            future.set_result(job())
        except BaseException as err:  # handed to the waiting caller, who re-raises it
            future.set_exception(err)
