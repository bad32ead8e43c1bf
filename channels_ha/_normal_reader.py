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
- a batch given back (``Session._return_to_redis``) is back in its list under a new
  identity: the copy in the in-flight list was handed over, and is not delivered again.

Behind this memory, the process's delivery marks drop a copy all the same (counted as a
duplicate) should a recovered element be older than the memory reaches.

A recovery must not wait for a receiver: the one that waited may have given up (a timeout
cancelling its receive()), and none may come again before the list expires, or before the
layer closes. So a lost reply makes the reader connect again and recover at once, nobody
waiting or not, and hand over what it recovers as usual: what nobody here waits for is
given back to the head of its list (``Session._return_stranded``). At close, the reader
recovers what a lost reply left, then deletes its in-flight list (all of it handed over).

A script cannot block; with nothing to pop, the reader waits with ``XREAD BLOCK`` on the
channels' wake streams, after the ids POP_NORMAL returned (a push in between is not missed),
and pops again when it returns. Readers competing in several processes all wake; one pops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ._constants import (
    BLOCKING_POP_TIMEOUT_S,
    HANDED_OVER_REMEMBERED,
    HANDED_OVER_REMEMBERED_BYTES,
)
from ._keys import wake_stream
from ._reader import BlockingReader
from ._resp import FutureSink, pack
from ._scripts import POP_NORMAL
from ._server import REDIRECT_ERRORS, RETRY_ERRORS
from .exceptions import ConnectionLost, RedisCommandError, RedisUnavailable

logger = logging.getLogger("channels_ha.reader")

_EMPTY, _POPPED, _RECOVERED = 0, 1, 2  # POP_NORMAL's reply tags
_BLOCK_MS = int(BLOCKING_POP_TIMEOUT_S * 1000)
_MAX_RELEASE_CALLS = 4  # at close: a recovery and a deletion, each again after a lost reply


@dataclass(frozen=True)
class InFlight:
    """A normal-channel reader's in-flight list, and how long it outlives the last pop."""

    key: str
    ttl_ms: int


class NormalReader(BlockingReader):
    """Pops normal channels with POP_NORMAL and waits on their wake streams."""

    _loads_scripts = True

    def __init__(self, *, in_flight: str, in_flight_ttl_ms: int, **options: Any) -> None:
        super().__init__(**options)
        self._in_flight = in_flight
        self._in_flight_ttl_ms = in_flight_ttl_ms
        self._recover = True  # the next pop recovers: the first on its connection
        self._wake_after: tuple[list[str], list[bytes]] | None = None  # after an empty pop
        self._packed_keys: list[str] | None = None  # those of _packed_pop
        self._handed = _HandedOver()
        # The last pop's reply was handed over; False from its request until then, and after
        # it was lost: a recovery is owed, made with nobody waiting until _owed_until.
        self._answered = True
        self._lost = False  # that pop's connection went before its reply came (see settled())
        self._owed_until: float | None = None
        self._held = False  # the in-flight list may hold a batch (deleted at close)
        self._recovered: asyncio.Future[None] | None = None  # see settled()

    def _connected(self) -> None:
        self._recover = True
        self._wake_after = None  # ids of another server run, perhaps: pop first

    def _request(self, keys: list[str]) -> bytes:
        wake_after, self._wake_after = self._wake_after, None
        if wake_after is not None and wake_after[0] == keys:
            self._pops = False
            streams = [wake_stream(key) for key in keys]
            return pack("XREAD", "BLOCK", _BLOCK_MS, "STREAMS", *streams, *wake_after[1])
        self._pops = True
        if keys:  # should its reply be lost, it is recovered with nobody waiting, afresh
            self._owed_until = None
        if self._recover or not self._answered:  # (the latter: a reply not handed over)
            self._recover, self._answered = True, False
            return self._pop_request(keys, recover=True)
        self._answered = not keys  # (no keys: the deletion at close, which pops nothing)
        if keys != self._packed_keys:  # encoded once per key set
            self._packed_pop, self._packed_keys = self._pop_request(keys, recover=False), keys
        return self._packed_pop

    def _pop_request(self, keys: list[str], recover: bool) -> bytes:
        wakes = [wake_stream(key) for key in keys]
        args = (self._count, self._in_flight_ttl_ms, 1 if recover else 0)
        keys_count = 1 + 2 * len(keys)
        return pack("EVALSHA", POP_NORMAL.sha, keys_count, self._in_flight, *keys, *wakes, *args)

    def _hand_over(self, reply: object) -> None:
        if not self._pops or not isinstance(reply, list):
            return  # an XREAD's: entries, or nil (its time ran out, or wake() unblocked it)
        self._recover, self._held = False, reply[0] != _EMPTY
        if reply[0] == _POPPED:
            self._handed.remember(reply[2])
            self._hand_over_batch(reply[1], reply[2])
        elif reply[0] == _RECOVERED:
            fresh = self._handed.unseen(reply[2])
            self._handed.remember(fresh)
            if fresh:
                self._hand_over_batch(reply[1], fresh)
        elif self._pending_keys:  # (none: a recovery or a deletion with nobody waiting)
            self._wake_after = (self._pending_keys, reply[1])  # the keys of this pop
        self._settle()

    def _submit_pop(
        self, client: FutureSink, keys: list[str]
    ) -> tuple[asyncio.Future[object], asyncio.Future[None]]:
        pending, replied = super()._submit_pop(client, keys)
        if self._pops:
            pending.add_done_callback(self._note_loss)
        return pending, replied

    def _note_loss(self, pending: asyncio.Future[object]) -> None:
        """A pop unanswered when its connection went: its batch is owed (see settled())."""
        if self._answered or pending.cancelled():
            return
        if isinstance(pending.exception(), ConnectionLost):
            self._lost = True

    def _settle(self) -> None:
        """Nothing is owed of the last pop: its reply was handed over, or it was refused."""
        self._answered, self._lost, self._owed_until = True, False, None
        self._wake_settled()

    async def _on_error(self, err: RedisCommandError) -> None:
        if not self._recover:
            self._settle()  # a pop refused lost nothing: the last batch was handed over
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
        if not self._answered:
            self._owed_until = 0.0
            self._wake_settled()

    def _idle_work(self) -> bool:
        """A pop's reply was lost: recover its batch now, nobody waiting or not, for as long
        as the in-flight list lives (connecting again takes up to failover_timeout a time)."""
        if self._answered:
            return False
        now = time.monotonic()
        if self._owed_until is None:
            self._owed_until = now + self._in_flight_ttl_ms / 1000
        if now < self._owed_until:
            return True
        self._wake_settled()
        return False

    async def settled(self, key: str) -> bool:
        """Also waits for the recovery of a lost pop's batch, which may hold newer messages
        of ``key`` than those buffered here: given back first, these would land behind it.
        Only for a reply lost: a pop merely in flight on other channels is not waited for
        (one refused, WRONGTYPE, would hold the give-back). Bounded by failover_timeout (the
        give-back needs the same master)."""
        if await super().settled(key):
            return True
        if self._task is None or self._stopping or not (self._lost and self._idle_work()):
            return False
        if self._recovered is None:
            self._recovered = self._loop.create_future()
        done, _ = await asyncio.wait({self._recovered}, timeout=self._settings.failover_timeout_s)
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
        emptying = self._loop.create_task(self._empty_in_flight())
        try:
            await asyncio.wait({emptying}, timeout=self._settings.failover_timeout_s)
        finally:
            emptying.cancel()  # (past failover_timeout, or close() itself cancelled)
            await asyncio.wait({emptying})  # it leaves no connection behind
            self._wake_settled()
        if not emptying.cancelled():
            emptying.result()  # (a bug, raised as it was before)
            return
        last = f"; last error: {self._last_error}" if self._last_error else ""
        timeout_s = self._settings.failover_timeout_s
        self._not_released(f"no master answered within failover_timeout ({timeout_s:g} s){last}")

    async def _empty_in_flight(self) -> None:
        if self._pending is not None and not self._pending.done():  # unanswered at close
            self.drop_connection("closing with a pop unanswered")  # recovered on a new one
        try:
            for _ in range(_MAX_RELEASE_CALLS):
                if self._answered and (not self._held or self._open_client() is None):
                    return  # (a deletion alone waits for no connection: the list expires anyway)
                await self._release_call()
        except (RedisUnavailable, RedisCommandError) as err:  # no master, or refused: as is
            self._not_released(str(err))
            return
        self._not_released(
            f"{_MAX_RELEASE_CALLS} calls made at close failed; the last: {self._last_error}"
        )

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
        if self._answered:  # all of it handed over: the list expires by itself
            logger.info("Could not delete %s at close (%s)", self._in_flight, reason)
            return
        logger.error(
            "A batch popped from a normal channel whose reply was lost could not be "
            "recovered before close() (%s); it stays in %s until it expires, and is lost",
            reason,
            self._in_flight,
            extra={"event": "in_flight_lost"},
        )


class _HandedOver:
    """The elements handed over last: a bounded number, and bytes (the newest batch is kept
    whatever its size). Elements are unique: they carry their sender and sequence number."""

    def __init__(self) -> None:
        self._elements: deque[bytes] = deque()
        self._bytes = 0

    def remember(self, elements: list[bytes]) -> None:
        for element in elements:
            self._elements.append(element)
            self._bytes += len(element)
        kept = self._elements
        while len(kept) > max(HANDED_OVER_REMEMBERED, len(elements)) or (
            self._bytes > HANDED_OVER_REMEMBERED_BYTES and len(kept) > len(elements)
        ):
            self._bytes -= len(kept.popleft())

    def unseen(self, elements: list[bytes]) -> list[bytes]:
        return [element for element in elements if element not in self._elements]
