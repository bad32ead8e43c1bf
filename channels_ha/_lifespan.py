"""An ASGI wrapper that closes the process's channel layers when the server shuts down.

Only ``close()`` gives back what a normal channel's reader had popped and not delivered
(its buffer, its in-flight list); without it, a SIGTERM loses those unlogged, as a crash
does. No server calls it: uvicorn re-raises the signal after its graceful shutdown, so the
process dies before ``asyncio.run`` would cancel the layer's tasks (whose cancellation
closes it); daphne stops its reactor without cancelling anything. The ASGI lifespan
protocol's shutdown event is the one hook a server runs before exiting. The wrapped app gets
the lifespan scope first, and the layers close after its own shutdown; Channels'
``ProtocolTypeRouter`` without a ``"lifespan"`` entry refuses it (it raises for the scope
type), and the wrapper then answers the protocol itself.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ._constants import LIFESPAN_CLOSE_MARGIN_S, LIFESPAN_CLOSE_TIMEOUT_S

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
_Close = Callable[[], object]

logger = logging.getLogger("channels_ha.lifespan")

_SHUTDOWN_ANSWERS = ("lifespan.shutdown.complete", "lifespan.shutdown.failed")
_STARTUP_ANSWERS = ("lifespan.startup.complete", "lifespan.startup.failed")
# How apps that do not speak lifespan refuse its scope before receiving anything: Channels'
# ProtocolTypeRouter and Django's ASGIHandler raise ValueError, a URLRouter a KeyError
# ('path'). Anything else raised there is a failure of the app's own startup, not hidden.
_REFUSALS = (ValueError, KeyError)


def close_layers_at_shutdown(app: ASGIApp, *, timeout_s: float | None = None) -> ASGIApp:
    """``app`` whose lifespan shutdown also closes every channel layer this process made
    (``channels.layers.channel_layers``), all at once, within ``timeout_s``: by default 35 s,
    or the largest ``failover_timeout`` of its channels-ha layers plus 5 s if that is more.

    ``app`` gets the lifespan scope; the layers close when it answers the shutdown, before
    the server hears the answer, or when it fails in it. An ``app`` that refuses the scope
    (returns, or raises ValueError or KeyError, before it receives the startup event, as
    Channels' ``ProtocolTypeRouter`` without a ``"lifespan"`` entry does) has the protocol
    answered for it; one that returns after its startup has its shutdown answered."""
    return _LayerCloser(app, timeout_s)


class _LayerCloser:
    """The wrapper: every scope goes to ``app``; a lifespan one is watched (or answered)."""

    def __init__(self, app: ASGIApp, timeout_s: float | None) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        seen: set[str] = set()  # the events app received and the answers it sent

        async def app_receive() -> Message:
            message = await receive()
            seen.add(message["type"])
            return message

        async def app_send(message: Message) -> None:
            if message["type"] in _SHUTDOWN_ANSWERS:  # the layers close after app's shutdown
                message = _with_failures(message, await _close_layers(self.timeout_s))
            seen.add(message["type"])
            await send(message)

        try:
            await self.app(scope, app_receive, app_send)
        except Exception as error:
            if seen or not isinstance(error, _REFUSALS):
                # The app's own failure (a startup that failed is the server's to report).
                # Failing in its shutdown, it still must not keep the layers open.
                if "lifespan.shutdown" in seen and not seen & set(_SHUTDOWN_ANSWERS):
                    await _close_layers(self.timeout_s)
                raise
            logger.debug("The application refuses the lifespan scope (%r): answered here", error)
        await self._finish(seen, receive, send)

    async def _finish(self, seen: set[str], receive: Receive, send: Send) -> None:
        """What the app left of the protocol, answered here: all of it for an app that does
        not speak lifespan, the shutdown for one that returned after its startup (the layers
        would otherwise never close)."""
        if "lifespan.startup.failed" in seen:
            return  # the server exits without a shutdown event
        if not seen & set(_STARTUP_ANSWERS):
            if "lifespan.startup" not in seen:
                await receive()
            await send({"type": "lifespan.startup.complete"})
        if not seen & set(_SHUTDOWN_ANSWERS):
            if "lifespan.shutdown" not in seen:
                await receive()
            failures = await _close_layers(self.timeout_s)
            await send(_with_failures({"type": "lifespan.shutdown.complete"}, failures))


def _with_failures(answer: Message, failures: list[str]) -> Message:
    """The shutdown answer, failed with the layers' failures added to the app's message (the
    server logs it, uvicorn at ERROR, and exits all the same)."""
    if not failures:
        return answer
    if answer["type"] == "lifespan.shutdown.failed" and answer.get("message"):
        failures = [str(answer["message"]), *failures]
    return {**answer, "type": "lifespan.shutdown.failed", "message": "; ".join(failures)}


async def _close_layers(timeout_s: float | None) -> list[str]:
    """Closes every layer of ``channel_layers`` that can be closed; what failed, in words.

    A close() that is not a coroutine (a synchronous one) counts as done when it returns.
    Cancelled by the timeout, a channels-ha layer's close() stops waiting for Redis and logs
    what it could not give back (``return_lost``, ``in_flight_lost``)."""
    from channels.layers import channel_layers

    layers = list(channel_layers.backends.items())
    limit_s = _default_timeout_s(layer for _, layer in layers) if timeout_s is None else timeout_s
    failures: list[str] = []
    closing: dict[asyncio.Future[Any], str] = {}
    for alias, layer in layers:
        if (close := _closer(layer)) is None:
            continue
        try:
            result = close()
        except Exception as error:
            failures.append(f"closing channel layer {alias!r} failed: {error!r}")
            continue
        if inspect.isawaitable(result):
            closing[asyncio.ensure_future(result)] = alias
    if not closing:
        return failures
    done, late = await asyncio.wait(closing, timeout=limit_s)
    for future in late:
        future.cancel()
    if late:  # each one's cancellation runs to its end, as wait_for would have waited
        await asyncio.wait(late)
        late_aliases = sorted(closing[future] for future in late)
        failures.append(f"closing the channel layers {late_aliases} took more than {limit_s:g} s")
    failures.extend(
        f"closing channel layer {closing[future]!r} failed: {future.exception()!r}"
        for future in done
        if not future.cancelled() and future.exception() is not None
    )
    return failures


def _default_timeout_s(layers: Iterable[object]) -> float:
    """35 s, or more for a channels-ha layer whose close() may wait out a longer
    ``failover_timeout`` (its readers' recovery, then the give-back)."""
    from ._layer import RedisChannelLayer

    failovers = [
        config.failover_timeout_s
        for layer in layers
        if isinstance(layer, RedisChannelLayer)
        for config in layer.configs
    ]
    return max([LIFESPAN_CLOSE_TIMEOUT_S, *(s + LIFESPAN_CLOSE_MARGIN_S for s in failovers)])


def _closer(layer: object) -> _Close | None:
    """The layer's close: ``close()`` (channels-ha, Channels' in-memory layer) or
    ``close_pools()`` (channels_redis). Looked up on the class: channels_redis's pub/sub
    layer hands any attribute on to a layer it makes for the running event loop."""
    for name in ("close", "close_pools"):
        if callable(getattr(type(layer), name, None)):
            close: _Close = getattr(layer, name)
            return close
    return None
