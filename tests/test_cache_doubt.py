"""The cache does not run twice an operation whose answer a second run changes, once Redis may
have run it: it raises RedisUnavailable saying the outcome is unknown (``_cache_doubt``).

Redis is made busy past the client's reply timeout with a bounded Lua busy loop, ordered
behind the operation's command by ``CLIENT PAUSE WRITE`` (both wait, in order, until the
pause is lifted), so the command runs after its reply timed out. The master stops answering
for BUSY_S at a time, under Sentinel's and Cluster's failure detection (1 s in the sandbox).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import key_slot
from redis.retry import Retry

from channels_ha import RedisUnavailable, parse_url
from channels_ha.cache import RedisCache
from channels_ha.sandbox import (
    ClusterTopology,
    RedisNode,
    SentinelTopology,
    StandaloneTopology,
    Topology,
    start_topology,
)
from tests import django_settings

REPLY_TIMEOUT_S = 0.15
PROBE_TIMEOUT_S = 0.05  # a PING unanswered this long: the server is in the Lua loop
BUSY_S = 0.45  # the Lua loop's length: past the reply timeout, bounded
BUSY = """local t = redis.call('TIME'); local s = t[1] + t[2] / 1e6
while true do
  local n = redis.call('TIME'); if n[1] + n[2] / 1e6 - s > tonumber(ARGV[1]) then break end
end
return 1"""
KINDS = ("standalone", "sentinel", "cluster")


@pytest.fixture(autouse=True, scope="module")
def _django() -> None:
    """Django is set up for this module."""
    django_settings.setup()


def _own(kind: str) -> Iterator[Topology]:
    with start_topology(kind) as topology:
        yield topology


@pytest.fixture(scope="module")
def own_standalone() -> Iterator[Topology]:
    """A single node of this module's own: the tests pause it."""
    yield from _own("standalone")


@pytest.fixture(scope="module")
def own_sentinel() -> Iterator[Topology]:
    """A Sentinel deployment of this module's own: the tests pause its master."""
    yield from _own("sentinel")


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[Topology]:
    """A Cluster of this module's own: the tests pause its masters."""
    yield from _own("cluster")


@pytest.fixture(params=KINDS)
def topology(request: pytest.FixtureRequest) -> Topology:
    """Each of this module's own topologies in turn."""
    own: Topology = request.getfixturevalue(f"own_{request.param}")
    return own


@pytest.fixture
def cache(topology: Topology) -> Iterator[RedisCache]:
    """A cache waiting REPLY_TIMEOUT_S for a reply and 5 s for a master; its prefix is a hash
    tag, so all its keys are in one slot (one master to pause on Cluster)."""
    config = parse_url(topology.url).model_copy(update={"socket_timeout_s": REPLY_TIMEOUT_S})
    options = {"config": config, "failover_timeout": 5}
    prefix = f"{{doubt-{uuid.uuid4().hex[:8]}}}"
    backend = RedisCache("", {"KEY_PREFIX": prefix, "OPTIONS": options})
    yield backend
    backend.disconnect()


def _master_of(topology: Topology, cache: RedisCache) -> RedisNode:
    """The master that holds the keys of ``cache``."""
    if isinstance(topology, SentinelTopology):
        return topology.current_master()
    if isinstance(topology, ClusterTopology):
        return topology.node_for_slot(key_slot(cache.make_and_validate_key("n").encode()))
    assert isinstance(topology, StandaloneTopology)
    return topology.node


@pytest.fixture
def master(topology: Topology, cache: RedisCache) -> RedisNode:
    """The master that holds the cache's keys."""
    return _master_of(topology, cache)


@pytest.fixture
def admin(master: RedisNode) -> Iterator[redis.Redis]:
    """A client of the master, outside the cache."""
    client = master.client()
    yield client
    client.close()


def _blocked(admin: redis.Redis, count: int) -> None:
    """Returns once ``count`` clients wait on the pause, the sentinels' own PUBLISH (of their
    hello messages) aside (bounded: 5,000 CLIENT LIST round trips)."""
    for _ in range(5_000):
        clients = admin.client_list()
        waiting = [c for c in clients if "b" in c["flags"] and c["cmd"] != "publish"]
        if len(waiting) >= count:
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


def _while_busy(master: RedisNode, operation: Callable[[], Any]) -> Any:
    """Runs ``operation`` once a BUSY_S Lua loop holds the master, which answers nothing
    meanwhile (a PING goes unanswered for PROBE_TIMEOUT_S): whatever command it sends first
    loses its reply. Returns what it returned."""
    busy_client = master.client()
    busy = threading.Thread(target=busy_client.eval, args=(BUSY, 0, BUSY_S))
    probe = master.client(socket_timeout=PROBE_TIMEOUT_S, retry=Retry(NoBackoff(), 0))
    busy.start()
    try:
        _until_unanswered(probe)
        return operation()
    finally:
        busy.join(10)
        probe.close()
        busy_client.close()


def _until_unanswered(probe: redis.Redis) -> None:
    """Returns once a PING times out (bounded: 100,000 PINGs, 5 s)."""
    deadline = time.monotonic() + 5
    for _ in range(100_000):
        if time.monotonic() > deadline:
            break
        try:
            probe.ping()
        except redis.TimeoutError:
            return
    raise AssertionError("the server answered every PING: the Lua loop never ran")


Operation = Callable[[RedisCache], Any]
Stored = Callable[[RedisCache, redis.Redis], Any]
CASES: dict[str, tuple[Operation, Stored, Any]] = {
    # name: (operation, what the key holds afterwards, expected), the key prepared as "n" = 10
    "add": (lambda c: c.add("lock", "mine", 60), lambda c, _: c.get("lock"), "mine"),
    "delete": (lambda c: c.delete("n"), lambda c, _: c.get("n"), None),
    "incr": (lambda c: c.incr("n"), lambda c, _: c.get("n"), 11),
    "decr": (lambda c: c.decr("n", 3), lambda c, _: c.get("n"), 7),
    "touch": (lambda c: c.touch("n", None), lambda c, a: a.ttl(c.make_key("n")), -1),
    "clear": (lambda c: c.clear(), lambda c, _: c.get("n"), None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_an_operation_whose_reply_timed_out_is_not_run_again(
    cache: RedisCache, admin: redis.Redis, name: str
) -> None:
    """add/delete/incr/decr/touch/clear whose command ran after its reply timed out raise
    RedisUnavailable (outcome unknown), not the answer of a second run (add: False), on
    every topology (Cluster's delete and clear too, which redis-py pipelines)."""
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


def test_an_add_called_while_handling_a_lost_reply_is_judged_on_its_own(
    cache: RedisCache, admin: redis.Redis
) -> None:
    """add() that never reached Redis, called in an ``except`` block handling an earlier lost
    reply (``except RedisUnavailable: ...``), is retried and stores: the error the application
    was handling, which Python chains to the add's, is not the add's."""
    admin.execute_command("CLIENT", "PAUSE", int(3 * REPLY_TIMEOUT_S * 1000), "ALL")
    lost = redis.TimeoutError("Timeout reading from socket")  # as a lost reply's
    try:
        raise RedisUnavailable("an earlier add's outcome is unknown") from lost
    except RedisUnavailable:
        assert cache.add("lock", "mine", 60) is True  # the cache's first connection
    assert cache.get("lock") == "mine"


def test_an_incr_whose_exists_check_lost_its_reply_is_retried(
    cache: RedisCache, master: RedisNode
) -> None:
    """incr() whose EXISTS check (Django's, before the INCRBY) lost its reply is retried and
    counts once: nothing had changed yet, so its outcome was never in doubt."""
    cache.set("n", 10, 60)  # (also opens the connection the EXISTS will use)
    assert _while_busy(master, lambda: cache.incr("n")) == 11
    assert cache.get("n") == 11
