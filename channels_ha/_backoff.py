"""Reconnect delays: exponential, capped, and cut short when a failover is announced."""

from __future__ import annotations

import asyncio
import time

from ._constants import RECONNECT_BACKOFF_FACTOR, RECONNECT_BACKOFF_FIRST_S, RECONNECT_BACKOFF_MAX_S

WAITING_LOG_INTERVAL_S = 5.0  # one line per outage, then a reminder this often


class Backoff:
    """Waits between connection attempts; :meth:`nudge` ends the current wait at once.

    While a master is down, attempts back off to one every ``RECONNECT_BACKOFF_MAX_S``; the
    sentinels' ``+switch-master`` announcement nudges every waiting connection, so traffic
    moves to the new master without waiting for the next scheduled attempt.
    """

    def __init__(self, max_s: float = RECONNECT_BACKOFF_MAX_S) -> None:
        self._max_s = max_s
        self._delay_s = RECONNECT_BACKOFF_FIRST_S
        self._nudged = asyncio.Event()
        self._reported_at: float | None = None

    async def wait(self) -> None:
        waiting = asyncio.ensure_future(self._nudged.wait())
        try:
            await asyncio.wait({waiting}, timeout=self._delay_s)
        finally:
            waiting.cancel()
        self._nudged.clear()
        self._delay_s = min(self._delay_s * RECONNECT_BACKOFF_FACTOR, self._max_s)

    def reset(self) -> None:
        self._delay_s = RECONNECT_BACKOFF_FIRST_S
        self._reported_at = None

    def report_due(self) -> bool:
        """Whether this retry deserves a log line: every connection of every process retries
        several times a second during a failover, which would drown the events that matter."""
        now = time.monotonic()
        if self._reported_at is not None and now - self._reported_at < WAITING_LOG_INTERVAL_S:
            return False
        self._reported_at = now
        return True

    def nudge(self) -> None:
        self._nudged.set()
