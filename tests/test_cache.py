"""channels_ha.cache.RedisCache keeps Django's cache semantics on every topology, and through a
failover.

The semantic tests mirror Django's own ``BaseCacheTests`` (tests/cache/tests.py), which are not
shipped with Django; each runs on a single node, Sentinel and Cluster. Expiry is checked with
PTTL on the stored key rather than by waiting, except in one test that waits for a real expiry.
"""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.core.cache import CacheKeyWarning, caches
from django.test import override_settings

from channels_ha import RedisCommandError, RedisUnavailable, parse_connection_config, parse_url
from channels_ha._interop import caches as caches_setting
from channels_ha.cache import RedisCache, cache_config
from channels_ha.exceptions import ConfigurationError
from channels_ha.sandbox import (
    ClusterTopology,
    SentinelTopology,
    StandaloneTopology,
    Topology,
    TopologyFactory,
)
from tests import django_settings
from tests.test_cluster import manual_failover

pytestmark = pytest.mark.redis_topologies("standalone", "sentinel", "cluster")


@pytest.fixture(autouse=True, scope="module")
def _django() -> None:
    """Django is set up for this module."""
    django_settings.setup()


def _make(url: str, **params: Any) -> RedisCache:
    options = {"config": parse_url(url), **params.pop("OPTIONS", {})}
    params.setdefault("KEY_PREFIX", f"test-{uuid.uuid4().hex[:8]}")
    return RedisCache("", {**params, "OPTIONS": options})


@pytest.fixture
def make_cache(redis_topology: Topology) -> Iterator[Any]:
    """Builds caches on the topology, each with a key prefix of its own; clears them after."""
    made: list[RedisCache] = []

    def make(**params: Any) -> RedisCache:
        made.append(_make(redis_topology.url, **params))
        return made[-1]

    yield make
    for cache in made:
        cache.clear()
        cache.disconnect()


@pytest.fixture
def cache(make_cache: Any) -> RedisCache:
    """A cache on the topology this test is parametrized with."""
    backend: RedisCache = make_cache()
    return backend


def _pttl_ms(cache: RedisCache, key: str, version: int | None = None) -> int:
    client = cache._cache.client.get_client()
    ttl: int = client.pttl(cache.make_key(key, version=version))
    return ttl


class Unpicklable:
    def __getstate__(self) -> None:
        raise pickle.PickleError("not picklable")


# -- basics ----------------------------------------------------------------------------------


def test_set_and_get(cache: RedisCache) -> None:
    """A value set can be read back; a missing key reads as None or the default."""
    cache.set("key", "value")
    assert cache.get("key") == "value"
    assert cache.get("missing") is None
    assert cache.get("missing", "default") == "default"


def test_add(cache: RedisCache) -> None:
    """add() stores only when the key is absent."""
    assert cache.add("key", "first") is True
    assert cache.add("key", "second") is False
    assert cache.get("key") == "first"


def test_delete(cache: RedisCache) -> None:
    """delete() removes a key and says whether there was one."""
    cache.set("key", 1)
    assert cache.delete("key") is True
    assert cache.delete("key") is False
    assert cache.get("key") is None


def test_has_key_and_in(cache: RedisCache) -> None:
    """has_key() and ``in`` see stored keys, including a stored None."""
    cache.set("key", "value")
    cache.set("none", None)
    assert cache.has_key("key")
    assert "none" in cache
    assert not cache.has_key("missing")


def test_incr_and_decr(cache: RedisCache) -> None:
    """incr()/decr() change integers; a missing key raises ValueError, text a ResponseError."""
    cache.set("answer", 41)
    assert cache.incr("answer") == 42
    assert cache.incr("answer", 10) == 52
    assert cache.decr("answer", 2) == 50
    assert cache.get("answer") == 50
    with pytest.raises(ValueError, match="not found"):
        cache.incr("missing")
    cache.set("text", "abc")
    with pytest.raises(redis.ResponseError):
        cache.incr("text")


def test_incr_keeps_the_timeout(cache: RedisCache) -> None:
    """incr() leaves the key's expiry as it was."""
    cache.set("counter", 1, 100)
    cache.incr("counter")
    assert 0 < _pttl_ms(cache, "counter") <= 100_000


@pytest.mark.parametrize(
    "value",
    [
        {"nested": [1, 2.5, (3, 4)], "text": "é"},
        True,
        None,
        2**70,
        -3,
        b"\x00\xffbinary",
        "unicode ✓ ±",
        3.25,
    ],
    ids=["dict", "bool", "none", "bigint", "negative", "bytes", "unicode", "float"],
)
def test_data_types(cache: RedisCache, value: object) -> None:
    """Every picklable value comes back equal, and of the same type."""
    cache.set("value", value)
    assert cache.get("value", "absent") == value
    assert type(cache.get("value", "absent")) is type(value)


def test_unicode_keys(cache: RedisCache) -> None:
    """Keys may hold any unicode text."""
    cache.set("ключ-ü-✓", "value")
    assert cache.get("ключ-ü-✓") == "value"


def test_unpicklable_value_raises(cache: RedisCache) -> None:
    """A value that cannot be pickled raises PickleError, for set() and add() alike."""
    with pytest.raises(pickle.PickleError):
        cache.set("key", Unpicklable())
    with pytest.raises(pickle.PickleError):
        cache.add("key", Unpicklable())


def test_invalid_keys_warn(cache: RedisCache) -> None:
    """Keys memcached would reject warn, as with every Django backend."""
    with pytest.warns(CacheKeyWarning):
        cache.set("key with spaces", 1)
    with pytest.warns(CacheKeyWarning):
        cache.set("k" * 251, 1)


# -- many ------------------------------------------------------------------------------------


def test_get_many_across_slots(cache: RedisCache) -> None:
    """get_many() returns the stored keys only, wherever they live (every Cluster slot)."""
    data = {f"key-{i}": i for i in range(50)}
    cache.set_many(data)
    assert cache.get_many([*data, "missing"]) == data
    assert cache.get_many([]) == {}


def test_set_many(cache: RedisCache) -> None:
    """set_many() stores every key, returns [] and applies the timeout to each."""
    assert cache.set_many({"a": 1, "b": "two"}, 100) == []
    assert cache.get_many(["a", "b"]) == {"a": 1, "b": "two"}
    assert all(0 < _pttl_ms(cache, key) <= 100_000 for key in "ab")
    assert cache.set_many({}) == []


def test_set_many_without_and_with_zero_timeout(cache: RedisCache) -> None:
    """set_many() with None stores for ever; with 0 it deletes, as Django's backend does."""
    cache.set_many({"a": 1, "b": 2}, None)
    assert _pttl_ms(cache, "a") == -1
    cache.set_many({"a": 1, "b": 2}, 0)
    assert cache.get_many(["a", "b"]) == {}


def test_delete_many(cache: RedisCache) -> None:
    """delete_many() removes every key named, across slots; an empty list is fine."""
    cache.set_many({f"key-{i}": i for i in range(20)})
    cache.delete_many([f"key-{i}" for i in range(10)])
    assert sorted(cache.get_many([f"key-{i}" for i in range(20)]).values()) == list(range(10, 20))
    cache.delete_many([])


def test_clear_removes_this_cache_only(cache: RedisCache, make_cache: Any) -> None:
    """clear() deletes this cache's keys, not another prefix's nor the channel layer's."""
    other = make_cache()
    cache.set_many({f"key-{i}": i for i in range(30)})
    other.set("kept", 1)
    client = cache._cache.client.get_client()
    client.set("asgi:c:{channel}", b"layer data")
    try:
        assert cache.clear() is True
        assert cache.get_many([f"key-{i}" for i in range(30)]) == {}
        assert other.get("kept") == 1
        assert client.get("asgi:c:{channel}") == b"layer data"
    finally:
        client.delete("asgi:c:{channel}")


@pytest.mark.redis_topologies("cluster")
def test_cluster_clear_sends_a_pipeline_per_node(
    cache: RedisCache, redis_topology: Topology
) -> None:
    """clear() on Cluster UNLINKs per slot (redis-py's unlink() pipeline re-sends a command
    whose reply was lost), and sent them one round trip each: 100k keys took 13.6 s against
    2.3 s. The masters now read a pipeline per node and batch: 1000 keys over ~1000 slots
    took 1006 reads (INFO's total_reads_processed), 12 now."""
    cache.set_many({f"key-{i}": i for i in range(1_000)})
    assert isinstance(redis_topology, ClusterTopology)
    admins = [node.client() for node in redis_topology.masters()]
    try:

        def reads() -> int:
            return sum(int(a.info("stats")["total_reads_processed"]) for a in admins)

        before = reads()
        assert cache.clear() is True
        read = reads() - before
        assert cache.get_many([f"key-{i}" for i in range(1_000)]) == {}
        assert read < 50, f"{read} reads by the masters for one clear() of 1000 keys"
    finally:
        for admin in admins:
            admin.close()


def test_cluster_clear_follows_a_slot_that_moved(redis_sandbox_factory: TopologyFactory) -> None:
    """clear() sends a node its UNLINKs by the client's slot map; after a manual failover the
    old master (a replica now) answers MOVED to them, unrun: they go through the Cluster
    client, which follows the redirection."""
    topology = redis_sandbox_factory("cluster")
    assert isinstance(topology, ClusterTopology)
    cache = _make(topology.url)
    keys = [f"key-{i}" for i in range(300)]
    cache.set_many(dict.fromkeys(keys, 1))
    asyncio.run(manual_failover(topology, topology.node_for_slot(0)))
    try:
        assert cache.clear() is True
        assert cache.get_many(keys) == {}
    finally:
        cache.disconnect()


# -- timeouts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeout", "low_ms", "high_ms"),
    [(100, 99_000, 100_000), (1.9, 1, 1_000), (None, -1, -1)],
    ids=["seconds", "float-truncated", "none-is-forever"],
)
def test_timeouts(cache: RedisCache, timeout: float | None, low_ms: int, high_ms: int) -> None:
    """Timeouts are whole seconds (floats truncated); None means no expiry."""
    cache.set("key", 1, timeout)
    assert low_ms <= _pttl_ms(cache, "key") <= high_ms


@pytest.mark.parametrize("timeout", [0, -1])
def test_non_positive_timeout_stores_nothing(cache: RedisCache, timeout: int) -> None:
    """A timeout of 0 or less deletes instead of storing; add() then reports False."""
    cache.set("key", 1)
    cache.set("key", 2, timeout)
    assert cache.get("key") is None
    assert cache.add("key", 3, timeout) is True
    assert cache.get("key") is None


def test_default_timeout_from_params(make_cache: Any) -> None:
    """TIMEOUT sets the default expiry; TIMEOUT None stores for ever."""
    short, forever = make_cache(TIMEOUT=60), make_cache(TIMEOUT=None)
    short.set("key", 1)
    forever.set("key", 1)
    assert 0 < _pttl_ms(short, "key") <= 60_000
    assert _pttl_ms(forever, "key") == -1


def test_touch(cache: RedisCache) -> None:
    """touch() sets a new expiry or makes the key persistent; a missing key gives False."""
    cache.set("key", 1, 10)
    assert cache.touch("key", 100) is True
    assert 10_000 < _pttl_ms(cache, "key") <= 100_000
    assert cache.touch("key", None) is True
    assert _pttl_ms(cache, "key") == -1
    assert cache.touch("missing") is False


@pytest.mark.redis_topologies("standalone")
def test_key_expires(cache: RedisCache) -> None:
    """A key set for one second is gone once that second has passed."""
    cache.set("key", "value", 1)
    assert cache.get("key") == "value"
    deadline = time.monotonic() + 3
    while cache.get("key") is not None and time.monotonic() < deadline:
        time.sleep(0.05)  # polling a real expiry under a deadline
    assert cache.get("key") is None


# -- keys and versions -----------------------------------------------------------------------


def test_key_prefix_separates_caches(make_cache: Any) -> None:
    """Two caches with different KEY_PREFIX do not see each other's keys."""
    first, second = make_cache(), make_cache()
    first.set("key", "first")
    assert second.get("key") is None


def test_versions(make_cache: Any) -> None:
    """Versions keep values apart; VERSION is the default; incr/decr_version move a value."""
    cache = make_cache()
    v2 = make_cache(KEY_PREFIX=cache.key_prefix, VERSION=2)
    cache.set("key", "v1")
    cache.set("key", "v2", version=2)
    assert (cache.get("key"), cache.get("key", version=2), v2.get("key")) == ("v1", "v2", "v2")
    assert cache.get_many(["key"], version=2) == {"key": "v2"}
    assert cache.incr_version("key") == 2
    assert cache.get("key", version=2) == "v1"
    assert cache.decr_version("key", version=2) == 1
    assert cache.get("key") == "v1"


def test_custom_key_function(make_cache: Any) -> None:
    """KEY_FUNCTION decides the stored key."""
    cache = make_cache(KEY_FUNCTION=lambda key, prefix, version: f"{prefix}:custom:{key}")
    cache.set("key", 1)
    assert cache.make_key("key") == f"{cache.key_prefix}:custom:key"
    assert cache.get("key") == 1


def test_get_or_set(cache: RedisCache) -> None:
    """get_or_set() stores the default (called if callable) once, then returns the stored one."""
    assert cache.get_or_set("key", "first") == "first"
    assert cache.get_or_set("key", "second") == "first"
    assert cache.get_or_set("callable", lambda: "computed") == "computed"
    assert cache.get_or_set("none", None) is None


async def test_async_api(cache: RedisCache) -> None:
    """Django's async cache API works on top of this backend."""
    await cache.aset("key", 1)
    assert await cache.aincr("key") == 2
    assert await cache.aget_many(["key", "missing"]) == {"key": 2}
    assert await cache.adelete("key") is True


# -- configuration ---------------------------------------------------------------------------


def test_caches_setting(redis_topology: Topology) -> None:
    """channels_ha.caches() builds a CACHES setting that Django's cache handler uses."""
    setting = caches_setting(parse_url(redis_topology.url), KEY_PREFIX=uuid.uuid4().hex)
    with override_settings(CACHES=setting):
        cache = caches["default"]
        assert isinstance(cache, RedisCache)
        cache.set("key", "value")
        assert cache.get("key") == "value"
        cache.clear()
        cache.disconnect()


PER_REQUEST_CACHES = 20


def test_cache_objects_on_one_configuration_share_its_connections(
    redis_topology: Topology,
) -> None:
    """Django builds a cache object per ASGI request (and per thread), each from the
    settings again. With a redis-py client each, every request opened a connection to the
    master, and under Sentinel asked a sentinel too. Once one object has connected, others
    on an equal configuration open none; one with other credentials gets its own client."""
    admins = [node.client() for node in redis_topology.nodes]
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    first = _make(redis_topology.url, KEY_PREFIX=prefix)
    try:

        def accepted() -> int:
            return sum(int(a.info("stats")["total_connections_received"]) for a in admins)

        first.set("key", "value")
        before = accepted()
        for _ in range(PER_REQUEST_CACHES):
            assert _make(redis_topology.url, KEY_PREFIX=prefix).get("key") == "value"
        assert accepted() - before == 0
        other_user = RedisCache(
            "",
            {
                "OPTIONS": {
                    "config": parse_url(redis_topology.url).model_copy(
                        update={"username": "someone-else"}
                    )
                }
            },
        )
        with pytest.raises(RedisCommandError):  # not the shared client, which works
            other_user.get("key")
        assert first.get("key") == "value"
        other_user.disconnect()
    finally:
        first.clear()
        first.disconnect()
        for admin in admins:
            admin.close()


DISCONNECT_RACE_S = 2.0


def test_disconnect_leaves_other_threads_operations_alone(redis_topology: Topology) -> None:
    """One thread's ``disconnect()`` closed the shared client under the others: their
    commands in flight failed (add/delete/clear "outcome unknown", redis-py's TypeError on a
    closed socket, on Cluster AttributeError on a closed client). 4 threads, each with a cache
    object (as Django builds per thread), run add/set/get/delete/clear while a fifth gets and
    disconnects every 5 ms, for 2 s. Before: dozens of errors on every topology."""
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    stop = threading.Event()
    errors: list[BaseException] = []
    done = [0]

    def work(thread: int) -> None:
        cache = _make(redis_topology.url, KEY_PREFIX=prefix)
        for i in range(1_000_000):  # bounded by count and by ``stop``
            if stop.is_set():
                return
            key = f"k{thread}-{i % 20}"
            try:
                cache.add(key, i)
                cache.set(key, i)
                cache.get(key)
                cache.delete(key)
                if i % 20 == 0:
                    cache.clear()
                done[0] += 1
            except Exception as err:  # every failure is the finding
                errors.append(err)

    def disconnect() -> None:
        cache = _make(redis_topology.url, KEY_PREFIX=prefix)
        while not stop.wait(0.005):  # the pace of the disconnects, not a synchronisation
            cache.get("x")
            cache.disconnect()

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    threads.append(threading.Thread(target=disconnect))
    for thread in threads:
        thread.start()
    stop.wait(DISCONNECT_RACE_S)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    summary = sorted({f"{type(e).__name__}: {str(e)[:80]}" for e in errors})[:5]
    assert len(errors) == 0, f"{len(errors)} errors in {done[0]} rounds: {summary}"
    assert done[0] > 0


@pytest.mark.redis_topologies("standalone")
def test_location_url_and_environment(
    redis_topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache reads a URL in LOCATION, or else REDIS_URL."""
    monkeypatch.setenv("REDIS_URL", redis_topology.url)
    monkeypatch.delenv("REDIS_CONNECTION_CONFIG", raising=False)
    assert cache_config("", {}) == parse_url(redis_topology.url)
    assert cache_config(redis_topology.url, {}) == parse_url(redis_topology.url)
    assert cache_config([redis_topology.url], {}) == parse_url(redis_topology.url)


def test_a_misspelt_option_gets_a_suggestion() -> None:
    """As for Redis keys and layer options: the unknown OPTIONS key named, the closest one
    suggested, the known ones listed."""
    with pytest.raises(ConfigurationError) as caught:
        cache_config("redis://h", {"failover_timout": 5})
    assert str(caught.value).startswith(
        "Invalid cache OPTIONS: unknown key 'failover_timout' (did you mean 'failover_timeout'?); "
        "expected one of config, serializer, failover_timeout."
    )


def test_caches_rejects_what_it_builds() -> None:
    """caches() refuses LOCATION or OPTIONS['config'] next to the configuration it adds."""
    with pytest.raises(ConfigurationError, match="'LOCATION' is built"):
        caches_setting(parse_url("redis://h"), LOCATION="redis://other")
    with pytest.raises(ConfigurationError, match="'config' is built"):
        caches_setting(parse_url("redis://h"), OPTIONS={"config": parse_url("redis://other")})


# -- failover --------------------------------------------------------------------------------


@pytest.mark.slow
def test_no_error_through_a_sentinel_failover(redis_sandbox_factory: TopologyFactory) -> None:
    """kill -9 of the master while set/get run in a loop: no error, and every value readable."""
    topology = redis_sandbox_factory("sentinel")
    assert isinstance(topology, SentinelTopology)
    cache = _make(topology.url)
    old = topology.current_master()
    written = _write_through(cache, old.kill, lambda: topology.current_master() is not old)
    assert cache.get_many(list(written)) == written
    cache.disconnect()


@pytest.mark.slow
def test_no_error_through_a_cluster_failover(redis_sandbox_factory: TopologyFactory) -> None:
    """kill -9 of a Cluster master while set/get run: no error once a replica takes over."""
    topology = redis_sandbox_factory("cluster")
    assert isinstance(topology, ClusterTopology)
    cache = _make(topology.url)
    old = topology.node_for_slot(0)
    written = _write_through(cache, old.kill, lambda: topology.node_for_slot(0) is not old)
    assert cache.get_many(list(written)) == written
    cache.disconnect()


def _write_through(cache: RedisCache, kill: Any, moved: Any) -> dict[str, int]:
    """set/get in a loop, killing the master at round 20, until 20 rounds after it moved.

    Returns what was written from the kill on: earlier writes may be lost with the old master,
    as Redis replicates asynchronously.
    """
    written: dict[str, int] = {}
    deadline, rounds_after_move = time.monotonic() + 60, 0
    for i in range(100_000):  # bounded by the deadline as well
        if i == 20:
            kill()
        cache.set(f"key-{i}", i)
        assert cache.get(f"key-{i}") == i  # read-your-write, right through the failover
        if i >= 20:
            written[f"key-{i}"] = i
            rounds_after_move += 1 if rounds_after_move or moved() else 0
        if rounds_after_move >= 20 or time.monotonic() > deadline:
            break
    assert rounds_after_move >= 20, "the master did not move within 60 s"
    return written


@pytest.mark.slow
@pytest.mark.serial  # times itself within a second or so
def test_gives_up_after_the_failover_timeout(redis_sandbox_factory: TopologyFactory) -> None:
    """With the master gone for good, an operation raises RedisUnavailable once its time is up."""
    topology = redis_sandbox_factory("standalone")
    assert isinstance(topology, StandaloneTopology)
    cache = _make(topology.url, OPTIONS={"failover_timeout": 0.5})
    cache.set("key", 1)
    topology.node.kill()
    started = time.monotonic()
    with pytest.raises(RedisUnavailable, match="within the failover timeout"):
        cache.get("key")
    assert 0.3 < time.monotonic() - started < 2
    cache.disconnect()


# -- refusals --------------------------------------------------------------------------------

SECRETS = {"password": "data-secret-1", "sentinel_password": "sentinel-secret-2"}
WRONG = "wrong-secret-3"
REFUSALS = {  # topology kind -> (the configuration's change, the settings the error names)
    "standalone": [
        ({"password": WRONG}, "check 'username'/'password'"),
        ({"password": ""}, "check 'username'/'password'"),
    ],
    "sentinel": [
        ({"password": WRONG}, "check 'username'/'password'"),
        ({"sentinel_password": WRONG}, "check 'sentinel_username'/'sentinel_password'"),
    ],
    "cluster": [({"password": WRONG}, "check 'username'/'password'")],
}


def _refused(config: dict[str, Any]) -> tuple[RedisCommandError, float]:
    """The error of a get() with this configuration, and how long it took to come."""
    options = {"config": parse_connection_config(config), "failover_timeout": 10}
    cache = RedisCache("", {"KEY_PREFIX": "refused", "OPTIONS": options})
    started = time.monotonic()
    try:
        with pytest.raises(RedisCommandError) as raised:
            cache.get("key")
    finally:
        cache.disconnect()
    return raised.value, time.monotonic() - started


def _shown(error: BaseException) -> str:
    """All a traceback of the error shows: its message and every error chained to it."""
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


@pytest.mark.parametrize("kind", list(REFUSALS))
def test_refused_credentials_raise_at_once_naming_the_setting(
    redis_sandbox_factory: TopologyFactory, kind: str
) -> None:
    """A password Redis (or a sentinel) refuses raises RedisCommandError at once, not
    redis-py's AuthenticationError nor RedisUnavailable after the failover timeout; it names
    the settings of the hop that refused and shows no password, not even in its traceback."""
    secrets = SECRETS if kind == "sentinel" else {"password": SECRETS["password"]}
    topology = redis_sandbox_factory(kind, tls=False, **secrets)
    right = _make(topology.url)
    right.set("key", "value")  # the right credentials work
    right.clear()
    right.disconnect()
    for change, named in REFUSALS[kind]:
        error, took_s = _refused({**topology.connection_config, **change})
        shown = _shown(error)
        assert named in str(error), str(error)
        assert "refused the credentials" in str(error)
        assert not any(secret in shown for secret in [*SECRETS.values(), WRONG])
        assert took_s < 5, f"{took_s:.1f} s: retried as if Redis were away"


@pytest.mark.redis_topologies("standalone")
def test_a_command_the_acl_refuses_names_the_user_setting(redis_topology: Topology) -> None:
    """An ACL user who may log in but not run GET gets a RedisCommandError naming the
    command and the 'username' setting, not redis-py's NoPermissionError or the password."""
    assert isinstance(redis_topology, StandaloneTopology)
    node = redis_topology.node
    admin = node.client()
    user, password = f"cache-{uuid.uuid4().hex[:8]}", "limited-secret-4"
    admin.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "+@all", "-get")
    cache = _make(f"redis://{user}:{password}@{node.host}:{node.port}/0")
    try:
        cache.set("key", "value")  # allowed: the user logged in
        with pytest.raises(RedisCommandError) as raised:
            cache.get("key")
        cache.clear()
    finally:
        cache.disconnect()
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()
    message = str(raised.value)
    assert "refused the user a command" in message, message
    assert "'get'" in message
    assert "'username'" in message
    assert password not in _shown(raised.value)


@pytest.mark.redis_topologies("standalone")
def test_disconnect_of_an_unused_cache_object_closes_the_idle_connections(
    redis_topology: Topology,
) -> None:
    """``disconnect()`` closes the shared client's idle connections whichever cache object
    is asked: Django makes one per thread and request, and one that made no call closed
    nothing before (1 connection left; 0 once it had made a call)."""
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    # A configuration of its own (an odd timeout), so that no other test's shared client
    # is counted: clients are shared per configuration.
    separator = "&" if "?" in redis_topology.url else "?"
    url = f"{redis_topology.url}{separator}socket_timeout=4.{uuid.uuid4().int % 10**6:06d}"
    used, unused = (_make(url, KEY_PREFIX=prefix) for _ in range(2))
    admin = redis_topology.nodes[0].client()
    try:
        name = f"probe-{uuid.uuid4().hex[:8]}"
        admin.client_setname(name)

        def others() -> int:
            return sum(1 for c in admin.client_list() if c["name"] != name)

        before = others()
        used.set("key", "value")
        assert others() == before + 1
        unused.disconnect()
        deadline = time.monotonic() + 2.0  # the server sees the close on its next turn
        while others() != before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert others() == before
        assert unused.get("key") == "value"  # the client is kept: it connects again
    finally:
        used.clear()
        used.disconnect()
        admin.close()
