"""Log lines about a repeating problem: the first at once, then at most one per interval.

A fault that recurs on every message or every upkeep tick would otherwise write a line (and a
traceback) each time, drowning the events that matter.
"""

from __future__ import annotations

import time


class LogThrottle:
    """Per topic: whether a line is due now, and how many occurrences it stands for."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._logged_at: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def due(self, topic: str = "") -> int:
        """Counts one occurrence; returns how many a line now should report (0: stay quiet)."""
        count = self._unlogged.get(topic, 0) + 1
        now = time.monotonic()
        last = self._logged_at.get(topic)
        if last is not None and now - last < self._interval_s:
            self._unlogged[topic] = count
            return 0
        self._logged_at[topic] = now
        self._unlogged[topic] = 0
        return count
