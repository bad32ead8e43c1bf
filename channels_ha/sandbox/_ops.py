"""Sans-I/O operations on nodes, run by a blocking driver or an asyncio driver.

An operation is a generator that yields a batch of ``(node, command)`` calls and receives the
replies (an exception instance stands for a failed call). Writing each check and fault once as
a generator gives every blocking helper an asyncio twin that never blocks the event loop (tests
drive traffic while faults happen) without duplicating its logic.

Waits poll a check until it reports nothing missing, bounded by a deadline and a poll count.
Between polls they wait for the next Sentinel event (any pub/sub message from a sentinel) or a
short interval, whichever comes first, so a failover is noticed as soon as it is announced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis
import redis.asyncio
from redis.asyncio.client import PubSub as AsyncPubSub
from redis.client import PubSub

from ..exceptions import SandboxError
from ._defaults import POLL_INTERVAL_S

if TYPE_CHECKING:
    from ._process import RedisNode

T = TypeVar("T")
Command = tuple[str | int | float, ...]
Call = tuple["RedisNode", Command]
#: A decoded reply, or the ``RedisError``/``OSError`` instance the call raised.
Reply = Any
Op = Generator[Sequence[Call], list[Reply], T]
#: A check returns ``None`` when its condition holds, else a description of what is missing.
Check = Callable[[], Op[str | None]]

_FAILED = (redis.RedisError, OSError)

logger = logging.getLogger(__name__)


def run(op: Op[T], observer: SyncObserver | None = None) -> T:
    """Drive ``op`` to completion with blocking clients."""
    if observer is None:
        with SyncObserver() as fresh:
            return run(op, fresh)
    try:
        calls = next(op)
        while True:
            calls = op.send([observer.call(node, command) for node, command in calls])
    except StopIteration as done:
        result: T = done.value
        return result


async def arun(op: Op[T], observer: AsyncObserver | None = None) -> T:
    """Drive ``op`` to completion with asyncio clients, each batch's calls concurrently."""
    if observer is None:
        async with AsyncObserver() as fresh:
            return await arun(op, fresh)
    try:
        calls = next(op)
        while True:
            replies = await asyncio.gather(*(observer.call(node, cmd) for node, cmd in calls))
            calls = op.send(list(replies))
    except StopIteration as done:
        result: T = done.value
        return result


def wait_until(check: Check, what: str, timeout_s: float, events: RedisNode | None = None) -> None:
    """Block until ``check`` holds; raise ``SandboxError`` naming what is missing at timeout."""
    reason = "nothing was checked"
    with SyncObserver(events) as observer:
        for pause_s in _pauses(timeout_s):
            reason = _progress(what, reason, run(check(), observer))
            if not reason:
                return
            observer.wait_for_event(pause_s)
    raise _timed_out(what, timeout_s, reason)


async def await_until(
    check: Check, what: str, timeout_s: float, events: RedisNode | None = None
) -> None:
    """Asyncio twin of :func:`wait_until`."""
    reason = "nothing was checked"
    async with AsyncObserver(events) as observer:
        for pause_s in _pauses(timeout_s):
            reason = _progress(what, reason, await arun(check(), observer))
            if not reason:
                return
            await observer.wait_for_event(pause_s)
    raise _timed_out(what, timeout_s, reason)


def _progress(what: str, previous: str, reason: str | None) -> str:
    """Log what a wait is waiting for whenever that changes; ``""`` means done."""
    if reason and reason != previous:
        logger.debug("waiting for %s: %s", what, reason, extra={"sandbox_wait": what})
    return reason or ""


def _pauses(timeout_s: float) -> Iterator[float]:
    """Yield the pause after each poll until the deadline or the poll budget runs out."""
    deadline = time.monotonic() + timeout_s
    # Events can wake a wait early, so the count bound allows several polls per interval.
    for _ in range(int(timeout_s / POLL_INTERVAL_S) * 4 + 4):
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            return
        yield min(remaining_s, POLL_INTERVAL_S)


def _timed_out(what: str, timeout_s: float, reason: str) -> SandboxError:
    return SandboxError(f"timed out after {timeout_s:g}s waiting for {what}: {reason}")


class SyncObserver:
    """Blocking clients to nodes, one per node, plus an optional Sentinel event subscription."""

    def __init__(self, events: RedisNode | None = None) -> None:
        self._clients: dict[str, redis.Redis] = {}
        self._pubsub: PubSub | None = None
        if events is not None and events.running and not events.paused:
            client: Any = self._client(events)  # redis-py leaves pubsub() untyped
            self._pubsub = client.pubsub()

    def call(self, node: RedisNode, command: Command) -> Reply:
        client: Any = self._client(node)  # redis-py leaves execute_command untyped
        try:
            return client.execute_command(*command)
        except _FAILED as err:
            return err

    def wait_for_event(self, timeout_s: float) -> None:
        """Return at the next Sentinel event, or after ``timeout_s``."""
        if self._pubsub is not None:
            try:
                if not self._pubsub.subscribed:
                    self._pubsub.psubscribe("*")
                self._pubsub.get_message(timeout=timeout_s)
                return
            except _FAILED:  # the sentinel went away: fall back to plain polling
                self._pubsub.close()
                self._pubsub = None
        time.sleep(timeout_s)

    def _client(self, node: RedisNode) -> redis.Redis:
        if node.name not in self._clients:
            self._clients[node.name] = node.observer_client()
        return self._clients[node.name]

    def __enter__(self) -> SyncObserver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pubsub is not None:
            self._pubsub.close()
        for client in self._clients.values():
            client.close()


class AsyncObserver:
    """Asyncio twin of :class:`SyncObserver`; clients are closed with ``aclose()``."""

    def __init__(self, events: RedisNode | None = None) -> None:
        self._clients: dict[str, redis.asyncio.Redis] = {}
        self._pubsub: AsyncPubSub | None = None
        if events is not None and events.running and not events.paused:
            self._pubsub = self._client(events).pubsub()

    async def call(self, node: RedisNode, command: Command) -> Reply:
        client: Any = self._client(node)  # redis.asyncio leaves execute_command untyped
        try:
            return await client.execute_command(*command)
        except _FAILED as err:
            return err

    async def wait_for_event(self, timeout_s: float) -> None:
        """Return at the next Sentinel event, or after ``timeout_s``."""
        if self._pubsub is not None:
            try:
                if not self._pubsub.subscribed:
                    await self._pubsub.psubscribe("*")
                await self._pubsub.get_message(timeout=timeout_s)
                return
            except _FAILED:  # the sentinel went away: fall back to plain polling
                pubsub: Any = self._pubsub
                self._pubsub = None
                await pubsub.aclose()
        await asyncio.sleep(timeout_s)

    def _client(self, node: RedisNode) -> redis.asyncio.Redis:
        if node.name not in self._clients:
            self._clients[node.name] = node.async_observer_client()
        return self._clients[node.name]

    async def __aenter__(self) -> AsyncObserver:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        closing: list[Any] = [self._pubsub, *self._clients.values()]  # aclose() is untyped
        for resource in closing:
            if resource is not None:
                await resource.aclose()
