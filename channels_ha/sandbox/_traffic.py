"""Numbered messages through channel layers while faults happen, and an account of them.

The failover tests, the W4 benchmark and the demo all ask the same question: of the messages
whose ``send``/``group_send`` returned, did each arrive exactly once, and did any call raise?
:class:`Traffic` sends numbered messages at a steady rate from one layer to channels of
other layers (stand-ins for other processes), records every delivery, and
:meth:`Traffic.stop` answers with a :class:`TrafficReport`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Mode = Literal["group", "send", "mixed"]

RECEIVE_RETRY_S = 0.1  # after a failed receive(), as a consumer restarting would pause


class Layer(Protocol):
    """The part of the Channels layer API the traffic uses."""

    async def new_channel(self, prefix: str = ...) -> str: ...

    async def send(self, channel: str, message: dict[str, Any]) -> None: ...

    async def receive(self, channel: str) -> dict[str, Any]: ...

    async def group_add(self, group: str, channel: str) -> None: ...

    async def group_send(self, group: str, message: dict[str, Any]) -> None: ...


@dataclass
class TrafficReport:
    """What happened to the messages whose send returned."""

    sent: int
    delivered: int
    send_errors: list[str]
    receive_errors: list[str]
    lost: dict[str, list[int]]  # channel -> numbers it never got
    duplicates: dict[str, list[int]]  # channel -> numbers it got more than once
    # Longest time without any delivery while messages were being sent; a layer that stops
    # delivering for good scores the time from its last delivery to the end of sending.
    max_gap_s: float
    reordered: int = 0  # deliveries that came after a higher number on the same channel

    @property
    def lost_count(self) -> int:
        return sum(len(numbers) for numbers in self.lost.values())

    @property
    def duplicate_count(self) -> int:
        return sum(len(numbers) for numbers in self.duplicates.values())

    @property
    def ok(self) -> bool:
        """No error raised, nothing lost, nothing twice."""
        errors = self.send_errors or self.receive_errors
        return not errors and not self.lost_count and not self.duplicate_count

    def summary(self) -> str:
        return (
            f"sent {self.sent}, delivered {self.delivered}, "
            f"errors {len(self.send_errors)}+{len(self.receive_errors)}, "
            f"lost {self.lost_count}, duplicates {self.duplicate_count}, "
            f"reordered {self.reordered}, longest gap {self.max_gap_s:.2f} s"
        )


@dataclass
class _Inbox:
    """One receiving channel and what it got."""

    layer: Layer
    channel: str
    received: Counter[int] = field(default_factory=Counter)
    highest: int = -1
    reordered: int = 0


class Traffic:
    """Sends ``{"n": 0, 1, 2, ...}`` at ``rate_per_s`` and records every delivery.

    ``mode="group"``: each number goes by one ``group_send`` to a group holding
    ``channels_per_receiver`` channels of every receiver layer, so each channel expects every
    number. ``mode="send"``: each number goes by ``send`` to every channel in turn, so each
    channel expects its own share. ``mode="mixed"``: even numbers go by ``group_send``, odd
    ones by ``send`` to each channel in turn (with the sender among the receivers, its own
    channels get both, the group's copy through Redis and the send without it). With
    ``concurrency`` > 1, that many sends are kept in flight at once, so that a fault always
    catches some of them mid-way. Deliveries out of order count as ``reordered``, except in
    ``"group"`` mode.
    """

    def __init__(
        self,
        sender: Layer,
        receivers: Sequence[Layer],
        *,
        mode: Mode = "group",
        rate_per_s: float = 200.0,
        channels_per_receiver: int = 2,
        group: str = "traffic",
        concurrency: int = 1,
    ) -> None:
        self._sender = sender
        self._receivers = list(receivers)
        self._mode = mode
        self._interval_s = 1.0 / rate_per_s
        self._per_receiver = channels_per_receiver
        self._group = group
        self._concurrency = concurrency
        self._inboxes: list[_Inbox] = []
        self._expected: dict[str, list[int]] = {}
        self._send_errors: list[str] = []
        self._receive_errors: list[str] = []
        self._deliveries: list[float] = []
        self._sending_ended: float | None = None
        self._progress = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._producer: asyncio.Task[None] | None = None
        self.sent = 0
        self.reorderings: list[tuple[str, int, int]] = []  # (channel, number, after)

    async def start(self) -> None:
        """Creates the channels (joining the group from their own layer) and starts sending."""
        for layer in self._receivers:
            for _ in range(self._per_receiver):
                inbox = _Inbox(layer, await layer.new_channel())
                if self._mode != "send":
                    await layer.group_add(self._group, inbox.channel)
                self._inboxes.append(inbox)
                self._expected[inbox.channel] = []
        self._tasks = [asyncio.create_task(self._consume(inbox)) for inbox in self._inboxes]
        self._producer = asyncio.create_task(self._produce())

    async def wait_sent(self, count: int, timeout_s: float) -> None:
        """Returns once ``count`` sends have returned in total (for placing a fault)."""
        deadline = time.monotonic() + timeout_s
        while self.sent < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"only {self.sent} of {count} messages sent in {timeout_s} s")
            await self._next_progress(left)

    async def _next_progress(self, timeout_s: float) -> None:
        """Returns at the next send or delivery, or after ``timeout_s``."""
        self._progress.clear()
        waiting = asyncio.ensure_future(self._progress.wait())
        try:
            await asyncio.wait({waiting}, timeout=timeout_s)
        finally:
            waiting.cancel()

    async def _produce(self) -> None:
        next_at = time.monotonic()
        number = 0
        in_flight: set[asyncio.Task[None]] = set()
        while not self._stopping.is_set():
            if len(in_flight) >= self._concurrency:
                _, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            in_flight.add(asyncio.create_task(self._send(number)))
            number += 1
            next_at += self._interval_s
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing, not synchronisation
        if in_flight:
            await asyncio.wait(in_flight)

    async def _send(self, number: int) -> None:
        message = {"type": "traffic.message", "n": number}
        channel = self._channel_of(number)
        try:
            if channel is None:
                await self._sender.group_send(self._group, message)
                targets = list(self._expected)
            else:
                await self._sender.send(channel, message)
                targets = [channel]
        except Exception as err:  # every failure is what the report is about
            self._send_errors.append(f"{type(err).__name__}: {err}")
            return
        for channel in targets:
            self._expected[channel].append(number)
        self.sent += 1
        self._progress.set()

    def _channel_of(self, number: int) -> str | None:
        """The channel ``send`` sends ``number`` to; None for a ``group_send``."""
        if self._mode == "group" or (self._mode == "mixed" and number % 2 == 0):
            return None
        turn = number // 2 if self._mode == "mixed" else number
        return self._inboxes[turn % len(self._inboxes)].channel

    async def _consume(self, inbox: _Inbox) -> None:
        while True:
            try:
                message = await inbox.layer.receive(inbox.channel)
            except Exception as err:  # recorded, and the consumer goes on like a real one
                self._receive_errors.append(f"{type(err).__name__}: {err}")
                await asyncio.sleep(RECEIVE_RETRY_S)  # a layer failing at once must not spin
                continue
            number = message["n"]
            inbox.received[number] += 1
            if number < inbox.highest and self._mode != "group":
                inbox.reordered += 1  # (group sends run concurrently: their order is open)
                self.reorderings.append((inbox.channel, number, inbox.highest))
            inbox.highest = max(inbox.highest, number)
            self._deliveries.append(time.monotonic())
            self._progress.set()

    async def stop(self, drain_timeout_s: float = 10.0) -> TrafficReport:
        """Stops sending, waits (bounded) for what is due, and reports."""
        self._stopping.set()
        if self._producer is not None:
            await self._producer
        self._sending_ended = time.monotonic()
        deadline = time.monotonic() + drain_timeout_s
        while not self._all_arrived() and time.monotonic() < deadline:
            await self._next_progress(deadline - time.monotonic())
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return self._report()

    def _all_arrived(self) -> bool:
        return all(
            all(inbox.received[n] for n in self._expected[inbox.channel]) for inbox in self._inboxes
        )

    def _report(self) -> TrafficReport:
        lost, duplicates = {}, {}
        for inbox in self._inboxes:
            missing = [n for n in self._expected[inbox.channel] if not inbox.received[n]]
            twice = sorted(n for n, count in inbox.received.items() if count > 1)
            if missing:
                lost[inbox.channel] = missing
            if twice:
                duplicates[inbox.channel] = twice
        return TrafficReport(
            sent=self.sent,
            delivered=sum(sum(inbox.received.values()) for inbox in self._inboxes),
            send_errors=self._send_errors,
            receive_errors=self._receive_errors,
            lost=lost,
            duplicates=duplicates,
            max_gap_s=_longest_gap(self._deliveries, self._sending_ended),
            reordered=sum(inbox.reordered for inbox in self._inboxes),
        )


def _longest_gap(deliveries: list[float], sending_ended: float | None) -> float:
    times = sorted([*deliveries, sending_ended]) if deliveries and sending_ended else deliveries
    return max((later - earlier for earlier, later in itertools.pairwise(times)), default=0.0)
