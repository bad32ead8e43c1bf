"""RESP2 over one asyncio socket: many concurrent commands, replies matched in order.

redis-py checks a connection out of a pool for every command, so concurrent senders need as
many sockets as there are senders in flight. Redis answers commands in the order it reads
them, so one socket can carry any number of commands at once if replies are matched to
requests by position. That is what this module does, with hiredis parsing the replies; the
callers (``_link``, ``_reader``) decide what a lost connection means for their requests.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, cast

import hiredis

from ._dead_loop import forget_connection, track_connection
from .exceptions import ConnectionLost, RedisCommandError

Arg: TypeAlias = str | bytes | int | float
ReplyError = hiredis.ReplyError


@dataclass(frozen=True)
class Endpoint:
    """Where one Redis (or Sentinel) server listens, and how to talk to it."""

    host: str
    port: int
    unix_path: str | None = None
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None

    @property
    def address(self) -> str:
        """``host:port``, as sentinels and Cluster name a node: how addresses compare."""
        return f"{self.host}:{self.port}"

    def describe(self) -> str:
        """A short address for logs and errors (never credentials)."""
        if self.unix_path:
            return f"unix:{self.unix_path}"
        scheme = "tls" if self.ssl_context else "tcp"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


class ReplySink(Protocol):
    """Receives, in order, what one connection reads."""

    def on_reply(self, reply: object) -> None: ...

    def on_lost(self, exc: BaseException | None) -> None: ...


def pack(*args: Arg) -> bytes:
    """Encodes one command as RESP."""
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]
    return packed


class RespProtocol(asyncio.Protocol):
    """The socket side: coalesces writes per loop iteration and parses replies."""

    def __init__(self, sink: ReplySink) -> None:
        self.sink = sink
        self._parser = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        self._outgoing: list[bytes] = []
        # A write went out since bytes last came in: the next one is coalesced (see write).
        self._wrote = False
        self._flush_due = False  # _flush is scheduled: every write waits for it
        self._abort_reason: BaseException | None = None
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._lost: asyncio.Future[None] = self._loop.create_future()
        # When bytes last came in, and how many went to the transport: a large reply or
        # request still moving over a slow link is progress, not a hung server.
        self.received_at = 0.0  # time.monotonic()
        self.received_bytes = 0  # since connected: how much of a reply arrived before a cut
        self._handed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports implement the interface
        # without deriving from asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        track_connection(self, self._lost.get_loop(), transport)  # (see _dead_loop)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        self._wrote = False
        self.received_at = time.monotonic()
        self.received_bytes += len(data)
        self._parser.feed(data)
        try:
            reply = self._parser.gets()
            while reply is not False:
                self.sink.on_reply(reply)
                reply = self._parser.gets()
        except hiredis.ProtocolError as err:
            self.abort(err)

    def connection_lost(self, exc: BaseException | None) -> None:
        forget_connection(self)
        self.closed = True
        self._transport = None
        if not self._lost.done():
            self._lost.set_result(None)
        self.sink.on_lost(exc or self._abort_reason)

    def write(self, data: bytes) -> None:
        """Sends a request at once if none went out since bytes last came in, and coalesces
        the others into one write at the end of the loop iteration: a lone request does not
        wait for the loop to come round (Redis works on it meanwhile), and a burst still costs
        one system call. Nothing is scheduled for a lone request: a callback per write (and
        the loop turn it forced) was a measurable share of W1's cost."""
        if self.closed:
            raise ConnectionLost("connection already closed")
        transport = self._transport
        if self._flush_due or self._wrote or transport is None:
            self._outgoing.append(data)  # (not connected yet: as the rest, at the flush)
            if not self._flush_due:
                self._flush_due = True
                self._loop.call_soon(self._flush)
            return
        self._wrote = True
        if not transport.is_closing():
            transport.write(data)
            self._handed += len(data)

    def _flush(self) -> None:
        self._flush_due = False
        self._wrote = False
        if not self._outgoing:
            return
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)
            self._handed += len(data)

    def backlog(self) -> tuple[int, int]:
        """Bytes the socket accepted so far, and bytes still waiting for it to take them."""
        unsent = self._transport.get_write_buffer_size() if self._transport is not None else 0
        return self._handed - unsent, unsent

    def abort(self, exc: BaseException | None = None) -> None:
        """Drops the connection now; the sink hears about it through ``on_lost``."""
        if self._transport is not None and not self.closed:
            self._abort_reason = exc
            self._transport.abort()
        elif not self.closed:
            self.closed = True
            self.sink.on_lost(exc)

    def close(self) -> None:
        """Closes after pending writes are flushed."""
        if self._transport is not None and not self._transport.is_closing():
            self._flush()
            self._transport.close()

    async def aclose(self, timeout_s: float = 1.0) -> None:
        """Closes and waits until the socket is really gone.

        A TLS close exchanges close_notify with the server, which takes loop iterations: an
        event loop shut down before that leaks the socket.
        """
        self.close()
        if self._transport is None:
            return
        done, _ = await asyncio.wait({self._lost}, timeout=timeout_s)
        if not done:
            self.abort()
            await asyncio.sleep(0)  # lets connection_lost, scheduled by abort(), run


class FutureSink:
    """A plain pipelined client: each command gets a future, resolved in reply order."""

    def __init__(self) -> None:
        self._waiting: deque[asyncio.Future[object]] = deque()
        self.protocol: RespProtocol | None = None

    def on_reply(self, reply: object) -> None:
        future = self._waiting.popleft()
        if future.done():
            return
        if isinstance(reply, ReplyError):
            future.set_exception(RedisCommandError(str(reply)))
        else:
            future.set_result(reply)

    def on_lost(self, exc: BaseException | None) -> None:
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionLost(describe_loss(exc)))

    def submit(self, *args: Arg) -> asyncio.Future[object]:
        """Writes a command; the future resolves with its reply or a ConnectionLost."""
        return self.submit_packed(pack(*args))

    def submit_packed(self, packed: bytes) -> asyncio.Future[object]:
        """Writes a command already encoded with :func:`pack`."""
        assert self.protocol is not None
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.protocol.write(packed)
        self._waiting.append(future)
        return future

    async def call(self, *args: Arg) -> object:
        return await self.submit(*args)


def describe_loss(exc: BaseException | None) -> str:
    return f"connection lost: {exc}" if exc else "connection closed by the server"


async def open_connection(endpoint: Endpoint, sink: ReplySink, timeout_s: float) -> RespProtocol:
    """Connects (TCP, TLS or unix socket) within ``timeout_s``."""
    attempt = asyncio.ensure_future(_connecting(endpoint, sink))
    try:
        done, _ = await asyncio.wait({attempt}, timeout=timeout_s)
    except asyncio.CancelledError:
        _abandon(attempt)
        raise
    if not done:
        _abandon(attempt)
        raise ConnectionLost(f"cannot connect to {endpoint.describe()}: timed out")
    try:
        _, protocol = attempt.result()
    except (OSError, ssl.SSLError) as err:
        raise ConnectionLost(f"cannot connect to {endpoint.describe()}: {err}") from err
    except Exception as err:  # e.g. UnicodeError from a name the resolver cannot encode
        # A ConnectionLost, so callers retry and give up in time instead of dying; only the
        # type is named: the text of an arbitrary error is not known to be free of secrets.
        raise ConnectionLost(
            f"cannot connect to {endpoint.describe()}: {type(err).__name__} while resolving "
            "or connecting (an address the system cannot use?)"
        ) from None
    return protocol


def _connecting(
    endpoint: Endpoint, sink: ReplySink
) -> Coroutine[Any, Any, tuple[asyncio.Transport, RespProtocol]]:
    loop = asyncio.get_running_loop()

    def factory() -> RespProtocol:
        return RespProtocol(sink)

    if endpoint.unix_path:
        return loop.create_unix_connection(factory, endpoint.unix_path, ssl=endpoint.ssl_context)
    hostname = endpoint.server_hostname if endpoint.ssl_context else None
    return loop.create_connection(
        factory, endpoint.host, endpoint.port, ssl=endpoint.ssl_context, server_hostname=hostname
    )


def _abandon(attempt: asyncio.Task[tuple[asyncio.Transport, RespProtocol]]) -> None:
    attempt.add_done_callback(_close_orphan)
    attempt.cancel()


def _close_orphan(attempt: asyncio.Task[tuple[asyncio.Transport, RespProtocol]]) -> None:
    """Closes a connection that completed after its caller stopped waiting for it."""
    if not attempt.cancelled() and attempt.exception() is None:
        attempt.result()[0].close()


async def open_client(endpoint: Endpoint, timeout_s: float) -> FutureSink:
    """A connected :class:`FutureSink`, for handshakes and short exchanges."""
    sink = FutureSink()
    sink.protocol = await open_connection(endpoint, sink, timeout_s)
    return sink
