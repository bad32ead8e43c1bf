"""One redis-server (or Sentinel) process on a fixed loopback port, and the faults it can suffer.

A node owns a directory holding its config file and its log. Its config file is written once;
Redis may rewrite it later (Sentinel records its state there, ``CONFIG REWRITE`` after a
failover records ``replicaof``), and a restarted node reads the rewritten file, as a real
server restarted by its supervisor would.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..exceptions import SandboxError, SandboxPortTaken
from ._certs import TLSFiles
from ._defaults import (
    HOST,
    LOG_TAIL_LINES,
    NODE_START_TIMEOUT_S,
    NODE_STOP_TIMEOUT_S,
    OBSERVE_SOCKET_TIMEOUT_S,
)
from ._ops import Op, await_until, wait_until
from ._spawn import Process, redis_server_path, spawn

#: One config directive: its name followed by its arguments.
Directive = tuple[str, ...]

#: What redis-server logs (then exits) when its port or cluster bus port is taken.
_PORT_TAKEN = "Address already in use"


class RedisNode:
    """A redis-server process: start, stop, and the faults tests inject into it."""

    def __init__(
        self,
        name: str,
        port: int,
        directory: Path,
        config: Sequence[Directive],
        *,
        sentinel: bool = False,
        tls: TLSFiles | None = None,
        password: str | None = None,
    ) -> None:
        self.name = name
        self.host = HOST
        self.port = port
        self.directory = directory
        self.is_sentinel = sentinel
        self.tls = tls
        self.password = password
        self.conf_path = directory / ("sentinel.conf" if sentinel else "redis.conf")
        self.log_path = directory / "redis.log"
        self._config = tuple(config)
        self._process: Process | None = None
        self._paused = False

    def __repr__(self) -> str:
        return f"<RedisNode {self.name} {self.host}:{self.port} pid={self.pid}>"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def pid(self) -> int | None:
        """The process id while the process runs (paused or not), else ``None``."""
        return self._process.pid if self.running and self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def paused(self) -> bool:
        return self.running and self._paused

    # -- lifecycle -------------------------------------------------------------------------

    def spawn(self) -> None:
        """Start the process without waiting for it to listen."""
        if self.running:
            raise SandboxError(f"{self.name} is already running (pid {self.pid})")
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.conf_path.exists():
            self.conf_path.write_text(render_config(self._config))
        argv = [redis_server_path(), str(self.conf_path)]
        with self.log_path.open("ab") as log:
            self._process = spawn(
                [*argv, "--sentinel"] if self.is_sentinel else argv, self.directory, log
            )
        self._paused = False

    def start(self, timeout_s: float = NODE_START_TIMEOUT_S) -> None:
        """Start the process and wait until it answers PING."""
        self.spawn()
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = NODE_START_TIMEOUT_S) -> None:
        """Block until the node answers PING; raise with its log tail if it does not."""
        with self._log_on_error():
            wait_until(self._ready_check, f"{self.name} to answer PING", timeout_s)

    async def await_ready(self, timeout_s: float = NODE_START_TIMEOUT_S) -> None:
        """Asyncio twin of :meth:`wait_ready`."""
        with self._log_on_error():
            await await_until(self._ready_check, f"{self.name} to answer PING", timeout_s)

    @contextmanager
    def _log_on_error(self) -> Iterator[None]:
        """Add the log tail to a timeout (an exit already carries it)."""
        try:
            yield
        except SandboxError as err:
            if not self.running:
                raise
            tail = f"last lines of {self.log_path}:\n{self.log_tail()}"
            raise SandboxError(f"{err}\n{tail}") from err

    def _ready_check(self) -> Op[str | None]:
        self.raise_if_exited()
        (reply,) = yield [(self, ("PING",))]
        return None if reply == "PONG" else f"PING answered {reply!r}"

    def raise_if_exited(self) -> None:
        """Raise ``SandboxError`` with the log tail if the process was started and has exited."""
        if self._process is None or self._process.poll() is None:
            return
        tail = self.log_tail()
        error = SandboxPortTaken if _PORT_TAKEN in tail else SandboxError
        raise error(
            f"{self.name} ({self.host}:{self.port}) exited with status "
            f"{self._process.returncode}; last lines of {self.log_path}:\n{tail}"
        )

    def terminate(self) -> None:
        """Ask the process to exit (SIGCONT first: a stopped process would not act on SIGTERM)."""
        if self.running and self._process is not None:
            self._process.send_signal(signal.SIGCONT)
            self._process.terminate()

    def stop(self, timeout_s: float = NODE_STOP_TIMEOUT_S) -> None:
        """Stop the process: SIGTERM, then SIGKILL after ``timeout_s``. Idempotent."""
        self.terminate()
        if self._process is None:
            return
        try:
            self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    # -- faults ----------------------------------------------------------------------------

    def kill(self) -> None:
        """Kill the process with SIGKILL (a crash: no shutdown, no goodbye to peers)."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()

    def pause(self) -> None:
        """Freeze the process with SIGSTOP: its sockets stay open but it answers nothing."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Thaw a paused process with SIGCONT."""
        self._signal(signal.SIGCONT)
        self._paused = False

    def restart_empty(self, timeout_s: float = NODE_START_TIMEOUT_S) -> None:
        """Crash the node and start it again on the same port, its dataset gone."""
        self._respawn_empty()
        self.wait_ready(timeout_s)

    async def arestart_empty(self, timeout_s: float = NODE_START_TIMEOUT_S) -> None:
        """Asyncio twin of :meth:`restart_empty`."""
        self._respawn_empty()
        await self.await_ready(timeout_s)

    def _respawn_empty(self) -> None:
        self.kill()
        for name in ("dump.rdb", "appendonly.aof"):
            (self.directory / name).unlink(missing_ok=True)
        self.spawn()

    def _signal(self, signum: signal.Signals) -> None:
        if not self.running or self._process is None:
            raise SandboxError(f"{self.name} is not running; cannot send {signum.name}")
        os.kill(self._process.pid, signum)

    # -- clients ---------------------------------------------------------------------------

    def connection_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a redis-py client of this node (TLS and password included)."""
        kwargs: dict[str, Any] = {"host": self.host, "port": self.port}
        if self.password is not None:
            kwargs["password"] = self.password
        if self.tls is not None:
            kwargs.update(ssl=True, ssl_ca_certs=str(self.tls.ca_cert))
        return kwargs

    def client(self, **overrides: Any) -> redis.Redis:
        """A blocking redis-py client of this node; the caller closes it."""
        return redis.Redis(**{**self.connection_kwargs(), **overrides})

    def async_client(self, **overrides: Any) -> redis.asyncio.Redis:
        """An asyncio redis-py client of this node; the caller closes it with ``aclose()``."""
        return redis.asyncio.Redis(**{**self.connection_kwargs(), **overrides})

    def observer_client(self) -> redis.Redis:
        """A client for checks: short timeouts, no retries, so a dead node fails fast.

        Its replies are raw (no redis-py response callbacks): the sandbox parses them itself,
        the same way whatever the redis-py version.
        """
        client = self.client(**_OBSERVER_KWARGS, retry=Retry(NoBackoff(), 0))
        client.response_callbacks.clear()
        return client

    def async_observer_client(self) -> redis.asyncio.Redis:
        """Asyncio twin of :meth:`observer_client`."""
        client = self.async_client(**_OBSERVER_KWARGS, retry=AsyncRetry(NoBackoff(), 0))
        client.response_callbacks.clear()
        return client

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the node's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as err:
            return f"(log unreadable: {err})"
        return "\n".join(text.splitlines()[-lines:])


_OBSERVER_KWARGS: dict[str, Any] = {
    "protocol": 2,  # one reply shape to parse, whatever redis-py's default protocol
    "socket_timeout": OBSERVE_SOCKET_TIMEOUT_S,
    "socket_connect_timeout": OBSERVE_SOCKET_TIMEOUT_S,
    "decode_responses": True,
}


def render_config(directives: Sequence[Directive]) -> str:
    """Render directives as a redis.conf, quoting every argument."""
    return "".join(" ".join([name, *map(_quote, args)]) + "\n" for name, *args in directives)


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
