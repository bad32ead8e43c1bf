"""The cache does not run twice an operation whose answer a second run changes, once Redis may
have run it: it raises RedisUnavailable saying the outcome is unknown (``_cache_doubt``).

Redis is made busy past the client's reply timeout with a bounded Lua busy loop, ordered
behind the operation's command by ``CLIENT PAUSE WRITE`` (both wait, in order, until the
pause is lifted), so the command runs after its reply timed out.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from channels_ha import RedisUnavailable, parse_url
from channels_ha.cache import RedisCache
from channels_ha.sandbox import StandaloneTopology, TopologyFactory
from tests import django_settings

REPLY_TIMEOUT_S = 0.2
BUSY_S = 0.6  # the Lua loop's length: past the reply timeout, bounded
BUSY = """local t = redis.call('TIME'); local s = t[1] + t[2] / 1e6
while true do
  local n = redis.call('TIME'); if n[1] + n[2] / 1e6 - s > tonumber(ARGV[1]) then break end
end
return 1"""


@pytest.fixture(autouse=True, scope="module")
def _django() -> None:
    """Django is set up for this module."""
    django_settings.setup()


@pytest.fixture
def topology(redis_sandbox_factory: TopologyFactory) -> StandaloneTopology:
    """A fresh single node: the tests pause it."""
    node = redis_sandbox_factory("standalone")
    assert isinstance(node, StandaloneTopology)
    return node


@pytest.fixture
def admin(topology: StandaloneTopology) -> Iterator[redis.Redis]:
    """A client of the node, outside the cache."""
    client = redis.Redis.from_url(topology.url)
    yield client
    client.close()


@pytest.fixture
def cache(topology: StandaloneTopology) -> Iterator[RedisCache]:
    """A cache waiting REPLY_TIMEOUT_S for a reply and 5 s for a master."""
    config = parse_url(f"{topology.url}?socket_timeout={REPLY_TIMEOUT_S}")
    options = {"config": config, "failover_timeout": 5}
    backend = RedisCache("", {"KEY_PREFIX": f"doubt-{uuid.uuid4().hex[:8]}", "OPTIONS": options})
    yield backend
    backend.disconnect()


def _blocked(admin: redis.Redis, count: int) -> None:
    """Returns once ``count`` clients wait on the pause (bounded: 5,000 INFO round trips)."""
    for _ in range(5_000):
        if admin.info("clients")["blocked_clients"] >= count:
            return
    raise AssertionError(f"fewer than {count} clients waited on the pause")


def _run_after_a_busy_server(admin: redis.Redis, operation: Callable[[], Any]) -> Any:
    """Runs ``operation`` so that its write command runs only after a BUSY_S Lua loop: the
    reply times out, the command still runs. Returns what it returned or raised."""
    admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
    busy_client = redis.Redis(connection_pool=admin.connection_pool)
    busy = threading.Thread(target=busy_client.eval, args=(BUSY, 0, BUSY_S))
    busy.start()
    _blocked(admin, 1)  # the loop waits first...
    unpause = threading.Thread(target=lambda: (_blocked(admin, 2), admin.client_unpause()))
    unpause.start()  # ...then the operation's command: both run, in order, once unpaused
    try:
        return operation()
    except RedisUnavailable as err:
        return err
    finally:
        unpause.join(10)
        busy.join(10)


Operation = Callable[[RedisCache], Any]
Stored = Callable[[RedisCache, redis.Redis], Any]
CASES: dict[str, tuple[Operation, Stored, Any]] = {
    # name: (operation, what the key holds afterwards, expected), the key prepared as "n" = 10
    "add": (lambda c: c.add("lock", "mine", 60), lambda c, _: c.get("lock"), "mine"),
    "delete": (lambda c: c.delete("n"), lambda c, _: c.get("n"), None),
    "incr": (lambda c: c.incr("n"), lambda c, _: c.get("n"), 11),
    "decr": (lambda c: c.decr("n", 3), lambda c, _: c.get("n"), 7),
    "touch": (lambda c: c.touch("n", None), lambda c, a: a.ttl(c.make_key("n")), -1),
}


@pytest.mark.parametrize("name", list(CASES))
def test_an_operation_whose_reply_timed_out_is_not_run_again(
    cache: RedisCache, admin: redis.Redis, name: str
) -> None:
    """add/delete/incr/decr/touch whose command ran after its reply timed out raise
    RedisUnavailable (outcome unknown), not the answer of a second run (add: False)."""
    operation, stored, expected = CASES[name]
    cache.set("n", 10, 60)  # (also opens the connection the operation will use)
    result = _run_after_a_busy_server(admin, lambda: operation(cache))
    assert isinstance(result, RedisUnavailable), f"{name} returned {result!r}"
    assert "outcome is unknown" in str(result)
    assert stored(cache, admin) == expected  # it ran, once


def test_an_idempotent_operation_is_retried_after_a_lost_reply(
    cache: RedisCache, admin: redis.Redis
) -> None:
    """set() whose reply timed out is run again, and succeeds, as through a failover."""
    cache.get("warm")
    assert _run_after_a_busy_server(admin, lambda: cache.set("key", "value")) is None
    assert cache.get("key") == "value"


def test_an_add_that_never_reached_redis_is_retried(
    cache: RedisCache, admin: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """add() whose connection's handshake timed out (nothing of it sent) is retried, and
    stores: only a command that may have run is kept from a second run."""
    admin.execute_command("CLIENT", "PAUSE", int(3 * REPLY_TIMEOUT_S * 1000), "ALL")
    with caplog.at_level(logging.INFO, "channels_ha.cache"):
        assert cache.add("lock", "mine", 60) is True  # the cache's first connection
    assert any(r.event == "cache_recovered" for r in caplog.records)  # type: ignore[attr-defined]
    assert cache.get("lock") == "mine"
