"""When a normal-channel reader goes after a lost pop's batch with nobody waiting.

The batch waits in the reader's in-flight list, which expires ``ttl`` after that pop at the
latest (a recovery does not extend it). So the reader tries at once and, while no master
answers, again after a pause that doubles (IDLE_RECOVERY_PAUSE_FIRST_S up to
IDLE_RECOVERY_PAUSE_MAX_S: a master back is found within that, one the sentinels announce at
once), until the list has expired: then nothing is left to recover. A refusal (NOPERM, a
refused handshake) stops the attempts, rather than repeat them in a loop, until a receiver's
pop, which recovers in any case. The window also tells a receiver's recovery that the list
has expired: the batch is then written off (and said lost), not found missing in silence.
"""

from __future__ import annotations

from ._constants import IDLE_RECOVERY_PAUSE_FIRST_S, IDLE_RECOVERY_PAUSE_MAX_S


class IdleRecovery:
    """The window (until the in-flight list has expired), whether Redis refused, and the
    pace of attempts while no master answers. Times are ``time.monotonic()``."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._until: float | None = None  # the list has expired by then
        self._refused = False
        self._retry_at = 0.0
        self._pause_s = IDLE_RECOVERY_PAUSE_FIRST_S

    def settle(self) -> None:
        """Nothing is owed any more."""
        self._until, self._refused = None, False
        self._retry_at, self._pause_s = 0.0, IDLE_RECOVERY_PAUSE_FIRST_S

    def lost(self, now: float, popped_at: float | None) -> None:
        """A reply was lost now. A request that could pop a new batch (on a receiver's
        channels), sent at ``popped_at``: what it took expires ttl after Redis ran it, so
        the window closes ttl after it was sent, never after the list has gone (a recovery
        then would find nothing, and the loss go unsaid); try at once. One that could not
        (a recovery of the batch owed, which the list still holds) left the list's expiry
        as it was, and goes again after a pause, as when no master answers: a reply cut
        each time (a client output buffer limit below the batch's size) would otherwise make
        a loop."""
        self._refused = False
        if popped_at is not None or self._until is None:
            opened_at = now if popped_at is None else popped_at
            self._until, self._retry_at = opened_at + self._ttl_s, 0.0
        else:
            self.no_master(now)

    def refuse(self) -> None:
        """Redis refused the recovery, or the connection: no attempts with nobody waiting."""
        self._refused = True

    def lift(self) -> None:
        """A receiver's pop recovers, refused before or not: attempts may follow it."""
        self._refused = False

    def expired(self, now: float) -> bool:
        """Whether the list has expired. A window that no lost reply opened (a recovery owed
        with no reply known lost) opens at the first look."""
        if self._until is None:
            self._until = now + self._ttl_s
        return now >= self._until

    def open(self, now: float) -> bool:
        """Whether an attempt is to come: not refused, and the list still there."""
        return not self.expired(now) and not self._refused

    def wait_s(self, now: float) -> float:
        """How long until the next attempt (0.0: now), or until the list expires, whichever
        comes first; refused, until it expires."""
        left_s = self.expires_in(now)
        if self._refused:
            return left_s
        return min(max(self._retry_at - now, 0.0), left_s)

    def expires_in(self, now: float) -> float:
        return max((self._until if self._until is not None else now + self._ttl_s) - now, 0.0)

    def no_master(self, now: float) -> None:
        """An attempt found no master: the next one after a pause, longer each time."""
        self._retry_at = now + self._pause_s
        self._pause_s = min(2 * self._pause_s, IDLE_RECOVERY_PAUSE_MAX_S)

    def retry_now(self) -> bool:
        """A master was announced, or a connection made: the next attempt is due at once.
        Whether one was waited for."""
        waited, self._retry_at = self._retry_at != 0.0, 0.0
        return waited
