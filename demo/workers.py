"""The launcher's side of the ASGI workers: their sockets, their processes, their end.

Each worker gets its own ``SO_REUSEPORT`` socket on the one public port (see ``worker.py``),
runs in a session of its own (Ctrl-C in the terminal reaches only the launcher, which stops
the workers before Redis) and, on Linux, dies with the launcher even if the launcher is
killed with SIGKILL.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from channels_ha.sandbox._lifecycle import die_with_parent

REPO_ROOT = Path(__file__).resolve().parent.parent
LISTEN_BACKLOG = 4096  # the load test opens 1,000 sockets in bursts
WORKER_READY_TIMEOUT_S = 30.0
WORKER_STOP_TIMEOUT_S = 5.0


class LaunchError(Exception):
    """Something the launcher needs is missing; the message says what to do."""


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets on one port; port 0 picks a free one for all of them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if port:
        _require_free(family, host, port)
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]  # the port the first socket got, for the others
            sock.listen(LISTEN_BACKLOG)
            sock.set_inheritable(True)
    except OSError as err:
        for sock in sockets:
            sock.close()
        raise LaunchError(f"cannot listen on {host}:{port}: {err.strerror or err}") from err
    return sockets


def _require_free(family: socket.AddressFamily, host: str, port: int) -> None:
    """Fail clearly if the port is taken, even by a socket that would share it with us."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        try:
            probe.bind((host, port))
        except OSError as err:
            raise LaunchError(f"{host}:{port} is in use ({err.strerror}); try --port") from err


class Worker:
    """One ``demo.worker`` process serving on ``sock``."""

    def __init__(self, sock: socket.socket, env: Mapping[str, str]) -> None:
        self._sock = sock
        self._env = dict(env)
        self._process: subprocess.Popen[bytes] | None = None
        self._ready_fd = -1

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def exit_code(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def spawn(self) -> None:
        """Start the process; the launcher's copy of the socket is closed, the worker owns it."""
        read_fd, write_fd = os.pipe()
        fds = (self._sock.fileno(), write_fd)
        argv = [sys.executable, "-m", "demo.worker", "--fd", str(fds[0]), "--ready-fd", str(fds[1])]
        try:
            self._process = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=self._env,
                pass_fds=fds,
                start_new_session=True,
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - prctl has no other entry point
            )
        finally:
            os.close(write_fd)
            self._sock.close()
        self._ready_fd = read_fd

    def wait_ready(self, deadline: float) -> None:
        """Block until the worker accepts connections; raise if it exits or takes too long."""
        try:
            ready, _, _ = select.select(
                [self._ready_fd], [], [], max(0.0, deadline - time.monotonic())
            )
            line = os.read(self._ready_fd, 64) if ready else None
        finally:
            os.close(self._ready_fd)
        if line is None:
            raise LaunchError(
                f"worker {self.pid} did not start within {WORKER_READY_TIMEOUT_S:g} s"
            )
        if not line:
            code = self._process.wait() if self._process else None
            raise LaunchError(f"worker {self.pid} exited with status {code} while starting")

    def terminate(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()

    def stop(self, timeout_s: float = WORKER_STOP_TIMEOUT_S) -> None:
        """SIGTERM (uvicorn closes its sockets gracefully), SIGKILL after ``timeout_s``."""
        if self._process is None:
            return
        self.terminate()
        try:
            self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
