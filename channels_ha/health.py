"""Health probes for Kubernetes: Django views and an ASGI middleware.

Thin shells over :func:`channels_ha._health.check_health`. ``/healthz`` (readiness) answers
200 when a master of the channel layer's Redis answers ROLE and PING and takes a write (one
that writes nothing) within the timeout, 503 otherwise (an alias ``CHANNEL_LAYERS`` lacks
included), with a JSON body; ``/livez`` (liveness) answers 200 without touching Redis, so a
Redis outage, or a master refusing writes, makes pods unready instead of restarting them.

The views are async: the probe runs in a worker thread bounded by its timeout, so under ASGI it
neither blocks the event loop nor queues behind other sync views on Django's single
thread-sensitive executor; under WSGI Django runs them in a short-lived event loop.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.http import HttpRequest, JsonResponse

from ._health import HEALTH_TIMEOUT_S, check_health

__all__ = ["HealthCheckMiddleware", "health_view", "live_view"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]
_NO_STORE = {"Cache-Control": "no-store"}
_ALIVE = {"status": "alive"}


async def health_view(
    request: HttpRequest, alias: str = "default", timeout_s: float = HEALTH_TIMEOUT_S
) -> JsonResponse:
    """Readiness: 200 when a writable master answers, else 503; pass options from urls.py."""
    health = await check_health(alias, timeout_s)
    return JsonResponse(health.body, status=health.status_code, headers=_NO_STORE)


async def live_view(request: HttpRequest) -> JsonResponse:
    """Liveness: 200 whenever the process answers HTTP; Redis is not asked."""
    return JsonResponse(_ALIVE, headers=_NO_STORE)


class HealthCheckMiddleware:
    """Answers ``path`` and ``live_path`` before the wrapped ASGI app; passes the rest on.

    For ``ProtocolTypeRouter({"http": HealthCheckMiddleware(django_asgi_app), ...})``: the
    probes skip Django's middleware and URL routing.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        path: str = "/healthz",
        live_path: str = "/livez",
        alias: str = "default",
        timeout_s: float = HEALTH_TIMEOUT_S,
    ) -> None:
        self.app = app
        self.path, self.live_path = path, live_path
        self.alias, self.timeout_s = alias, timeout_s

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        path = scope.get("path") if scope["type"] == "http" else None
        if path == self.path:
            health = await check_health(self.alias, self.timeout_s)
            await _respond(send, scope, health.status_code, health.body)
        elif path == self.live_path:
            await _respond(send, scope, 200, _ALIVE)
        else:
            await self.app(scope, receive, send)


async def _respond(
    send: Callable[[Message], Awaitable[None]], scope: Scope, status: int, body: Any
) -> None:
    payload = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    head = scope.get("method") == "HEAD"
    await send({"type": "http.response.body", "body": b"" if head else payload})
