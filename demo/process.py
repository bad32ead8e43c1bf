"""The demo launcher as a child process, for the tests and the load test.

:class:`RunningDemo` starts ``python -m demo.run`` on a free port, collects its output on a
thread of its own, parses the URL and the pids it prints, and stops it with SIGTERM, the way
a user's Ctrl-C would, on :meth:`RunningDemo.stop` or when its ``with`` block ends.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO
from urllib.parse import urlencode

from .run import REDIS_VARIABLES
from .workers import REPO_ROOT

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
_URL = re.compile(r"Open (http://\S+/) ")
_NODE = re.compile(r"^\s+(redis|sentinel)-\d\s+\S+\s+pid (\d+)$")
_WORKERS = re.compile(r"workers: ((?:pid \d+(?:, )?)+)")


class RunningDemo:
    """``demo.run`` with its own database; the embedded sandbox unless ``redis_env`` is given."""

    def __init__(
        self,
        db: Path,
        *,
        layer: str = "channels_ha",
        redis_env: Mapping[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        env = {k: v for k, v in os.environ.items() if k not in REDIS_VARIABLES}
        self._env = {**env, **(redis_env or {}), "PYTHONUNBUFFERED": "1"}
        self._argv = [sys.executable, "-m", "demo.run", "--port", "0", "--db", str(db)]
        self._argv += ["--layer", layer, *extra_args]
        self._lines: list[str] = []
        self._ended = False  # the launcher closed its output
        self._changed = threading.Condition()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self.url = ""

    def start(self, timeout_s: float = START_TIMEOUT_S) -> RunningDemo:
        self._process = subprocess.Popen(
            self._argv, cwd=REPO_ROOT, env=self._env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self._reader = threading.Thread(
            target=self._read, args=(self._process.stdout,), name="demo-output", daemon=True
        )
        self._reader.start()
        try:
            self.url = self._wait_for_url(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self._lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def _wait_for_url(self, timeout_s: float) -> str:
        def found() -> str | None:
            return next((m[1] for m in map(_URL.search, self._lines) if m), None)

        with self._changed:
            self._changed.wait_for(lambda: found() or self._ended, timeout_s)
            url = found()
        if url is None:
            reason = "exited" if self._ended else f"printed no URL within {timeout_s:g} s"
            raise RuntimeError(f"the demo launcher {reason}; its output:\n{self.output}")
        return url

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self._lines)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def node_pids(self) -> list[int]:
        """The Redis and Sentinel processes the launcher said it started."""
        return [int(m[2]) for m in map(_NODE.match, self.output.splitlines()) if m]

    def worker_pids(self) -> list[int]:
        match = _WORKERS.search(self.output)
        return [int(pid) for pid in re.findall(r"\d+", match[1])] if match else []

    def ws_url(self, room: str, **query: str) -> str:
        return f"{self.url.replace('http://', 'ws://')}ws/rooms/{room}/?{urlencode(query)}"

    @property
    def origin(self) -> str:
        return self.url.rstrip("/")

    def stop(
        self, timeout_s: float = STOP_TIMEOUT_S, signum: signal.Signals = signal.SIGTERM
    ) -> int | None:
        """Ask the launcher to stop (SIGINT is Ctrl-C); SIGKILL after ``timeout_s``.

        Returns the launcher's exit status.
        """
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.send_signal(signum)
        try:
            code = self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()  # its workers and Redis die with it (PR_SET_PDEATHSIG)
            code = self._process.wait()
        if self._reader is not None:
            self._reader.join(timeout_s)
        if self._process.stdout is not None:
            self._process.stdout.close()
        return code

    def __enter__(self) -> RunningDemo:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
