"""close_layers_at_shutdown: a SIGTERM to uvicorn gives back what the layers popped.

Without it nothing closes the layer at SIGTERM (uvicorn re-raises the signal after its
graceful shutdown, before ``asyncio.run`` cancels any task), and a normal channel's messages
popped and not delivered stay in the dead reader's in-flight list until they expire.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from channels.layers import InMemoryChannelLayer, channel_layers
from channels.routing import ProtocolTypeRouter
from channels_redis.core import RedisChannelLayer as ChannelsRedisLayer
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from channels_ha import RedisChannelLayer, close_layers_at_shutdown, parse_url
from channels_ha._interop import close_sync_client, sync_client
from channels_ha.sandbox import StandaloneTopology

from .conftest import marker_is_next
from .test_normal_reader import CuttingProxy, message
from .test_operations_docs import _blocks

ROOT = Path(__file__).resolve().parent.parent
SERVER_S = 30.0  # bounds the server's start, the WebSocket, and its exit after SIGTERM
WAIT_S = 10.0

_SETTINGS = """
import os
SECRET_KEY = "channels-ha-tests-only"
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = []
CHANNEL_LAYERS = {"default": {"BACKEND": "channels_ha.RedisChannelLayer", "CONFIG": {
    "hosts": [os.environ["REDIS_URL"]], "prefix": os.environ["LAYER_PREFIX"]}}}
"""
# A normal-channel consumer: it waits for one message.
_ROUTING = """
from channels.generic.websocket import AsyncWebsocketConsumer
from django.urls import path

class Take(AsyncWebsocketConsumer):
    async def connect(self):
        await self.accept()
        message = await self.channel_layer.receive("work")
        await self.send(text_data=str(message["n"]))

websocket_urlpatterns = [path("take", Take.as_asgi())]
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project whose asgi.py is the one docs/operations.md shows."""
    ((_, asgi), *_) = _blocks("asgi")
    package = tmp_path / "myproject"
    package.mkdir()
    files = {
        "__init__.py": "",
        "settings.py": _SETTINGS,
        "routing.py": _ROUTING,
        "asgi.py": asgi,
    }
    for name, text in files.items():
        (package / name).write_text(text)
    return tmp_path


@pytest.fixture
def master(redis_standalone: StandaloneTopology) -> Iterator[redis.Redis]:
    """A plain client, to look at the keys the layers leave."""
    client = sync_client(parse_url(redis_standalone.url))
    yield client
    close_sync_client(client)


def _serve(project: Path, url: str, prefix: str) -> tuple[subprocess.Popen[str], int]:
    """uvicorn (lifespan "auto", its default) on a loopback socket bound here, so that a
    request made before it accepts waits in the backlog instead of being refused."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join((str(project), str(ROOT))),
        "DJANGO_SETTINGS_MODULE": "myproject.settings",
        "REDIS_URL": url,
        "LAYER_PREFIX": prefix,
    }
    command = [sys.executable, "-m", "uvicorn", "myproject.asgi:application"]
    server = subprocess.Popen(
        [*command, "--fd", str(listener.fileno()), "--timeout-graceful-shutdown", "1"],
        cwd=project,
        env=env,
        pass_fds=(listener.fileno(),),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    port: int = listener.getsockname()[1]
    listener.close()
    return server, port


def _take(port: int) -> tuple[list[str], int | None]:
    """What the consumer sends over its WebSocket until the server closes it, and the code
    it closes with."""
    texts: list[str] = []
    with connect(f"ws://127.0.0.1:{port}/take", open_timeout=SERVER_S) as websocket:
        try:
            texts.extend(str(text) for text in websocket)
        except ConnectionClosed as closed:
            return texts, closed.rcvd.code if closed.rcvd else None
    return texts, None


async def _received(layer: RedisChannelLayer, count: int) -> list[int]:
    """Up to ``count`` numbers received on "work", each waited for at most WAIT_S."""
    numbers = []
    for _ in range(count):
        try:
            numbers.append((await asyncio.wait_for(layer.receive("work"), WAIT_S))["n"])
        except asyncio.TimeoutError:
            break
    return numbers


async def test_sigterm_to_uvicorn_gives_back_a_message_popped_and_not_delivered(
    project: Path, redis_standalone: StandaloneTopology, master: redis.Redis
) -> None:
    """A consumer waits on a normal channel; Redis pops the message sent for it, and the
    reply is held on its way (a SIGTERM can catch any pop so): after a SIGTERM to uvicorn,
    another process receives the message, once, and no in-flight list is left (without the
    wrapper: nothing received, the message kept in the dead reader's in-flight list)."""
    prefix = f"test{uuid.uuid4().hex[:10]}"
    proxy = CuttingProxy(redis_standalone)
    proxy.hold_s = 2 * SERVER_S  # the pop's reply, held until the server is gone
    survivor = RedisChannelLayer(hosts=[redis_standalone.url], prefix=prefix)
    try:
        async with proxy.running() as url:
            server, port = _serve(project, url, prefix)
            try:
                taking = asyncio.create_task(asyncio.to_thread(_take, port))
                await survivor.send("work", message(0))
                await asyncio.wait_for(proxy.cut_seen.wait(), SERVER_S)  # popped in Redis
                (in_flight,) = master.keys(f"{prefix}:f:*")  # the server's reader's
                server.send_signal(signal.SIGTERM)
                output, _ = await asyncio.to_thread(server.communicate, timeout=SERVER_S)
            finally:
                server.kill()
                server.wait(SERVER_S)
            assert await taking == ([], 1012)  # "service restart": uvicorn shutting down
        assert server.returncode == -signal.SIGTERM, output
        assert "Application shutdown complete." in output
        assert await _received(survivor, 1) == [0], output
        assert not master.exists(in_flight)
        await marker_is_next(survivor, survivor, "work")
    finally:
        await survivor.close()


class _Hanging:
    """A layer whose close() never ends."""

    async def close(self) -> None:
        await asyncio.Event().wait()


async def _lifespan(application: Any) -> list[dict[str, Any]]:
    """What ``application`` answers to a lifespan startup and shutdown."""
    events = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(events)

    async def send(message: dict[str, Any]) -> None:
        sent.append(dict(message))

    await asyncio.wait_for(application({"type": "lifespan"}, receive, send), WAIT_S)
    return sent


@pytest.fixture
def backends() -> Iterator[dict[str, Any]]:
    """Channels' layers of this process, emptied for the test and restored after."""
    saved = channel_layers.backends
    channel_layers.backends = {}
    yield channel_layers.backends
    channel_layers.backends = saved


async def test_a_router_without_lifespan_is_not_asked(backends: dict[str, Any]) -> None:
    """ProtocolTypeRouter raises for the lifespan scope: the wrapper answers it instead, and
    closes the layers that exist (here Channels' in-memory one)."""
    backends["default"] = InMemoryChannelLayer()
    router = ProtocolTypeRouter({})
    with pytest.raises(ValueError, match="lifespan"):
        await _lifespan(router)
    assert await _lifespan(close_layers_at_shutdown(router)) == [
        {"type": "lifespan.startup.complete"},
        {"type": "lifespan.shutdown.complete"},
    ]


async def test_channels_ha_and_channels_redis_layers_are_closed(
    backends: dict[str, Any], redis_standalone: StandaloneTopology
) -> None:
    """Both kinds of layer, used in this event loop, are closed at shutdown: channels-ha's
    close() and channels_redis's close_pools()."""
    prefix = f"test{uuid.uuid4().hex[:10]}"
    ours = backends["ours"] = RedisChannelLayer(hosts=[redis_standalone.url], prefix=prefix)
    theirs = backends["theirs"] = ChannelsRedisLayer(hosts=[redis_standalone.url], prefix=prefix)
    for layer in (ours, theirs):
        await layer.send("work", {"type": "job"})
        assert await asyncio.wait_for(layer.receive("work"), WAIT_S) == {"type": "job"}
    loop = asyncio.get_running_loop()
    assert theirs._layers[loop]._connections
    answers = await _lifespan(close_layers_at_shutdown(ProtocolTypeRouter({})))
    assert answers[1] == {"type": "lifespan.shutdown.complete"}
    assert loop not in ours._sessions  # closed (a later call would open it again)
    assert not theirs._layers[loop]._connections


async def test_a_close_that_hangs_fails_the_shutdown_within_the_timeout(
    backends: dict[str, Any],
) -> None:
    """A layer whose close() does not end makes the shutdown fail, named, after timeout_s."""
    backends["slow"] = _Hanging()
    started = time.monotonic()
    answers = await _lifespan(close_layers_at_shutdown(ProtocolTypeRouter({}), timeout_s=0.2))
    assert time.monotonic() - started < WAIT_S
    assert answers[1] == {
        "type": "lifespan.shutdown.failed",
        "message": "closing the channel layers ['slow'] took more than 0.2 s",
    }


class _Recorded:
    """A layer whose close() is written down in ``log``."""

    def __init__(self, log: list[str], name: str = "layer") -> None:
        self.log = log
        self.name = name

    async def close(self) -> None:
        self.log.append(f"{self.name} closed")


def _lifespan_app(log: list[str], shutdown: str = "complete") -> Any:
    """An app with a lifespan handler of its own, which writes down what it receives."""

    async def lifespan(scope: Any, receive: Any, send: Any) -> None:
        for event in ("startup", "shutdown"):
            log.append((await receive())["type"])
            answer = "complete" if event == "startup" else shutdown
            await send({"type": f"lifespan.{event}.{answer}", "message": "app's own"})

    return ProtocolTypeRouter({"lifespan": lifespan})


async def test_an_app_that_speaks_lifespan_gets_both_events_and_the_layers_close_after(
    backends: dict[str, Any],
) -> None:
    """The wrapped app's own lifespan handler sees startup and shutdown; the layers are
    closed after its shutdown, before the server hears the answer."""
    log: list[str] = []
    backends["default"] = _Recorded(log)
    answers = await _lifespan(close_layers_at_shutdown(_lifespan_app(log)))
    assert log == ["lifespan.startup", "lifespan.shutdown", "layer closed"]
    assert [answer["type"] for answer in answers] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]


async def test_the_app_s_failed_shutdown_keeps_its_message_and_the_layers_close(
    backends: dict[str, Any],
) -> None:
    """A shutdown the app fails still closes the layers; the layers' failures are added to
    its message."""
    log: list[str] = []
    backends["default"] = _Recorded(log)
    backends["slow"] = _Hanging()
    application = close_layers_at_shutdown(_lifespan_app(log, "failed"), timeout_s=0.2)
    answers = await _lifespan(application)
    assert log == ["lifespan.startup", "lifespan.shutdown", "layer closed"]
    assert answers[1] == {
        "type": "lifespan.shutdown.failed",
        "message": "app's own; closing the channel layers ['slow'] took more than 0.2 s",
    }


async def test_a_raise_after_startup_is_the_app_s_failure(backends: dict[str, Any]) -> None:
    """An app that answered startup and then raises is not taken for one that does not speak
    lifespan: the error reaches the server, and startup is not answered twice."""
    sent: list[dict[str, Any]] = []

    async def failing(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        raise RuntimeError("the app's own failure")

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(dict(message))

    with pytest.raises(RuntimeError, match="the app's own failure"):
        await close_layers_at_shutdown(failing)({"type": "lifespan"}, receive, send)
    assert sent == [{"type": "lifespan.startup.complete"}]


class _SyncClose:
    """A layer whose close() is a plain function, which may raise."""

    def __init__(self, log: list[str], error: Exception | None = None) -> None:
        self.log = log
        self.error = error

    def close(self) -> None:
        if self.error is not None:
            raise self.error
        self.log.append("sync closed")


async def test_a_synchronous_close_does_not_stop_the_others(backends: dict[str, Any]) -> None:
    """A close() that returns None counts as done and one that raises is named; the other
    layers are closed all the same."""
    log: list[str] = []
    backends["a"] = _Recorded(log, "a")
    backends["sync"] = _SyncClose(log)
    backends["broken"] = _SyncClose(log, OSError("gone"))
    backends["z"] = _Recorded(log, "z")
    answers = await _lifespan(close_layers_at_shutdown(ProtocolTypeRouter({})))
    assert sorted(log) == ["a closed", "sync closed", "z closed"]
    assert answers[1] == {
        "type": "lifespan.shutdown.failed",
        "message": "closing channel layer 'broken' failed: OSError('gone')",
    }


async def test_the_timeout_names_only_the_layers_not_closed(backends: dict[str, Any]) -> None:
    """Of a layer that closed and one that hangs, only the one that hangs is named."""
    backends["fast"] = _Recorded([])
    backends["slow"] = _Hanging()
    answers = await _lifespan(close_layers_at_shutdown(ProtocolTypeRouter({}), timeout_s=0.2))
    assert answers[1] == {
        "type": "lifespan.shutdown.failed",
        "message": "closing the channel layers ['slow'] took more than 0.2 s",
    }


def test_the_default_timeout_covers_the_longest_failover_timeout() -> None:
    """35 s by default; a channels-ha layer with a longer failover_timeout gets that plus 5 s
    (its close may wait for it, then give back)."""
    from channels_ha._lifespan import _default_timeout_s

    short = RedisChannelLayer(hosts=["redis://127.0.0.1:1"], failover_timeout=10)
    long = RedisChannelLayer(hosts=["redis://127.0.0.1:1"], failover_timeout=50)
    assert _default_timeout_s([InMemoryChannelLayer(), short]) == 35.0
    assert _default_timeout_s([short, long, InMemoryChannelLayer()]) == 55.0


async def test_an_app_failing_in_its_shutdown_still_closes_the_layers(
    backends: dict[str, Any],
) -> None:
    """An app whose lifespan handler raises at shutdown: its error reaches the server, and
    the layers are closed all the same (they kept popped messages otherwise)."""
    log: list[str] = []
    backends["default"] = _Recorded(log)

    async def lifespan(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        raise RuntimeError("the app's shutdown failed")

    with pytest.raises(RuntimeError, match="shutdown failed"):
        await _lifespan(close_layers_at_shutdown(ProtocolTypeRouter({"lifespan": lifespan})))
    assert log == ["layer closed"]


async def test_an_app_returning_after_its_startup_still_has_the_layers_closed(
    backends: dict[str, Any],
) -> None:
    """An app that answers startup and returns: the wrapper waits for the shutdown event,
    closes the layers and answers it; an app that answered startup without receiving it is
    not answered twice."""
    log: list[str] = []
    backends["default"] = _Recorded(log)

    async def startup_only(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})

    async def unasked(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "lifespan.startup.complete"})

    for handler in (startup_only, unasked):
        log.clear()
        answers = await _lifespan(close_layers_at_shutdown(handler))
        assert [answer["type"] for answer in answers] == [
            "lifespan.startup.complete",
            "lifespan.shutdown.complete",
        ]
        assert log == ["layer closed"]


async def test_a_startup_that_fails_before_receiving_is_not_taken_for_a_refusal(
    backends: dict[str, Any],
) -> None:
    """A handler that fails setting up (say, a database) before its first receive: the
    server hears it, as without the wrapper; only a router's refusal of the scope (a
    ValueError, a KeyError) is answered here."""

    async def failing_setup(scope: Any, receive: Any, send: Any) -> None:
        raise ConnectionRefusedError("no database")

    with pytest.raises(ConnectionRefusedError):
        await _lifespan(close_layers_at_shutdown(failing_setup))
