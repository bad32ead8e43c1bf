"""A timeout that never loses a cancellation.

On Python < 3.12, ``asyncio.wait_for`` returns the inner result instead of raising when the
task is cancelled at the moment the inner future completes; a cancelled reader would then
carry on forever. Every bounded wait in channels-ha goes through :func:`within` instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], timeout_s: float) -> T:
    """Awaits ``awaitable`` for at most ``timeout_s``; raises ``asyncio.TimeoutError`` after.

    On timeout or cancellation the inner awaitable is cancelled (wrap it in
    ``asyncio.shield`` to keep it running).
    """
    inner = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({inner}, timeout=timeout_s)
    except asyncio.CancelledError:
        _abandon(inner)
        raise
    if not done:
        _abandon(inner)
        raise asyncio.TimeoutError
    return inner.result()


def _abandon(inner: asyncio.Future[T]) -> None:
    """Cancels ``inner``; an error it ends with anyway is read, not reported as unretrieved."""
    inner.cancel()
    inner.add_done_callback(lambda done: done.cancelled() or done.exception())
