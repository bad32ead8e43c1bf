"""Ending a reader's blocking request early: CLIENT UNBLOCK over another connection.

That connection can reach the server before the request it means (answering 0: nothing
blocked), as when keys change right after a pop was answered: CLIENT UNBLOCK is then sent
again, with a growing pause, for as long as that request is unanswered (at most the pop
limit, which the reader's watchdog enforces), rather than leaving it blocked for its timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ._constants import UNBLOCK_RETRY_FIRST_S, UNBLOCK_RETRY_MAX_S
from ._server import ServerInfo

# Sends CLIENT UNBLOCK for a reader connected to this server (None: cannot reach it now).
UnblockFn = Callable[[ServerInfo], "asyncio.Future[object] | None"]
Request = asyncio.Future[object]


def unblock(
    send: UnblockFn,
    server: ServerInfo,
    pending: Request,
    in_flight: Callable[[], Request | None],
    retry_in_s: float = UNBLOCK_RETRY_FIRST_S,
) -> None:
    """Ends ``pending``, the request in flight on ``server``, early; sent again while it is
    still the one ``in_flight()`` names, unanswered."""
    unblocked = send(server)
    if unblocked is None:
        return
    loop = asyncio.get_running_loop()

    def still_blocked() -> bool:
        return in_flight() is pending and not pending.done() and not loop.is_closed()

    def again() -> None:
        if still_blocked():
            next_s = min(2 * retry_in_s, UNBLOCK_RETRY_MAX_S)
            unblock(send, server, pending, in_flight, next_s)

    def answered(future: asyncio.Future[object]) -> None:
        if future.cancelled() or future.exception() is not None or future.result() != 0:
            return
        if still_blocked():
            loop.call_later(retry_in_s, again)

    unblocked.add_done_callback(answered)
