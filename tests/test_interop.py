"""channels_redis hosts entries, CHANNEL_LAYERS, and redis-py clients built from a config."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import channels_redis.core
import channels_redis.pubsub
import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.sentinel
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer
from channels_redis.utils import create_pool

from channels_ha import _sources
from channels_ha._config import RedisConfig, SentinelConfig
from channels_ha._interop import (
    aclose_async_client,
    async_client,
    async_sentinel_clients,
    channel_layers,
    close_sync_client,
    sync_client,
    sync_sentinel_clients,
)
from channels_ha._sources import parse_connection_config, parse_url
from channels_ha.exceptions import ConfigurationError

SECRET = "hunter2"
CORE = "channels_redis.core.RedisChannelLayer"
PUBSUB = "channels_redis.pubsub.RedisPubSubChannelLayer"
TLS_SENTINEL = (
    f"rediss+sentinel://app:{SECRET}@s1,s2:26380/mymaster/3"
    f"?sentinel_username=watcher&sentinel_password=sentpw&ssl_ca_certs=/ca.pem&socket_timeout=4"
)


@pytest.fixture(autouse=True)
def _fresh_announcements(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the "logged once" memory empty."""
    monkeypatch.setattr(_sources, "_announced", set())


def _sentinel(url: str = TLS_SENTINEL) -> SentinelConfig:
    config = parse_url(url)
    assert isinstance(config, SentinelConfig)
    return config


# -- channels_redis hosts entries ----------------------------------------------------------


def test_single_node_host_entry() -> None:
    """A single node becomes an address URL without credentials plus keyword arguments."""
    config = parse_url(f"redis://u:{SECRET}@h:6380/2?socket_timeout=5&socket_keepalive=1")
    assert config.to_channels_redis_host() == {
        "address": "redis://h:6380",
        "db": 2,
        "username": "u",
        "password": SECRET,
        "socket_timeout": 5.0,
        "socket_keepalive": True,
    }


def test_tls_host_entry() -> None:
    """A TLS node gets a rediss:// address and the ssl_* arguments."""
    host = parse_url(
        "rediss://h?ssl_ca_certs=/ca.pem&ssl_cert_reqs=optional"
    ).to_channels_redis_host()
    assert host == {
        "address": "rediss://h:6379",
        "db": 0,
        "ssl_ca_certs": "/ca.pem",
        "ssl_cert_reqs": "optional",
        "ssl_check_hostname": True,
    }


def test_unix_and_ipv6_host_entries() -> None:
    """Unix sockets and IPv6 hosts produce URLs redis-py reads back correctly."""
    unix = parse_url("unix:///run/redis%20x.sock?socket_keepalive=1").to_channels_redis_host()
    assert unix == {"address": "unix:///run/redis%20x.sock", "db": 0}
    assert parse_url("redis://[::1]:7000").to_channels_redis_host()["address"] == (
        "redis://[::1]:7000"
    )


def test_sentinel_host_entry() -> None:
    """A Sentinel config carries explicit sentinel_kwargs with the sentinels' own auth and TLS."""
    host = _sentinel().to_channels_redis_host()
    assert host == {
        "sentinels": [("s1", 26379), ("s2", 26380)],
        "master_name": "mymaster",
        "db": 3,
        "username": "app",
        "password": SECRET,
        "socket_timeout": 4.0,
        "connection_class": redis.asyncio.sentinel.SentinelManagedSSLConnection,
        "ssl_ca_certs": "/ca.pem",
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "sentinel_kwargs": {
            "username": "watcher",
            "password": "sentpw",
            "socket_timeout": 4.0,
            "ssl": True,
            "ssl_ca_certs": "/ca.pem",
            "ssl_cert_reqs": "required",
            "ssl_check_hostname": True,
        },
    }


def test_sentinel_timeouts_of_their_own() -> None:
    """sentinel_kwargs timeouts override the data nodes' for the sentinels only."""
    config = parse_connection_config(
        {
            "sentinels": ["s"],
            "master_name": "m",
            "socket_timeout": 5,
            "sentinel_kwargs": {"socket_timeout": 0.5, "socket_connect_timeout": 0.2},
        }
    )
    host = config.to_channels_redis_host()
    assert host["socket_timeout"] == 5.0
    assert host["sentinel_kwargs"] == {"socket_timeout": 0.5, "socket_connect_timeout": 0.2}


def test_plain_sentinel_host_entry_has_empty_sentinel_kwargs() -> None:
    """Without sentinel options the entry still passes sentinel_kwargs, so nothing is inherited."""
    host = _sentinel("redis+sentinel://:pw@s/m").to_channels_redis_host()
    assert host["sentinel_kwargs"] == {}
    assert "connection_class" not in host


def test_cluster_has_no_channels_redis_host() -> None:
    """channels_redis cannot use Redis Cluster, and the error says so."""
    with pytest.raises(ConfigurationError, match="channels_redis cannot use Redis Cluster"):
        parse_url("redis+cluster://a:7000").to_channels_redis_host()


def test_channels_redis_builds_the_intended_pools() -> None:
    """channels_redis's create_pool turns our entry into TLS pools for master and sentinels."""
    pool = create_pool(_sentinel().to_channels_redis_host())
    assert pool.connection_class is redis.asyncio.sentinel.SentinelManagedSSLConnection
    assert (pool.service_name, pool.connection_kwargs["db"]) == ("mymaster", 3)
    sentinel = pool.sentinel_manager.sentinels[0].connection_pool
    assert sentinel.connection_class is redis.asyncio.connection.SSLConnection
    assert sentinel.connection_kwargs["password"] == "sentpw"
    assert sentinel.connection_kwargs["ssl_ca_certs"] == "/ca.pem"


def test_channels_redis_builds_a_tls_single_node_pool() -> None:
    """channels_redis's create_pool reads our rediss:// address and keyword arguments."""
    config = parse_url(f"rediss://:{SECRET}@h:6390/1?ssl_cert_reqs=none")
    pool = create_pool(config.to_channels_redis_host())
    assert pool.connection_class is redis.asyncio.connection.SSLConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == (
        "h",
        6390,
        1,
        SECRET,
    )


# -- CHANNEL_LAYERS ------------------------------------------------------------------------


def test_channel_layers_default_backend() -> None:
    """The default backend receives the config object itself, plus layer options."""
    config = parse_url("redis://h")
    assert channel_layers(config, capacity=100) == {
        "default": {
            "BACKEND": "channels_ha.RedisChannelLayer",
            "CONFIG": {"config": config, "capacity": 100},
        }
    }


@pytest.mark.parametrize(
    "backend",
    ["channels_redis.core.RedisChannelLayer", "channels_redis.pubsub.RedisPubSubChannelLayer"],
)
def test_channel_layers_channels_redis_backends(backend: str) -> None:
    """channels_redis backends receive one hosts entry, plus layer options."""
    config = parse_url("redis://h/1")
    setting = channel_layers(config, backend=backend, alias="chat", prefix="chat")
    assert setting == {
        "chat": {
            "BACKEND": backend,
            "CONFIG": {"hosts": [{"address": "redis://h:6379", "db": 1}], "prefix": "chat"},
        }
    }


@pytest.mark.parametrize(
    ("backend", "option", "hint"),
    [
        (CORE, "capcity", " (did you mean 'capacity'?)"),
        (CORE, "failover_timeout", ""),  # channels-ha's, not channels_redis's
        (PUBSUB, "capacity", ""),  # pubsub ignores it: a channel would not be bounded
        (PUBSUB, "serialiser_format", " (did you mean 'serializer_format'?)"),
    ],
)
def test_channel_layers_rejects_an_option_the_channels_redis_backend_lacks(
    backend: str, option: str, hint: str
) -> None:
    """Seen: channel_layers(backend=core, capcity=1500) built a setting without complaint and
    get_channel_layer() then raised TypeError (pubsub ignored it); configuration.md promises
    an error naming the option, with the closest known one, when the setting is built."""
    with pytest.raises(ConfigurationError) as caught:
        channel_layers(parse_url("redis://h"), backend=backend, **{option: 1500})
    assert str(caught.value).startswith(
        f"Channel layer option '{option}' is unknown to {backend}{hint}; expected one of "
    )


def test_channel_layers_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a config, channel_layers() reads REDIS_CONNECTION_CONFIG / REDIS_URL."""
    monkeypatch.setenv("REDIS_URL", "redis://env-host:6390/2")
    monkeypatch.delenv("REDIS_CONNECTION_CONFIG", raising=False)
    setting = channel_layers(backend="channels_redis.core.RedisChannelLayer", capacity=3000)
    assert setting["default"]["CONFIG"] == {
        "hosts": [{"address": "redis://env-host:6390", "db": 2}],
        "capacity": 3000,
    }


def test_channel_layers_rejects_options_it_builds() -> None:
    """Passing hosts or config yourself would be silently replaced, so it is an error."""
    with pytest.raises(ConfigurationError, match="'hosts' is built from the Redis configuration"):
        channel_layers(
            parse_url("redis://h"), backend="channels_redis.core.RedisChannelLayer", hosts=[]
        )


# -- redis-py clients (constructed, not connected) -----------------------------------------


def test_sync_single_client() -> None:
    """A single node gives a redis.Redis with TLS and credentials in its pool."""
    client = sync_client(parse_url(f"rediss://u:{SECRET}@h:6390/4?ssl_ca_certs=/ca.pem"))
    assert isinstance(client, redis.Redis)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["username"]) == ("h", 6390, 4, "u")
    assert client.connection_pool.connection_class is redis.connection.SSLConnection
    close_sync_client(client)


def test_sync_unix_client() -> None:
    """A unix socket config gives a unix-socket redis.Redis."""
    client = sync_client(parse_url("unix:///run/r.sock?db=2"))
    assert isinstance(client, redis.Redis)
    assert client.connection_pool.connection_kwargs["path"] == "/run/r.sock"
    close_sync_client(client)


def test_sync_sentinel_client() -> None:
    """A Sentinel config gives a sentinel-managed master client with TLS on both hops."""
    client = sync_client(_sentinel())
    assert isinstance(client, redis.Redis)
    pool = client.connection_pool
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
    assert pool.connection_class is redis.sentinel.SentinelManagedSSLConnection
    sentinel_pool = pool.sentinel_manager.sentinels[0].connection_pool
    assert sentinel_pool.connection_kwargs["username"] == "watcher"
    assert sentinel_pool.connection_class is redis.connection.SSLConnection
    close_sync_client(client)


def test_sync_sentinel_clients() -> None:
    """sync_sentinel_clients gives one client per sentinel with the sentinel credentials."""
    clients = sync_sentinel_clients(_sentinel())
    assert [c.connection_pool.connection_kwargs["port"] for c in clients] == [26379, 26380]
    assert {c.connection_pool.connection_kwargs["password"] for c in clients} == {"sentpw"}
    for client in clients:
        client.close()


async def test_async_clients_for_every_mode() -> None:
    """async_client builds the asyncio client type matching each mode."""
    single = async_client(parse_url("redis://h"))
    sentinel = async_client(_sentinel())
    cluster = async_client(parse_url("rediss+cluster://a:7000,b:7001"))
    assert isinstance(single, redis.asyncio.Redis)
    assert isinstance(sentinel.connection_pool, redis.asyncio.sentinel.SentinelConnectionPool)
    assert isinstance(cluster, redis.asyncio.cluster.RedisCluster)
    for client in (single, sentinel, cluster):
        await aclose_async_client(client)


async def test_async_sentinel_clients() -> None:
    """async_sentinel_clients gives one asyncio client per sentinel."""
    clients = async_sentinel_clients(_sentinel())
    assert len(clients) == 2
    assert clients[0].connection_pool.connection_class is redis.asyncio.connection.SSLConnection
    for client in clients:
        await client.aclose()


# -- against real servers (the sandbox's topologies) ---------------------------------------

CHANNELS_REDIS_KINDS = ("standalone", "tls", "sentinel")  # channels_redis has no Cluster


def _configs(topology: Any) -> list[RedisConfig]:
    """The topology's REDIS_URL and REDIS_CONNECTION_CONFIG, parsed."""
    return [parse_url(topology.url), parse_connection_config(topology.connection_config)]


@pytest.fixture
async def channels_redis_pools(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[Any]]:
    """Record channels_redis's pools to close their sentinel clients, which it never closes."""
    pools: list[Any] = []

    def recording_create_pool(host: dict[str, Any]) -> Any:
        pools.append(create_pool(host))
        return pools[-1]

    monkeypatch.setattr(channels_redis.core, "create_pool", recording_create_pool)
    monkeypatch.setattr(channels_redis.pubsub, "create_pool", recording_create_pool)
    yield pools
    for pool in pools:
        if isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool):
            await pool.sentinel_manager.aclose()


async def _round_trip(layer_class: type[Any], config: RedisConfig) -> None:
    """Send one message through a channels_redis layer built on our hosts entry, receive it."""
    layer = layer_class(hosts=[config.to_channels_redis_host()])
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "test.message", "text": "hello"})
    message = await asyncio.wait_for(layer.receive(channel), timeout=5)
    assert message == {"type": "test.message", "text": "hello"}
    await layer.flush()


def test_url_and_connection_config_agree(redis_topology: Any) -> None:
    """The sandbox's REDIS_URL and REDIS_CONNECTION_CONFIG parse to the same config."""
    from_url, from_json = _configs(redis_topology)
    assert from_url == from_json


@pytest.mark.redis_topologies(*CHANNELS_REDIS_KINDS)
@pytest.mark.usefixtures("channels_redis_pools")
@pytest.mark.parametrize("layer_class", [RedisChannelLayer, RedisPubSubChannelLayer])
async def test_channels_redis_round_trip(redis_topology: Any, layer_class: type[Any]) -> None:
    """channels_redis's core and pub/sub layers really carry a message through our entry."""
    for config in _configs(redis_topology):
        await _round_trip(layer_class, config)


@pytest.mark.usefixtures("channels_redis_pools")
async def test_channels_redis_through_tls_sentinels_with_auth(redis_sandbox_factory: Any) -> None:
    """Sentinel with TLS on both hops and separate passwords works through channels_redis."""
    topology = redis_sandbox_factory(
        "sentinel", tls=True, password="data/pass@1", sentinel_password="sentinel:pass"
    )
    config = parse_url(topology.url)
    assert isinstance(config, SentinelConfig)
    assert (config.tls is not None, config.sentinel_password is not None) == (True, True)
    for layer_class in (RedisChannelLayer, RedisPubSubChannelLayer):
        await _round_trip(layer_class, config)


async def test_async_client_reaches_the_master(redis_topology: Any) -> None:
    """async_client connects to the master: directly, through the sentinels, or the cluster."""
    client = async_client(parse_connection_config(redis_topology.connection_config))
    try:
        assert await client.ping() is True
        assert await client.set("channels-ha:interop", "1") is True
    finally:
        await aclose_async_client(client)


def test_sync_client_reaches_the_master(redis_topology: Any) -> None:
    """sync_client connects to the master: directly, through the sentinels, or the cluster."""
    client = sync_client(parse_url(redis_topology.url))
    try:
        assert client.ping() is True
        assert client.set("channels-ha:interop", "1") is True
    finally:
        close_sync_client(client)


async def test_sentinel_clients_answer(redis_sentinel: Any) -> None:
    """Every sentinel client authenticates and knows the master."""
    config = parse_url(redis_sentinel.url)
    assert isinstance(config, SentinelConfig)
    for client in async_sentinel_clients(config):
        try:
            assert config.master_name in await client.sentinel_masters()
        finally:
            await client.aclose()
