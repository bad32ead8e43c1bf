"""Connecting fails in ways other than OSError, and callers still get RedisUnavailable in time.

The configuration now rejects such hosts and credentials; these tests build the models with
``model_construct`` (no validation), as a bug or a future option might, to check that the
connect path itself never lets an unexpected error kill its task (before: "Task exception
was never retrieved", with the password in the logged repr, and every request hanging).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import traceback
from typing import Any

import pytest
from pydantic import SecretStr

from channels_ha import (
    ConfigurationError,
    RedisChannelLayer,
    RedisUnavailable,
    parse_connection_config,
)
from channels_ha._config import (
    ClusterConfig,
    NodeAddress,
    RedisConfig,
    SentinelConfig,
    SingleNodeConfig,
)
from channels_ha.sandbox import StandaloneTopology, TopologyFactory

FAILOVER_S = 1.0
MARGIN_S = 2.0
SECRET = "Geheimnis-\udce4-PW"  # a Latin-1 byte read from the environment (surrogateescape)


@pytest.mark.parametrize(
    "entry", [f"redis://:{SECRET}@redis.example.com:6379/0", {"host": "h", "password": SECRET}]
)
def test_a_layer_refuses_a_password_that_is_not_utf8(entry: Any) -> None:
    """At construction, naming the setting, never showing the password."""
    with pytest.raises(ConfigurationError, match="'password': expected text that") as caught:
        RedisChannelLayer(hosts=[entry])
    assert "Geheimnis" not in "".join(traceback.format_exception(caught.value))


def _node(host: str, port: int) -> NodeAddress:
    return NodeAddress.model_construct(host=host, port=port)


def _config(mode: str, node: NodeAddress, password: str | None) -> RedisConfig:
    """A config the validators never saw."""
    common: dict[str, Any] = {
        "password": None if password is None else SecretStr(password),
        "failover_timeout_s": FAILOVER_S,
    }
    if mode == "sentinel":
        secret = common.pop("password")
        return SentinelConfig.model_construct(
            sentinels=(node,), master_name="mymaster", sentinel_password=secret, **common
        )
    if mode == "cluster":
        return ClusterConfig.model_construct(startup_nodes=(node,), **common)
    return SingleNodeConfig.model_construct(address=node, **common)


async def _assert_gives_up(config: RedisConfig, caplog: pytest.LogCaptureFixture) -> None:
    """send() and receive() raise RedisUnavailable within the failover timeout; no task dies."""
    layer = RedisChannelLayer(config=config, capacity=10)
    caplog.set_level(logging.DEBUG)
    try:
        channel = await layer.new_channel()
        for operation in (layer.send("somewhere", {"type": "x"}), layer.receive(channel)):
            started = time.monotonic()
            with pytest.raises(RedisUnavailable) as failure:
                await asyncio.wait_for(operation, FAILOVER_S + MARGIN_S)
            assert time.monotonic() - started < FAILOVER_S + MARGIN_S
            assert SECRET not in str(failure.value)
    finally:
        await layer.close()
    gc.collect()  # a dead task's "never retrieved" is logged when it is collected
    logged = [record.getMessage() + str(record.exc_info) for record in caplog.records]
    assert not [line for line in logged if "never retrieved" in line]
    assert not [line for line in logged if SECRET in line]


@pytest.mark.parametrize("mode", ["single", "sentinel", "cluster"])
@pytest.mark.parametrize("host", ["a..b", "x" * 64 + ".invalid", "h\x00ost"])
async def test_a_host_the_resolver_rejects_gives_up_in_time(
    mode: str, host: str, caplog: pytest.LogCaptureFixture
) -> None:
    """getaddrinfo raises UnicodeError or ValueError for these, not OSError."""
    await _assert_gives_up(_config(mode, _node(host, 6379), None), caplog)


@pytest.mark.parametrize("mode", ["single", "sentinel", "cluster"])
async def test_a_password_that_is_not_utf8_gives_up_in_time_and_stays_secret(
    mode: str, redis_standalone: StandaloneTopology, caplog: pytest.LogCaptureFixture
) -> None:
    """AUTH cannot be encoded; a real server is reached first (as sentinel or cluster node
    too: the failure comes before any reply would tell them apart)."""
    node = _node(redis_standalone.node.host, redis_standalone.node.port)
    await _assert_gives_up(_config(mode, node, SECRET), caplog)


@pytest.mark.parametrize("as_hosts_entry", [True, False])
async def test_an_empty_password_means_none(
    as_hosts_entry: bool, redis_standalone: StandaloneTopology
) -> None:
    """As in a URL and in redis-py, which then sends no AUTH. Seen in REDIS_CONNECTION_CONFIG
    templated as os.environ.get("REDIS_PASSWORD", ""): summarised as "password set", and
    AUTH "" refused by a server without a password."""
    node = redis_standalone.node
    options = {"host": node.host, "port": node.port, "password": ""}
    if as_hosts_entry:
        layer = RedisChannelLayer(hosts=[options], failover_timeout=FAILOVER_S)
    else:
        config = parse_connection_config({**options, "failover_timeout": FAILOVER_S})
        assert "password set" not in config.summary()
        layer = RedisChannelLayer(config=config)
    try:
        await layer.send("empty-password", {"type": "through"})
        assert (await layer.receive("empty-password"))["type"] == "through"
    finally:
        await layer.close()


@pytest.mark.parametrize("key", ["port", "db", "socket_timeout", "failover_timeout"])
def test_a_boolean_is_not_a_number(key: str) -> None:
    """JSON true passed for 1 (port 1, database 1, one second) without a word."""
    with pytest.raises(ConfigurationError, match=f"'{key}': expected a"):
        RedisChannelLayer(hosts=[{"host": "h", key: True}])


async def test_a_user_without_a_password_authenticates_as_that_user(
    redis_sandbox_factory: TopologyFactory,
) -> None:
    """An ACL nopass user named in the configuration is who the layer connects as (seen:
    with no password, no AUTH was sent at all, and the layer ran as the default user)."""
    topology = redis_sandbox_factory("standalone")
    admin = topology.nodes[0].client()
    try:
        admin.execute_command("ACL", "SETUSER", "app", "on", "nopass", "~*", "&*", "+@all")
        node = topology.nodes[0]
        layer = RedisChannelLayer(
            hosts=[{"host": node.host, "port": node.port, "username": "app", "password": ""}],
            failover_timeout=FAILOVER_S,
        )
        try:
            await layer.send("as-app", {"type": "through"})
            clients = admin.client_list()
            name = layer._session()._shards[0].spec.settings.client_name
            assert {c["user"] for c in clients if c["name"].startswith(name)} == {"app"}
        finally:
            await layer.close()
    finally:
        admin.close()
