"""Steps of a session's background upkeep, each guarded on its own.

A bug in one step must not stop the others, nor end the upkeep: memberships would lapse at
group_expiry, buffers would never be swept. Nor may it go unreported, or be reported at
every tick: a failure is logged at most once per interval per step, with how many times it
failed since, and the step runs again at the next tick.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from ._throttle import LogThrottle

logger = logging.getLogger("channels_ha.layer")


class UpkeepSteps:
    """The failures of one session's steps, throttled per step name."""

    def __init__(self, interval_s: float) -> None:
        self._failures = LogThrottle(interval_s)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        try:
            yield
        except Exception:  # cancellation (a BaseException) still ends the upkeep
            count = self._failures.due(name)
            if count:
                logger.error(
                    "Upkeep step %r of the channel layer failed (%d time(s) since the last "
                    "report); it runs again at the next tick",
                    name,
                    count,
                    exc_info=True,
                    extra={"event": "upkeep_failed", "step": name},
                )
