"""What an event loop closed without shutting down leaves of the layer, cleared when found.

``loop.run_until_complete(layer.send(...))`` then ``loop.close()`` (no ``asyncio.run``, no
``shutdown_asyncgens``) ends a loop without cancelling its tasks, so the session's own end
never runs: nothing of the loop can run again. Its tasks stay pending and asyncio logs each
as it is collected (``ERROR asyncio: Task was destroyed but it is pending!``: 200 for 200
such loops), and its sockets stay open, Redis clients until the garbage collector finds them
(with a ``ResourceWarning`` each); a reader's coroutine, closed when collected, ran its
``finally`` clause (it awaits: "Exception ignored"; the reader now skips it on a closed
loop). The layer prunes such a session when it next opens one (``_layer``); this is what the
prune does to its tasks and sockets.

asyncio has no public way to either: a task's ``_log_destroy_pending`` is what asyncio itself
clears for a task it knows may be destroyed pending, and a transport's ``abort()`` stops
short of closing its socket on a closed loop (it schedules that with ``call_soon``, which
raises ``Event loop is closed``), so the socket is closed here. Other event loops' transports
(uvloop's) keep theirs until collected.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import threading
import weakref
from typing import Any

__all__ = ["forget_connection", "quiet_dead_loop", "track_connection"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__))

# Every open transport of the layer's connections, with its loop, to close what a closed
# loop stranded. Added and removed per connection, not per message; loops run in threads.
_OPEN: weakref.WeakKeyDictionary[Any, tuple[asyncio.AbstractEventLoop, Any]] = (
    weakref.WeakKeyDictionary()
)
_LOCK = threading.Lock()


def track_connection(owner: object, loop: asyncio.AbstractEventLoop, transport: Any) -> None:
    """``owner`` (a protocol) holds ``transport`` on ``loop`` until :func:`forget_connection`."""
    with _LOCK:
        _OPEN[owner] = (loop, transport)


def forget_connection(owner: object) -> None:
    with _LOCK:
        _OPEN.pop(owner, None)


def quiet_dead_loop(loop: asyncio.AbstractEventLoop) -> int:
    """For a closed ``loop``: its layer tasks are not logged as destroyed pending (those not
    started are closed: they would warn "never awaited"), the layer's sockets on it are
    closed. Returns how many sockets."""
    for task in asyncio.all_tasks(loop):
        if _is_ours(task):
            task._log_destroy_pending = False  # type: ignore[attr-defined]
            coroutine = task.get_coro()
            if inspect.getcoroutinestate(coroutine) == inspect.CORO_CREATED:  # type: ignore[arg-type]
                coroutine.close()  # never started: runs nothing, and is not "never awaited"
    with _LOCK:
        stranded = [(owner, transport) for owner, (on, transport) in _OPEN.items() if on is loop]
        for owner, _ in stranded:
            del _OPEN[owner]
    for _, transport in stranded:
        _close_socket(transport)
    return len(stranded)


def _is_ours(task: asyncio.Task[Any]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and os.path.dirname(code.co_filename) == _PACKAGE


def _close_socket(transport: Any) -> None:
    """Closes the socket of an asyncio transport whose loop is closed (TLS: the one below)."""
    below = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
    with contextlib.suppress(RuntimeError):  # "Event loop is closed", once unregistered
        transport.abort()
    holder = below if below is not None else transport
    sock = getattr(holder, "_sock", None)
    if sock is not None:
        sock.close()
        holder._sock = None  # what asyncio's connection_lost would have done
