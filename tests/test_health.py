"""The health probes: 200 while a writable master answers, 503 while none does, 200 again after
the failover or restart; the same through the Django views and the ASGI middleware."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from channels.layers import channel_layers as channel_layers_manager
from channels.layers import get_channel_layer
from django.test import AsyncClient, RequestFactory, override_settings

from channels_ha import channel_layers, parse_url
from channels_ha._health import HEALTH_TIMEOUT_S, check_health
from channels_ha.health import HealthCheckMiddleware, health_view
from channels_ha.sandbox import SentinelTopology, StandaloneTopology, Topology, TopologyFactory
from tests import django_settings
from tests.conftest import refusing_writes

# Its assertions time things within a second or so: run alone (see scripts/test).
pytestmark = pytest.mark.serial

MODES = {"standalone": "single", "tls": "single", "sentinel": "sentinel", "cluster": "cluster"}
Probe = Callable[[], Awaitable[tuple[int, dict[str, Any]]]]


@pytest.fixture(autouse=True, scope="module")
def _django() -> None:
    """Django is set up for this module."""
    django_settings.setup()


@pytest.fixture
async def layers_for() -> AsyncIterator[Callable[[Topology], Any]]:
    """Points CHANNEL_LAYERS at a topology; closes the layer the test used, if any."""
    overrides: list[Any] = []

    def point(topology: Topology) -> None:
        overrides.append(override_settings(CHANNEL_LAYERS=channel_layers(parse_url(topology.url))))
        overrides[-1].enable()

    yield point
    for override in reversed(overrides):
        layer = channel_layers_manager.backends.get("default")  # only if the test made it
        if layer is not None:
            await layer.close()
        override.disable()


async def _view(path: str = "/healthz") -> tuple[int, dict[str, Any]]:
    response = await AsyncClient().get(path)
    assert response["Cache-Control"] == "no-store"
    return response.status_code, json.loads(response.content)


async def _asgi(
    path: str = "/healthz", method: str = "GET", scope_type: str = "http", **options: Any
) -> tuple[int, dict[str, Any]]:
    """Calls the middleware around an app that answers 418, as the ASGI server would."""
    sent: list[dict[str, Any]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": scope_type, "path": path, "method": method, "headers": []}
    await HealthCheckMiddleware(inner, **options)(scope, receive, send)
    body = sent[1]["body"]
    return sent[0]["status"], json.loads(body) if body else {}


async def _until(probe: Probe, status: int, timeout_s: float = 30) -> dict[str, Any]:
    """Probes until the status is ``status`` (polling under a deadline); returns the body."""
    deadline = time.monotonic() + timeout_s
    while True:
        code, body = await probe()
        if code == status:
            return body
        assert time.monotonic() < deadline, f"still {code} after {timeout_s} s: {body}"
        await asyncio.sleep(0.05)  # poll interval


def _master(topology: Topology) -> str:
    if isinstance(topology, SentinelTopology):
        node = topology.current_master()
        return f"{node.host}:{node.port}"
    assert isinstance(topology, StandaloneTopology)
    return f"{topology.node.host}:{topology.node.port}"


async def test_healthy_on_every_topology(redis_topology: Topology, layers_for: Any) -> None:
    """A healthy topology answers 200 with mode, master, role and round-trip time."""
    layers_for(redis_topology)
    status, body = await _view()
    assert (status, body["status"], body["alias"]) == (200, "ok", "default")
    (shard,) = body["shards"]
    assert (shard["ok"], shard["mode"], shard["error"]) == (True, MODES[redis_topology.kind], None)
    assert shard["rtt_ms"] >= 0
    if redis_topology.kind == "cluster":
        assert shard["cluster_state"] == "ok"
    else:
        assert (shard["master"], shard["role"]) == (_master(redis_topology), "master")


@pytest.mark.parametrize("probe", [_view, _asgi], ids=["view", "asgi"])
async def test_503_while_paused_then_200(
    probe: Probe, redis_sandbox_factory: TopologyFactory, layers_for: Any
) -> None:
    """A paused (hung) master gives 503 within the timeout, and 200 once it resumes."""
    topology = redis_sandbox_factory("standalone")
    assert isinstance(topology, StandaloneTopology)
    layers_for(topology)
    assert (await probe())[0] == 200
    topology.node.pause()
    started = time.monotonic()
    status, body = await probe()
    assert (status, body["status"]) == (503, "unavailable")
    assert time.monotonic() - started < 2.5
    assert "Timeout" in body["shards"][0]["error"]
    topology.node.resume()
    await _until(probe, 200)


async def test_fast_url_option(redis_sandbox_factory: TopologyFactory, layers_for: Any) -> None:
    """A timeout passed from urls.py bounds the probe (0.5 s for /healthz/fast)."""
    topology = redis_sandbox_factory("standalone")
    assert isinstance(topology, StandaloneTopology)
    layers_for(topology)
    topology.node.pause()
    started = time.monotonic()
    assert (await _view("/healthz/fast"))[0] == 503
    assert time.monotonic() - started < 1.2
    topology.node.resume()


@pytest.mark.parametrize("probe", [_view, _asgi], ids=["view", "asgi"])
async def test_200_while_one_sentinel_is_frozen(
    probe: Probe, redis_sandbox_factory: TopologyFactory, layers_for: Any
) -> None:
    """Seen: 503 on every pod while the first sentinel was frozen, though the layer worked:
    the probe waited its whole time for that one. Now the sentinels that answer decide."""
    topology = redis_sandbox_factory("sentinel")
    assert isinstance(topology, SentinelTopology)
    layers_for(topology)
    topology.sentinels[0].pause()
    try:
        started = time.monotonic()
        status, body = await probe()
        took = time.monotonic() - started
    finally:
        topology.sentinels[0].resume()
    assert (status, body["status"]) == (200, "ok"), body
    assert body["shards"][0]["master"] == _master(topology)
    assert took < 1.5, f"the check took {took:.2f} s"


@pytest.mark.slow
async def test_sentinel_failover(redis_sandbox_factory: TopologyFactory, layers_for: Any) -> None:
    """503 while the killed master is still named, 200 on the new master, failover counted."""
    topology = redis_sandbox_factory(
        "sentinel", password="data-secret", sentinel_password="sentinel-secret"
    )
    assert isinstance(topology, SentinelTopology)
    layers_for(topology)
    layer = get_channel_layer()
    await layer.send("health.check", {"type": "ping"})
    assert await layer.receive("health.check") == {"type": "ping"}
    old = topology.current_master()
    old.kill()
    down = await _until(_view, 503)
    assert down["shards"][0]["master"] == f"{old.host}:{old.port}"
    await topology.await_new_master(old)
    await layer.send("health.check", {"type": "ping"})  # the layer moves to the new master
    assert await layer.receive("health.check") == {"type": "ping"}
    up = await _until(_view, 200)
    (shard,) = up["shards"]
    assert shard["master"] == _master(topology) != f"{old.host}:{old.port}"
    assert shard["failovers"] >= 1
    assert shard["reconnects"] >= 1
    assert shard["last_failover"] is not None
    assert "secret" not in json.dumps(down) + json.dumps(up)


async def test_layer_statistics_absent_for_other_backends(
    redis_standalone: StandaloneTopology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a layer that has no statistics, the probe uses REDIS_URL and leaves them null."""
    monkeypatch.setenv("REDIS_URL", redis_standalone.url)
    in_memory = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    with override_settings(CHANNEL_LAYERS=in_memory):
        status, body = await _view()
    assert status == 200
    assert body["shards"][0]["failovers"] is None


async def test_invalid_configuration_is_503_without_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An invalid configuration answers 503 with the redacted message, no traceback."""
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@cache:notaport")
    in_memory = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    with override_settings(CHANNEL_LAYERS=in_memory):
        status, body = await _view()
    assert status == 503
    assert "Invalid Redis configuration in REDIS_URL" in body["error"]
    assert "hunter2" not in json.dumps(body)
    assert "Traceback" not in json.dumps(body)


async def test_liveness_never_asks_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """/livez answers 200 through the view and the middleware, even with no valid Redis."""
    monkeypatch.setenv("REDIS_URL", "redis://cache:notaport")
    assert await _view("/livez") == (200, {"status": "alive"})
    assert await _asgi("/livez") == (200, {"status": "alive"})


async def test_middleware_passes_other_requests_on(redis_standalone: StandaloneTopology) -> None:
    """Other paths, websockets and lifespan go to the wrapped app; HEAD gets no body."""
    assert await _asgi("/elsewhere") == (418, {})
    assert await _asgi("/healthz", scope_type="websocket") == (418, {})
    assert await _asgi("/healthz", scope_type="lifespan") == (418, {})
    with override_settings(CHANNEL_LAYERS=channel_layers(parse_url(redis_standalone.url))):
        assert await _asgi("/healthz", method="HEAD") == (200, {})


async def test_concurrent_checks_share_one_probe(
    redis_standalone: StandaloneTopology, layers_for: Any
) -> None:
    """Ten simultaneous health checks cost Redis one probe connection, and all get 200."""
    layers_for(redis_standalone)
    client = redis_standalone.node.client()
    before = client.info("stats")["total_connections_received"]
    results = await asyncio.gather(*(check_health() for _ in range(10)))
    assert {result.status_code for result in results} == {200}
    assert client.info("stats")["total_connections_received"] == before + 1
    client.close()


@pytest.mark.parametrize("refusal", ["oom", "noreplicas"])
@pytest.mark.parametrize("probe", [_view, _asgi], ids=["view", "asgi"])
async def test_503_while_the_master_refuses_writes(
    probe: Probe, refusal: str, redis_standalone: StandaloneTopology, layers_for: Any
) -> None:
    """Seen: 200 "ok" while every send failed (OOM under noeviction; NOREPLICAS, sends
    raising RedisUnavailable after failover_timeout): ROLE and PING still answered. Now 503
    naming the refusal, within the bound; /livez stays 200 (a restart cures no Redis)."""
    layers_for(redis_standalone)
    assert (await probe())[0] == 200
    with refusing_writes(redis_standalone.nodes, refusal) as code:
        started = time.monotonic()
        status, body = await probe()
        took = time.monotonic() - started
        live = await probe("/livez")
    assert (status, body["status"]) == (503, "unavailable"), body
    (shard,) = body["shards"]
    assert (shard["ok"], shard["role"], shard["writable"]) == (False, "master", False)
    assert shard["error"].startswith(f"{_master(redis_standalone)} refuses writes: {code} ")
    assert took < HEALTH_TIMEOUT_S + 0.5
    assert live == (200, {"status": "alive"})
    status, body = await probe()
    assert (status, body["shards"][0]["writable"]) == (200, True)


async def test_an_unknown_alias_is_503_not_another_redis(
    redis_standalone: StandaloneTopology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen: a typo in the alias answered 200 from REDIS_URL's Redis (or localhost's), not the
    layer's. Now 503 naming the alias and the ones there are, from the view and the
    middleware; the right alias still answers 200."""
    monkeypatch.setenv("REDIS_URL", redis_standalone.url)  # a Redis that would answer
    layers = {
        **channel_layers(parse_url(redis_standalone.url), alias="chat"),
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
    }
    request = RequestFactory().get("/healthz")
    with override_settings(CHANNEL_LAYERS=layers):
        view = await health_view(request, alias="caht")
        status, body = await _asgi(alias="caht")
        right = await _asgi(alias="chat")
        await channel_layers_manager.backends["chat"].close()
    expected = "CHANNEL_LAYERS has no alias 'caht': its aliases are 'chat', 'default'."
    assert (view.status_code, json.loads(view.content)["error"]) == (503, expected)
    assert (status, body) == (
        503,
        {"status": "unavailable", "alias": "caht", "error": expected, "shards": []},
    )
    assert right[0] == 200
    with override_settings(CHANNEL_LAYERS={}):
        status, body = await _asgi()
    assert (status, body["error"]) == (
        503,
        "CHANNEL_LAYERS has no alias 'default': CHANNEL_LAYERS is not set.",
    )
