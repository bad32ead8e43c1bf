"""Giving back to Redis the messages this process popped and did not deliver.

A normal channel's message may reach the process after its receivers left (cancelled,
timed out), and a session may close with messages in its buffers. They belong to whichever
process receives next: each goes back to the head of its list, order kept, by a RETURN that
applies once however often it is written. One that fails is tried again at the next sweep.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from ._buffers import now_ms
from ._codec import expires_of
from ._constants import BUFFER_SWEEP_INTERVAL_S
from ._core import LayerCore
from ._delivery import Deliveries
from ._keys import wake_stream
from ._reader import BlockingReader
from ._recovery import log_failure
from ._resp import Arg
from ._scripts import RETURN
from ._shard import ShardConnections
from .exceptions import RedisCommandError, RedisUnavailable

logger = logging.getLogger("channels_ha.layer")

_MAX_SETTLE_ROUNDS = 3  # pops waited for before a give-back (see _pops_settled)

Return = tuple[int, str, list[bytes], str]  # shard, list, elements, return id


class GiveBack:
    """The give-backs of one session, and the tasks that run them."""

    def __init__(
        self,
        core: LayerCore,
        shards: list[ShardConnections],
        deliveries: Deliveries,
        readers: Mapping[tuple[int, bool], BlockingReader],  # (shard, specific) -> reader
        closed: Callable[[], bool],
    ) -> None:
        self.core = core
        self._closed = closed  # the session's: a hand-over then is the close's give-back
        self._shards = shards
        self._deliveries = deliveries
        self._readers = readers
        self.tasks: set[asyncio.Task[Any]] = set()
        self._unreturned: list[Return] = []  # RETURNs that failed, tried again at each sweep

    def return_stranded(self, channels: Iterable[str]) -> None:
        """Normal-channel messages that reached this process after its receivers left
        belong to whichever process receives next: put them back."""
        stranded = self._deliveries.stranded(channels)
        if stranded:
            self._spawn(self.return_to_redis(stranded))

    async def return_to_redis(self, channels: Iterable[str]) -> None:
        """Pushes buffered messages back to the head of their list, order kept.

        The channel's pops in flight are waited for first: what they bring is newer than the
        buffered messages and goes back with them, behind them. A RETURN of its own would put
        it at the head, in front of them. And until the RETURN is done, this process does not
        pop those channels again (``Deliveries.take_returnable``): a new receive() would take
        the next message ahead of the ones on their way back.
        """
        channels = list(channels)
        await self._pops_settled(channels)
        return_id = secrets.token_hex(8)  # the elements' sender, and their markers' name
        returned, gated = self._deliveries.take_returnable(channels, return_id)
        try:
            await self._give_back([(i, k, e, return_id) for (i, k), e in returned.items()])
        finally:
            self._deliveries.returned(gated)

    def hand_over(self, key: str, shard: int, done: Callable[[], None]) -> None:
        """Another event loop starts receiving the inbox ``key`` (see ``_handover``): the pop
        this loop may still have blocked on it ends, and what this loop popped of it goes
        back to its head, order kept; then ``done``, whatever happened."""
        if self._closed() or key in self._deliveries.inbox_waiting:
            done()  # closing gives everything back; receiving, it holds the inbox itself
            return
        self._deliveries.gate(key)  # its own receivers, back meanwhile, wait for it too
        task = self._spawn(self._hand_over(key, shard))
        task.add_done_callback(lambda _: self._handed_over(key, shard, done))

    async def _hand_over(self, key: str, shard: int) -> None:
        deliveries = self._deliveries
        reader = self._readers.get((shard, True))
        if reader is not None:
            reader.wake()  # its keys leave out the gated inbox: a pop blocked on it ends
            await reader.settled(key)  # what it brought is in the buffers now
        await self.return_to_redis(deliveries.holding(key))

    def _handed_over(self, key: str, shard: int, done: Callable[[], None]) -> None:
        self.open_inbox(key, shard)
        done()

    def open_inbox(self, key: str, shard: int) -> None:
        """A hand-over of ``key`` is over: this loop's receivers waiting there may pop it."""
        if self._deliveries.ungate(key):
            reader = self._readers.get((shard, True))
            if reader is not None:
                reader.wake()

    async def _pops_settled(self, channels: list[str]) -> None:
        """Waits, for each normal channel with messages to give back, until no pop in flight
        can bring more of it. Another pop covers it again only if a receiver waited there
        meanwhile, which took the buffered messages: a few rounds at most."""
        core = self.core
        for channel in channels:
            reader = (
                None if "!" in channel else self._readers.get((core.shard_index(channel), False))
            )
            if reader is None:
                continue
            key = core.keys.channel(channel)
            for _ in range(_MAX_SETTLE_ROUNDS):
                if not self._deliveries.stranded([channel]) or not await reader.settled(key):
                    break

    async def _give_back(self, returns: list[Return]) -> None:
        """RETURNs; one that fails (OOM, NOPERM, no master past failover_timeout) is kept
        and tried again at the next sweep, under the same id: if it did land after all, its
        marker makes the retry a no-op. Delivering it here instead could duplicate it."""
        try:
            results = await asyncio.gather(
                *(self.push_front(*each) for each in returns), return_exceptions=True
            )
        except asyncio.CancelledError:  # close() cancelled: kept, so that it is logged
            self._unreturned.extend(returns)
            raise
        for each, result in zip(returns, results, strict=True):
            if isinstance(result, (RedisCommandError, RedisUnavailable)):
                self._unreturned.append(each)
                logger.warning(
                    "Could not give %d message(s) back to %s (%s); trying again in %.0f s",
                    len(each[2]),
                    each[1],
                    result,
                    BUFFER_SWEEP_INTERVAL_S,
                    extra={"event": "return_failed"},
                )
            elif isinstance(result, BaseException):
                raise result

    def retry(self) -> None:
        """Tries again the RETURNs that failed, less the messages expired meanwhile."""
        fresh = self._unexpired()
        if fresh:
            self._spawn(self._give_back(fresh))

    def _unexpired(self) -> list[Return]:
        """The RETURNs that failed, taken, less their messages expired meanwhile (counted)."""
        failed, self._unreturned = self._unreturned, []
        now = now_ms()
        fresh = [
            (index, key, alive, return_id)
            for index, key, elements, return_id in failed
            if (alive := [e for e in elements if expires_of(e) > now])
        ]
        self.core.stats.expired += _messages(failed) - _messages(fresh)
        return fresh

    async def push_front(self, index: int, key: str, elements: list[bytes], return_id: str) -> None:
        """One RETURN: the list and its expiry in one step, and applied once however often
        the link writes it again after a lost reply."""
        core = self.core
        marker = core.keys.return_marker(key, return_id)
        keys = (key, marker) if core.keys.is_inbox(key) else (key, marker, wake_stream(key))
        args: list[Arg] = [core.expiry_ms, core.dedupe_ttl_ms, *elements]
        await self._shards[index].link.submit_script(RETURN, keys, args)
        logger.info("Returned %d undelivered messages to %s", len(elements), key)

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(log_failure)
        return task

    async def give_back_all(self, timeout_s: float) -> None:
        """At close: gives back what failed before and everything buffered, and lets the
        give-backs started by receivers that just left finish, within ``timeout_s``."""
        self.retry()
        await self.return_to_redis(self._deliveries.channels())
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=timeout_s)

    def unreturned(self) -> int:
        """Messages that failed to go back and are not expired yet."""
        return _messages(self._unexpired())

    async def stop(self) -> None:
        """Cancels what is still under way and logs what was not given back: nothing will
        try again."""
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(set(self.tasks))
        # What failed to go back, and what a cancelled close() left buffered.
        lost = _messages(self._unexpired()) + self._deliveries.discard()
        if lost:
            log_lost(
                lost, "could not be given back to Redis before close() (or close() was cancelled)"
            )


def _messages(returns: list[Return]) -> int:
    return sum(len(elements) for _, _, elements, _ in returns)


def log_lost(lost: int, why: str) -> None:
    """The one ``return_lost`` line: ``lost`` messages popped and not delivered, and ``why``."""
    logger.error(
        "%d message(s) popped and not delivered %s; they are lost",
        lost,
        why,
        extra={"event": "return_lost", "messages": lost},
    )
