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

A script cannot block; with nothing to pop, the reader waits with ``XREAD BLOCK`` on the
channels' wake streams, after the ids POP_NORMAL returned (a push in between is not missed),
and pops again when it returns. Readers competing in several processes all wake; one pops.
"""

from __future__ import annotations

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
from ._resp import pack
from ._scripts import POP_NORMAL

_POPPED, _RECOVERED = 1, 2  # POP_NORMAL's reply tags; 0: nothing to pop
_BLOCK_MS = int(BLOCKING_POP_TIMEOUT_S * 1000)


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
        self._recover = True  # the next pop is the first on its connection
        self._wake_after: tuple[list[str], list[bytes]] | None = None  # after an empty pop
        self._packed_keys: list[str] = []  # those of _packed_pop
        self._handed = _HandedOver()

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
        if self._recover:
            return self._pop_request(keys, recover=True)
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
        self._recover = False
        if reply[0] == _POPPED:
            self._handed.remember(reply[2])
            self._hand_over_batch(reply[1], reply[2])
        elif reply[0] == _RECOVERED:
            fresh = self._handed.unseen(reply[2])
            self._handed.remember(fresh)
            if fresh:
                self._hand_over_batch(reply[1], fresh)
        else:
            self._wake_after = (self._pending_keys, reply[1])  # the keys of this pop


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
