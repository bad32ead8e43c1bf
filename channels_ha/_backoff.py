"""Reconnect delays: exponential, capped, and cut short when a failover is announced."""

from __future__ import annotations

import asyncio

from ._constants import RECONNECT_BACKOFF_FACTOR, RECONNECT_BACKOFF_FIRST_S, RECONNECT_BACKOFF_MAX_S


class Backoff:
    """Waits between connection attempts; :meth:`nudge` ends the current wait at once.

    While a master is down, attempts back off to one every ``RECONNECT_BACKOFF_MAX_S``; the
    sentinels' ``+switch-master`` announcement nudges every waiting connection, so traffic
    moves to the new master without waiting for the next scheduled attempt.
    """

    def __init__(self) -> None:
        self._delay_s = RECONNECT_BACKOFF_FIRST_S
        self._nudged = asyncio.Event()

    async def wait(self) -> None:
        waiting = asyncio.ensure_future(self._nudged.wait())
        try:
            await asyncio.wait({waiting}, timeout=self._delay_s)
        finally:
            waiting.cancel()
        self._nudged.clear()
        self._delay_s = min(self._delay_s * RECONNECT_BACKOFF_FACTOR, RECONNECT_BACKOFF_MAX_S)

    def reset(self) -> None:
        self._delay_s = RECONNECT_BACKOFF_FIRST_S

    def nudge(self) -> None:
        self._nudged.set()
