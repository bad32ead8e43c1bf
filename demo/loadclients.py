"""A swarm of WebSocket clients in one room of the demo, timing every edit's delivery.

Each client speaks the page's protocol. Edits go from random clients at a fixed rate; each
carries its send time (``sent_at``, this machine's clock), which the server echoes, so every
other client records ``received - sent`` for it. The sender's own copy is its acknowledgement
and is not timed. Clients connect as ``quiet=1``: not announced, since 1,000 joins would
otherwise cost 500,000 presence messages before the test starts.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from .process import RunningDemo

CONNECT_CONCURRENCY = 50  # handshakes in flight at once
CONNECT_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 10.0


@dataclass
class LoadClient:
    index: int
    ws: ClientConnection
    pid: int
    seen: Counter[str] = field(default_factory=Counter)  # refs of edits received
    latencies_s: list[float] = field(default_factory=list)  # of other clients' edits
    errors: list[str] = field(default_factory=list)


@dataclass
class SwarmResult:
    """What the clients saw of the edits sent (one row of the report)."""

    clients: int
    workers: dict[int, int]  # worker pid -> clients it served
    edits: int
    deliveries: int  # of other clients' edits, counted once each
    undelivered: int  # deliveries due and not seen by the end of the drain
    duplicates: int
    errors: list[str]
    latencies_s: list[float]


class Swarm:
    """``count`` clients of ``demo`` in ``room``; owns their sockets and reader tasks."""

    def __init__(self, demo: RunningDemo, room: str, count: int) -> None:
        self._demo = demo
        self._room = room
        self._count = count
        self._clients: list[LoadClient] = []
        self._readers: list[asyncio.Task[None]] = []
        self._progress = asyncio.Event()
        self._note_id: int | None = None
        self._sent: list[tuple[str, int]] = []  # (ref, sender index)
        self._due = 0  # deliveries to clients other than the sender, of the edits sent
        self._received = 0  # of those, received (first copies only)
        self.connect_errors: list[str] = []

    async def connect(self) -> None:
        """Open every socket (a few at a time), then create the note everyone edits."""
        limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
        opened = await asyncio.gather(*(self._open(i, limit) for i in range(self._count)))
        self._clients = [client for client in opened if client is not None]
        self._readers = [asyncio.create_task(self._read(c)) for c in self._clients]
        await self._clients[0].ws.send(json.dumps({"type": "add", "text": "load test"}))
        await self._until(lambda: self._note_id is not None, CONNECT_TIMEOUT_S, "the note")

    async def _open(self, index: int, limit: asyncio.Semaphore) -> LoadClient | None:
        async with limit:
            try:
                ws = await connect(
                    self._demo.ws_url(self._room, name=f"load-{index}", quiet="1"),
                    origin=self._demo.origin,  # type: ignore[arg-type]
                    compression=None,  # measure the layer, not permessage-deflate
                    ping_interval=None,
                    open_timeout=CONNECT_TIMEOUT_S,
                    max_queue=None,
                )
                hello = json.loads(await asyncio.wait_for(ws.recv(), CONNECT_TIMEOUT_S))
            except (OSError, asyncio.TimeoutError, WebSocketException) as err:
                self.connect_errors.append(f"client {index}: {type(err).__name__}: {err}")
                return None
        return LoadClient(index, ws, hello["pid"])

    async def _read(self, client: LoadClient) -> None:
        try:
            async for raw in client.ws:
                self._record(client, json.loads(raw), time.time())
        except ConnectionClosed as err:
            client.errors.append(f"client {client.index} closed: {err}")

    def _record(self, client: LoadClient, message: dict[str, Any], now: float) -> None:
        kind = message["type"]
        if kind == "note" and "ref" in message:
            ref = message["ref"]
            client.seen[ref] += 1
            if _sender(ref) != client.index:
                client.latencies_s.append(now - message["sent_at"])
                self._received += client.seen[ref] == 1
            self._progress.set()
        elif kind == "note" and self._note_id is None:
            self._note_id = message["note"]["id"]
            self._progress.set()
        elif kind == "error":
            client.errors.append(f"client {client.index}: server said {message['message']}")

    async def edit(self, rate_per_s: float, duration_s: float) -> None:
        """Send ``rate_per_s`` edits a second, each from a random client, for ``duration_s``."""
        interval_s = 1.0 / rate_per_s
        start = time.monotonic()
        for number in range(int(rate_per_s * duration_s)):
            sender = random.choice(self._clients)
            ref = f"{number}:{sender.index}"  # the sender's index: see _sender()
            await sender.ws.send(json.dumps(self._edit_message(ref, number)))
            self._sent.append((ref, sender.index))
            self._due += len(self._clients) - 1
            delay = start + (number + 1) * interval_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing, not synchronisation

    def _edit_message(self, ref: str, number: int) -> dict[str, Any]:
        return {
            "type": "edit",
            "id": self._note_id,
            "text": f"edit {number}",
            "ref": ref,
            "sent_at": time.time(),
        }

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) until every client has every edit it is due."""
        await self._until(lambda: self._received >= self._due, timeout_s, "deliveries", True)

    async def _until(
        self, condition: Callable[[], bool], timeout_s: float, what: str, quiet: bool = False
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                if quiet:
                    return  # the report counts what is missing
                raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
            self._progress.clear()
            waiting = asyncio.create_task(self._progress.wait())
            await asyncio.wait({waiting}, timeout=left)  # the next message, or the deadline
            waiting.cancel()

    async def close(self) -> None:
        await asyncio.gather(
            *(asyncio.wait_for(c.ws.close(), CLOSE_TIMEOUT_S) for c in self._clients),
            return_exceptions=True,
        )
        await asyncio.gather(*self._readers, return_exceptions=True)

    def result(self) -> SwarmResult:
        senders = dict(self._sent)
        due = [(c, ref) for c in self._clients for ref in senders if senders[ref] != c.index]
        return SwarmResult(
            clients=len(self._clients),
            workers=dict(Counter(client.pid for client in self._clients)),
            edits=len(self._sent),
            deliveries=sum(1 for client, ref in due if client.seen[ref]),
            undelivered=sum(1 for client, ref in due if not client.seen[ref]),
            duplicates=sum(n - 1 for c in self._clients for n in c.seen.values() if n > 1),
            errors=self.connect_errors + [e for c in self._clients for e in c.errors],
            latencies_s=[latency for client in self._clients for latency in client.latencies_s],
        )


def _sender(ref: str) -> int:
    return int(ref.rpartition(":")[2])
