"""The launcher's control socket: how workers ask for the sandbox's status or a master kill.

The launcher owns the sandbox processes (it started them, it restarts them), so the workers
do not signal them themselves: they send one JSON line, ``{"command": "status"}`` or
``{"command": "kill-master"}``, on a Unix socket in the launcher's private directory, and
read one JSON line back, ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

REQUEST_TIMEOUT_S = 3.0
MAX_LINE_BYTES = 64 * 1024

Handler = Callable[[], dict[str, Any]]

logger = logging.getLogger(__name__)


class ControlError(Exception):
    """The launcher could not be asked, or refused the command (the message says which)."""


async def request(path: str, command: str, timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
    """Send ``command`` to the launcher listening on ``path``; return its reply."""
    try:
        line = await asyncio.wait_for(_exchange(path, command), timeout_s)
    except (OSError, asyncio.TimeoutError) as err:
        raise ControlError(f"the demo launcher does not answer: {err or 'timed out'}") from err
    if not line:
        raise ControlError("the demo launcher closed the connection without answering")
    reply: dict[str, Any] = json.loads(line)
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "refused")))
    return reply


async def _exchange(path: str, command: str) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path, limit=MAX_LINE_BYTES)
    try:
        writer.write(json.dumps({"command": command}).encode() + b"\n")
        return await reader.readline()
    finally:
        writer.close()


class ControlServer:
    """Answers commands on a Unix socket from a thread of its own until :meth:`stop`."""

    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self._server = _Server(str(path), _RequestHandler)
        self._server.handlers = handlers
        path.chmod(0o600)  # only this user's processes may kill the master
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="demo-control", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop answering, wait for the thread, remove the socket. Idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
        self.path.unlink(missing_ok=True)


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    handlers: dict[str, Handler]


class _RequestHandler(socketserver.StreamRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_S

    def handle(self) -> None:
        try:
            command = json.loads(self.rfile.readline(MAX_LINE_BYTES)).get("command")
            handler = self.server.handlers.get(command)
            if handler is None:
                raise ControlError(f"unknown command {command!r}")
            reply = {"ok": True, **handler()}
        except (ControlError, ValueError, AttributeError) as err:
            reply = {"ok": False, "error": str(err)}
        except Exception as err:  # a bug in a handler: answer, log, keep serving
            logger.exception("control command failed")
            reply = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        self.wfile.write(json.dumps(reply).encode() + b"\n")
