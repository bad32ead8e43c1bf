"""An ASGI wrapper that closes the process's channel layers when the server shuts down.

Only ``close()`` gives back what a normal channel's reader had popped and not delivered
(its buffer, its in-flight list); without it, a SIGTERM loses those unlogged, as a crash
does. No server calls it: uvicorn re-raises the signal after its graceful shutdown, so the
process dies before ``asyncio.run`` would cancel the layer's tasks (whose cancellation
closes it); daphne stops its reactor without cancelling anything. The ASGI lifespan
protocol's shutdown event is the one hook a server runs before exiting; Channels'
``ProtocolTypeRouter`` does not speak it (it raises for the ``lifespan`` scope), so this
wrapper answers it in front of the router.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._constants import LIFESPAN_CLOSE_TIMEOUT_S

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
_Close = Callable[[], object]


def close_layers_at_shutdown(
    app: ASGIApp, *, timeout_s: float = LIFESPAN_CLOSE_TIMEOUT_S
) -> ASGIApp:
    """``app`` with the lifespan protocol answered: at shutdown, every channel layer this
    process made (``channels.layers.channel_layers``) is closed, all at once, within
    ``timeout_s``. ``app`` gets every other scope, never ``lifespan``."""
    return _LayerCloser(app, timeout_s)


class _LayerCloser:
    """The wrapper; startup does nothing, shutdown closes the layers."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        # The protocol is two events, in this order: startup, then shutdown.
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        failures = await _close_layers(self.timeout_s)
        if failures:  # the server logs the message (uvicorn: at ERROR) and exits all the same
            await send({"type": "lifespan.shutdown.failed", "message": "; ".join(failures)})
        else:
            await send({"type": "lifespan.shutdown.complete"})


async def _close_layers(timeout_s: float) -> list[str]:
    """Closes every layer of ``channel_layers`` that can be closed; what failed, in words.

    A close() that is not a coroutine (a synchronous one) counts as done when it returns.
    Cancelled by the timeout, a channels-ha layer's close() stops waiting for Redis and logs
    what it could not give back (``return_lost``, ``in_flight_lost``)."""
    from channels.layers import channel_layers

    layers = list(channel_layers.backends.items())
    limit_s = timeout_s
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


def _closer(layer: object) -> _Close | None:
    """The layer's close: ``close()`` (channels-ha, Channels' in-memory layer) or
    ``close_pools()`` (channels_redis). Looked up on the class: channels_redis's pub/sub
    layer hands any attribute on to a layer it makes for the running event loop."""
    for name in ("close", "close_pools"):
        if callable(getattr(type(layer), name, None)):
            close: _Close = getattr(layer, name)
            return close
    return None
