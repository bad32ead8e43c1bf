"""The reader of normal channels: pops acknowledged by the next pop, so that none is lost.

A normal channel's message popped by a request whose reply never arrives (the connection
cut, the master killed after replicating the pop) would be lost: Redis removed it, and the
server-side de-duplication refuses the sender's writing it again. So the reader pops with
POP_NORMAL, which also keeps the batch in the reader's in-flight list until the reader's
next pop, and the first pop on every new connection recovers that list instead of popping.
What a recovery brings is handed over minus what this reader already handed over:

- reply lost (the pop replicated, or no failover): the batch comes back, delivered once;
- reply received, connection lost before the next pop: the batch is one handed over, not
  delivered again;
- the pop not replicated to a new master: the in-flight list there holds an older batch,
  handed over already (and the newer one is still in its list, popped again; the process's
  delivery marks drop it as a copy);
- a batch given back (``GiveBack.return_to_redis``) is back in its list under a new
  identity: the copy in the in-flight list was handed over, and is not delivered again.

Behind this memory, the process's delivery marks drop a copy all the same (counted as a
duplicate) should a recovered element be older than the memory reaches.

A recovery must not wait for a receiver: the one that waited may have given up (a timeout
cancelling its receive()), and none may come again before the list expires, or before the
layer closes. So a lost reply makes the reader connect again and recover at once (lost
again in a row, after a pause: ``_lost_replies``), nobody waiting or not, and hand over
what it recovers as usual: what nobody here waits for is given back to the head of its list
(``GiveBack.return_stranded``). With no master, it
tries again less and less often until the list has expired (``_idle_recovery``). At close,
the reader recovers what a lost reply left, then deletes its in-flight list (all of it
handed over).

A script cannot block; with nothing to pop, the reader waits with ``XREAD BLOCK`` on the
channels' wake streams, after the ids POP_NORMAL returned (a push in between is not missed),
and pops again when it returns. Readers competing in several processes all wake; one pops.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import Any

from ._constants import (
    BLOCKING_POP_TIMEOUT_S,
    IDLE_RECOVERY_PAUSE_MAX_S,
)
from ._idle_recovery import IdleRecovery
from ._in_flight import HandedOver, log_expired, log_not_released
from ._keys import wake_stream
from ._lost_replies import Sent
from ._reader import BlockingReader, some_keys
from ._resp import FutureSink, pack
from ._scripts import POP_NORMAL
from ._server import REDIRECT_ERRORS, RETRY_ERRORS
from .exceptions import ConnectionLost, RedisCommandError, RedisUnavailable

logger = logging.getLogger("channels_ha.reader")

_EMPTY, _POPPED, _RECOVERED, _REFUSED = 0, 1, 2, 3  # POP_NORMAL's reply tags
_BLOCK_MS = int(BLOCKING_POP_TIMEOUT_S * 1000)
_MAX_RELEASE_CALLS = 4  # at close: a recovery and a deletion, each again after a lost reply


class _State(enum.Enum):
    """What a normal-channel reader knows of its last pop (see NormalReader)."""

    ACKED = "acked"
    FRESH = "fresh"
    POPPING = "popping"
    RECOVERING = "recovering"
    LOST = "lost"
    OVERDUE = "overdue"


# Module names for the members: the hot path compares by identity, no attribute lookups.
_ACKED, _FRESH, _POPPING = _State.ACKED, _State.FRESH, _State.POPPING
_RECOVERING, _LOST, _OVERDUE = _State.RECOVERING, _State.LOST, _State.OVERDUE


class NormalReader(BlockingReader):
    """Pops normal channels with POP_NORMAL and waits on their wake streams.

    What the reader knows of its last pop is one state, ``_state``: it decides the next
    request, what close() does, and whether a give-back waits.

    - ACKED: its reply was handed over, or Redis refused the pop (which took nothing). The
      in-flight list holds nothing, or a batch handed over (``_held``: deleted at close).
      The next request is a plain pop, which acknowledges that batch (or, after an empty
      pop, the XREAD on the wake streams; at close, the deletion).
    - FRESH: as ACKED, on a new connection or after a write-off. Its first pop recovers
      all the same: a master that missed the last pops may hold an older batch there, and
      a receiver's recovery whose reply was cut may have filled the list anew after the
      window (``_handed`` filters what was handed over).
      Nothing is owed before it: it pops as a plain pop does if the list holds nothing.
    - POPPING: a pop is out, a plain one or FRESH's recovery (or its reply was never read:
      its connection closed before it went out, or close() collected a refusal; the next
      request recovers).
    - RECOVERING: a recovery is out or due, no reply known lost: after a pop whose reply
      was never read, or one Redis refused as no master (READONLY), made again.
    - LOST: the connection of a pop or recovery went before its reply: the batch may be in
      the in-flight list only. Recovered at once, nobody waiting or not, and at close; a
      give-back waits for it (``settled()``), lest it go back behind that batch.
    - OVERDUE: LOST, its window closed (``_idle``: from the first lost pop, which a
      recovery does not extend) at a request, a receiver's (with nobody waiting, the window
      closing writes LOST off). The batch may be there all the same: a receiver's recovery
      cut since may have found the list empty (that pop took nothing, or a new master never
      had it) and popped a new batch into it, which outlives the window. So a last recovery
      goes, and its reply says whether the batch was lost: one brought back was not. As
      LOST otherwise, with a window of its own.

    Transitions. A new connection: ACKED becomes FRESH. A request: ACKED becomes POPPING
    (the deletion at close leaves it ACKED: it pops nothing); FRESH recovers and becomes
    POPPING (with no channel to pop, at close, it stays FRESH: it pops nothing, so a
    refusal or a lost reply loses nothing); any other state recovers, LOST and OVERDUE
    staying and the rest becoming RECOVERING; with its window closed, LOST becomes OVERDUE
    and the others are written off, the recovery popping then as FRESH's does (on a list
    expired, a recovery is a plain pop). A reply handed over: ACKED, from any state (LOST
    or OVERDUE past the window, bringing nothing back: logged as lost). A refused
    request: POPPING and FRESH become ACKED (an XREAD or the deletion refused leaves
    ACKED), RECOVERING, LOST and OVERDUE stay (see ``_on_error``). A connection lost
    before the reply: POPPING and RECOVERING become LOST; OVERDUE is logged as lost (what
    its reply said is unknown), then becomes LOST if it could pop a new batch (a receiver's),
    else is written off. The window closed, looked at with nobody waiting or at close:
    POPPING, RECOVERING, LOST and OVERDUE are written off, FRESH (LOST and OVERDUE logged).

    Kept apart, as not of this machine: ``_idle``, when those four are recovered with
    nobody waiting (until the list expires, not after a refusal, paced while no
    master answers unless a give-back waits for the batch: ``_idle_recovery``); ``_held``,
    what the list holds; ``_wake_after``, the ids the next XREAD waits after.
    """

    _loads_scripts = True

    def __init__(self, *, in_flight: str, in_flight_ttl_ms: int, **options: Any) -> None:
        super().__init__(**options)
        self._in_flight = in_flight
        self._in_flight_ttl_ms = in_flight_ttl_ms
        self._state = _FRESH
        self._held = False  # the in-flight list may hold a batch (deleted at close)
        self._idle = IdleRecovery(in_flight_ttl_ms / 1000)
        self._look: asyncio.TimerHandle | None = None  # the next look of the idle recovery
        self._wake_after: tuple[list[str], list[bytes]] | None = None  # after an empty pop
        self._packed_keys: list[str] | None = None  # those of _packed_pop
        self._handed = HandedOver()
        self._recovered: asyncio.Future[None] | None = None  # see settled()
        self._given_back = 0  # give-backs waiting for the recovery (see settled())
        self._emptied = False  # the in-flight list's release at close is over (see _release)

    def _connected(self) -> None:
        if self._state is _ACKED:
            self._state = _FRESH
        self._wake_after = None  # ids of another server run, perhaps: pop first
        self._idle.retry_now()  # (a recovery owed goes out over it at once)

    def _request(self, keys: list[str]) -> bytes:
        wake_after, self._wake_after = self._wake_after, None
        if wake_after is not None and wake_after[0] == keys:
            self._pops = False
            streams = [wake_stream(key) for key in keys]
            return pack("XREAD", "BLOCK", _BLOCK_MS, "STREAMS", *streams, *wake_after[1])
        self._pops = True
        if self._state is not _ACKED:
            return self._recovery(keys)
        if keys:  # (none: the deletion at close, which pops nothing, so owes nothing)
            self._state = _POPPING
        if keys != self._packed_keys:  # encoded once per key set
            self._packed_pop, self._packed_keys = self._pop_request(keys, recover=False), keys
        return self._packed_pop

    def _recovery(self, keys: list[str]) -> bytes:
        if keys:  # a receiver's: whatever Redis refused before, attempts may follow again
            self._idle.lift()
        if self._state is not _FRESH and self._idle.expired(time.monotonic()):
            self._window_closed()
        state = self._state
        if state is _FRESH or state is _ACKED:  # nothing owed: a pop's stakes, if it pops
            if keys:
                self._state = _POPPING
        elif state is _POPPING or state is _RECOVERING:
            self._state = _RECOVERING
        return self._pop_request(keys, recover=True)

    def _window_closed(self) -> None:
        """Before a recovery, the window closed: looked at before each, not only with nobody
        waiting (``_idle_work``), lest a receiver waiting through recoveries cut each time
        meet the list gone, and the loss go unsaid. A LOST batch gets a last recovery
        (OVERDUE); anything else is written off. Either way the request stays a recovery:
        a plain pop would delete a batch that a cut recovery popped, still recoverable."""
        if self._state is _LOST:
            self._idle.settle()  # OVERDUE's window: from its first look
            self._state = _OVERDUE
        else:
            self._write_off()

    def _pop_request(self, keys: list[str], recover: bool) -> bytes:
        wakes = [wake_stream(key) for key in keys]
        args = (self._count, self._in_flight_ttl_ms, 1 if recover else 0)
        keys_count = 1 + 2 * len(keys)
        return pack("EVALSHA", POP_NORMAL.sha, keys_count, self._in_flight, *keys, *wakes, *args)

    def _hand_over(self, reply: object) -> None:
        if not self._pops or not isinstance(reply, list):
            return  # an XREAD's: entries, or nil (its time ran out, or wake() unblocked it)
        tag = reply[0]
        self._held = tag in (_POPPED, _RECOVERED)
        if tag == _POPPED:
            self._handed.remember(reply[2])
            self._hand_over_batch(reply[1], reply[2])
        elif tag == _RECOVERED:
            fresh = self._handed.unseen(reply[2])
            self._handed.remember(fresh)
            if fresh:
                self._hand_over_batch(reply[1], fresh)
        elif tag == _REFUSED:
            self._refused(reply[1], reply[2])
        elif self._pending_keys:  # (none: a recovery or a deletion with nobody waiting)
            self._wake_after = (self._pending_keys, reply[1])  # the keys of this pop
        if self._state is _POPPING:
            self._state = _ACKED  # (nothing else was owed: see _settle)
        else:
            if tag != _RECOVERED and self._past_window():
                self._say_lost()  # it found nothing: the list had expired, or held none
            self._settle()

    def _refused(self, key: bytes, error: bytes) -> None:
        """Redis refused the pop of one channel's list (a key of another type there): the
        pop took nothing; only that channel's receivers fail, the others' pop goes on."""
        err = RedisCommandError(error.decode(errors="replace"))
        self._last_error = err
        logger.error("Blocking pop of %s failed: %s", key.decode(errors="replace"), err)
        self._fail(err, key.decode())

    def _past_window(self) -> bool:
        """Whether a recovery came after the window: OVERDUE's, or LOST's whose window closed
        as it went (it reached Redis late)."""
        state = self._state
        return state is _OVERDUE or (state is _LOST and self._idle.expired(time.monotonic()))

    def _describe_request(self) -> str:
        if not self._pending_keys:
            return f"a recovery of the in-flight list {self._in_flight}"
        keys = some_keys(self._pending_keys)
        return f"a pop or recovery of {keys} (in-flight list {self._in_flight})"

    def _reply_lost(self, sent: Sent) -> None:
        state = self._state
        if state is _OVERDUE:
            self._overdue_lost(sent)
        elif state is _POPPING or state is _RECOVERING or state is _LOST:
            self._state = _LOST
            # A receiver's request could pop a new batch, but not in LOST: its window runs
            # from the batch owed, which the list holds until then. (Unless the list was
            # empty: then OVERDUE recovers what the request popped.)
            could_pop = bool(sent.keys) and state is not _LOST
            self._idle.lost(time.monotonic(), sent.at if could_pop else None)

    def _overdue_lost(self, sent: Sent) -> None:
        """The last recovery's reply was lost too: whether the batch owed was there is not
        known, so it is said lost (it may yet come back). A receiver's recovery may have
        popped a new batch, the list empty, owed as any (LOST, its window from now on);
        one with nobody waiting could not: nothing else is owed."""
        if not sent.keys:
            self._write_off(unsure=True)
            return
        self._say_lost(unsure=True)
        self._state = _LOST
        self._idle.lost(time.monotonic(), sent.at)

    def _settle(self) -> None:
        """Nothing is owed of the last pop: its reply was handed over, Redis refused it, or
        its in-flight list expired."""
        self._state = _ACKED
        self._idle.settle()
        self._wake_settled()
        if self._look is not None:
            self._look.cancel()
            self._look = None

    async def _on_error(self, err: RedisCommandError) -> None:
        state = self._state
        if state is _POPPING or state is _ACKED or state is _FRESH:
            self._settle()  # a pop refused took nothing: the last batch was handed over
        elif not self._pending_keys and not str(err).startswith(RETRY_ERRORS + REDIRECT_ERRORS):
            self._stop_idle_recovery()
        await super()._on_error(err)

    async def _not_connected(self, err: RedisUnavailable | RedisCommandError) -> None:
        if isinstance(err, RedisCommandError):  # a refused handshake, as a refused recovery
            self._stop_idle_recovery()
        await super()._not_connected(err)

    # -- a lost reply ----------------------------------------------------------------------

    def _stop_idle_recovery(self) -> None:
        """A recovery, or the handshake before it, was refused (NOPERM, NOAUTH, max clients):
        not again in a loop with nobody waiting; the next receiver's pop recovers."""
        if self._state is not _ACKED and self._state is not _FRESH:
            self._idle.refuse()
            self._wake_settled()

    def _idle_work(self) -> bool:
        """A recovery is owed: made now, nobody waiting or not, if ``_idle`` says it is due;
        else looked at again when it is, or when the in-flight list expires."""
        state = self._state
        if state is _ACKED or state is _FRESH:
            return False
        now = time.monotonic()
        if self._idle.expired(now):
            self._write_off()
            return False
        wait_s = self._idle.wait_s(now)
        if wait_s <= 0.0 or (self._given_back and self._idle.open(now)):
            return True  # (a give-back waiting: as soon as a master answers, see _reconnect)
        if self._look is not None:
            self._look.cancel()
        self._look = self._loop.call_later(wait_s, self._wanted.set)
        return False

    async def _reconnect(self, started: float) -> FutureSink:
        """With nobody waiting (a recovery owed), one attempt, paced by ``_idle``: no round
        of failover_timeout, and no gave_up, after another. For a receiver, a give-back
        waiting for the recovery (``settled()``), or at close, as any reader."""
        if self._stopping or self._keys() or self._given_back:
            return await super()._reconnect(started)
        switches = self._switches()
        try:
            return await self._connect_once()
        except ConnectionLost as err:
            self._last_error = err
            if self._keys():  # a receiver came meanwhile: it waits failover_timeout, as any
                return await super()._reconnect(time.monotonic())
            raise self._no_master(err, self._switches() != switches) from err

    def _switches(self) -> int:
        return self._announcements.switches if self._announcements else 0

    def _no_master(self, err: ConnectionLost, announced: bool) -> RedisUnavailable:
        """An attempt found no master: the next waits, unless a master was announced
        meanwhile (its nudge came too early); the first says so (then once a minute)."""
        now = time.monotonic()
        if not announced:
            self._idle.no_master(now)
        count = self._failure_log.due("recovery")
        if count:
            logger.warning(
                "No Redis master to recover a normal-channel batch whose pop reply was lost "
                "(%d attempt(s) since the last report): %s; trying again, at most %g s "
                "apart, until its in-flight list expires in %.0f s",
                count,
                err,
                IDLE_RECOVERY_PAUSE_MAX_S,
                self._idle.expires_in(now),
                extra={"event": "recovery_waiting"},
            )
        where = self._locator.describe()
        return RedisUnavailable(f"No Redis master on {where} to recover a batch: {err}")

    def _write_off(self, unsure: bool = False) -> None:
        """The window closed: the batch owed has expired with its list. FRESH, not ACKED:
        the next request still recovers, which on an expired list is a plain pop, and on
        one a receiver's cut recovery filled anew (the list was empty) brings that back,
        where a plain pop would delete it."""
        self._say_lost(unsure)
        self._held = False
        self._settle()
        self._state = _FRESH

    def _say_lost(self, unsure: bool = False) -> None:
        """The in-flight list expired: a batch whose reply was lost (LOST, OVERDUE) went with
        it; ``unsure``, unless OVERDUE's last recovery, its reply lost, still found it."""
        if self._state is _LOST or self._state is _OVERDUE:
            log_expired(self._in_flight, self._last_error, unsure)

    def nudge(self) -> None:
        super().nudge()
        if self._idle.retry_now() and self._task is not None:
            self._wanted.set()  # a recovery waiting for a master goes now

    async def settled(self, key: str) -> bool:
        """Also waits for the recovery of a lost pop's batch, which may hold newer messages
        of ``key`` than those buffered here: given back first, these would land behind it.
        Only for a reply lost: a pop merely in flight on other channels is not waited for
        (one refused, WRONGTYPE, would hold the give-back). Bounded by failover_timeout (the
        give-back needs the same master)."""
        if await super().settled(key):
            return True
        lost = self._state is _LOST or self._state is _OVERDUE
        if self._task is None or self._stopping or not lost:
            return False
        if not self._idle.open(time.monotonic()):
            return False
        if self._recovered is None:
            self._recovered = self._loop.create_future()
        self._given_back += 1  # the reader tries as for a receiver, not at its idle pace
        self._wanted.set()
        try:
            timeout_s = self._settings.failover_timeout_s
            done, _ = await asyncio.wait({self._recovered}, timeout=timeout_s)
        finally:
            self._given_back -= 1
        return bool(done)

    def _wake_settled(self) -> None:
        recovered, self._recovered = self._recovered, None
        if recovered is not None and not recovered.done():
            recovered.set_result(None)

    # -- closing -----------------------------------------------------------------------------

    async def _release(self) -> None:
        """At close: what a lost reply left in the in-flight list is recovered and handed
        over (the session gives back what nobody waits for), then the list, all of it handed
        over, is deleted rather than left until it expires. Only a recovery connects again.
        All of it within failover_timeout, as the session's give-backs at close; the readers
        of every shard close at once, so close() waits that once, not once per shard."""
        if self._look is not None:
            self._look.cancel()
            self._look = None
        if self._hurried:
            self._cut_short()
            return
        emptying = self._loop.create_task(self._empty_in_flight())
        try:
            await asyncio.wait({emptying}, timeout=self._settings.failover_timeout_s)
        finally:
            # Over by itself (done, or said why not) even if close() was cancelled meanwhile.
            self._emptied = emptying.done()
            emptying.cancel()  # (past failover_timeout, or close() itself cancelled)
            await asyncio.wait({emptying})  # it leaves no connection behind
            self._wake_settled()
        if not emptying.cancelled():
            emptying.result()  # (a bug, raised as it was before)
            return
        last = f"; last error: {self._last_error}" if self._last_error else ""
        timeout_s = self._settings.failover_timeout_s
        self._not_released(f"no master answered within failover_timeout ({timeout_s:g} s){last}")

    def _cut_short(self) -> None:
        """close() was cancelled (or the event loop shut down) before the recovery."""
        if not self._emptied:
            self._not_released("close() was cancelled")

    async def _empty_in_flight(self) -> None:
        pending = self._pending
        if pending is not None and not pending.done():  # unanswered at close
            self.drop_connection("closing with a pop unanswered")  # recovered on a new one
            # Its loss heard before anything else (the drop takes a loop turn): it decides
            # what is owed, and a request written meanwhile would go on the dying connection.
            await asyncio.wait({pending}, timeout=self._settings.reply_timeout_s)
        state = self._state
        owed = state is _LOST or state is _RECOVERING or state is _OVERDUE
        if owed and self._idle.expired(time.monotonic()):
            self._write_off()  # (nothing to recover: no master to wait for)
        try:
            for _ in range(_MAX_RELEASE_CALLS):
                if self._owes_nothing() and (not self._held or self._open_client() is None):
                    return  # (a deletion alone waits for no connection: the list expires anyway)
                await self._release_call()
        except (RedisUnavailable, RedisCommandError) as err:  # no master, or refused: as is
            self._not_released(str(err))
            return
        self._not_released(
            f"{_MAX_RELEASE_CALLS} calls made at close failed; the last: {self._last_error}"
        )

    def _owes_nothing(self) -> bool:
        return self._state is _ACKED or self._state is _FRESH

    async def _release_call(self) -> None:
        """A recovery (if a reply was lost), or else the deletion, its reply handed over."""
        client = self._open_client() or await self._connection()
        try:
            pending, replied = self._submit_pop(client, [])
        except ConnectionLost as err:  # closed before its loss reached us
            self._client, self._last_error = None, err
            return
        done, _ = await asyncio.wait({replied}, timeout=self._settings.reply_timeout_s)
        self._pending = None
        if done:
            await self._take_reply(pending)
        else:
            timeout_s = self._settings.reply_timeout_s
            reason = f"no reply at close to a call on the in-flight list within {timeout_s:g} s"
            self._last_error = ConnectionLost(reason)
            self.drop_connection(reason)
            self._client = None

    def _not_released(self, reason: str) -> None:
        log_not_released(self._in_flight, reason, owed=not self._owes_nothing())
