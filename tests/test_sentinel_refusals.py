"""Sentinels that turn the configuration away (a refused password or ACL, an unknown master
name): the channel layer and the Django cache raise RedisCommandError at once when most of
them do and none names a master, and wait as for a failover otherwise (docs/failover.md).

Seen before: a wrong sentinel_password or master name made every layer operation wait the
whole failover_timeout (30 s by default) and raise RedisUnavailable, while a wrong data-node
password was raised at once; the cache waited for a wrong master name, and raised at once
when a single sentinel refused while the others were down.
"""

from __future__ import annotations

import asyncio
import re
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from channels_ha import RedisChannelLayer, RedisCommandError, RedisUnavailable
from channels_ha._hints import hints_for
from channels_ha._sources import parse_connection_config
from channels_ha.cache import RedisCache
from channels_ha.sandbox import SentinelTopology, TopologyFactory
from tests import django_settings

from .test_docs import example

SECRETS = {"password": "data-secret-1", "sentinel_password": "sentinel-secret-2"}
WRONG = "wrong-secret-3"
AT_ONCE_S = 1.0  # a refusal is known as soon as the sentinels have answered
FAILOVER_S = 10.0  # what a refusal taken for a failover waited
SHORT_FAILOVER_S = 1.0  # for the cases that wait

CLIENTS = ["layer", "cache"]


@pytest.fixture(autouse=True, scope="module")
def _django() -> None:
    """Django is set up for the cache."""
    django_settings.setup()


def _topology(factory: TopologyFactory) -> SentinelTopology:
    topology = factory("sentinel", tls=False, **SECRETS)
    assert isinstance(topology, SentinelTopology)
    return topology


async def _layer_send(options: dict[str, Any]) -> None:
    config = parse_connection_config(options)
    hints_for(config).master.forget()  # the sentinels are asked, not a master named before
    layer = RedisChannelLayer(config=config, prefix=f"refusals{uuid.uuid4().hex[:8]}")
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "through"})
        assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "through"
    finally:
        await layer.close()


def _cache_set(options: dict[str, Any]) -> None:
    config = parse_connection_config(options)
    cache = RedisCache(
        "", {"KEY_PREFIX": f"refusals{uuid.uuid4().hex[:8]}", "OPTIONS": {"config": config}}
    )
    try:
        cache.set("key", "value")
        assert cache.get("key") == "value"
    finally:
        cache.disconnect()


async def _outcome(client: str, options: dict[str, Any]) -> tuple[BaseException | None, float]:
    """What an operation of ``client`` with ``options`` raised (None: it worked), and when."""
    started = time.monotonic()
    try:
        if client == "layer":
            await _layer_send(options)
        else:
            await asyncio.to_thread(_cache_set, options)
    except (RedisCommandError, RedisUnavailable) as err:
        return err, time.monotonic() - started
    return None, time.monotonic() - started


def _refused_at_once(error: BaseException | None, took_s: float) -> str:
    """The message of a RedisCommandError raised at once, with no secret in its traceback."""
    assert isinstance(error, RedisCommandError), f"{error!r} after {took_s:.1f} s"
    assert took_s < AT_ONCE_S, f"{took_s:.1f} s: waited as if for a failover"
    shown = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    assert not any(secret in shown for secret in [*SECRETS.values(), WRONG])
    return str(error)


def _refuse_password(topology: SentinelTopology, *indexes: int) -> None:
    """The sentinels at ``indexes`` take another password from now on (a rotation)."""
    for index in indexes:
        admin = topology.sentinels[index].client()
        admin.execute_command("ACL", "SETUSER", "default", "resetpass", ">rotated-secret-4")
        admin.close()


@pytest.mark.parametrize("client", CLIENTS)
async def test_every_sentinel_refusing_raises_at_once(
    redis_sandbox_factory: TopologyFactory, client: str
) -> None:
    """A wrong sentinel_password and a sentinel user without SENTINEL MASTER each raise
    RedisCommandError within a second, naming the settings to check (before: the layer
    raised RedisUnavailable after the 10 s failover_timeout for both)."""
    topology = _topology(redis_sandbox_factory)
    for sentinel in topology.sentinels:
        admin = sentinel.client()
        admin.execute_command(
            "ACL", "SETUSER", "watcher", "on", ">watcher-secret", "+@all", "-sentinel|master"
        )
        admin.close()
    right = {**topology.connection_config, "failover_timeout": FAILOVER_S}
    assert (await _outcome(client, right))[0] is None
    cases: list[tuple[dict[str, Any], list[str]]] = [
        (
            {"sentinel_password": WRONG},
            ["3 of 3", "refused the credentials", "'sentinel_username'/'sentinel_password'"],
        ),
        (
            {"sentinel_username": "watcher", "sentinel_password": "watcher-secret"},
            ["refused the user a command", "'sentinel_username'", "SENTINEL MASTER"],
        ),
    ]
    for change, named in cases:
        message = _refused_at_once(*await _outcome(client, {**right, **change}))
        assert all(words in message for words in named), message
        assert "check 'username'/'password'" not in message  # not the data nodes' settings


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_minority_of_refusing_sentinels_is_waited_out(
    redis_sandbox_factory: TopologyFactory, client: str
) -> None:
    """One sentinel refusing (a rolling restart or a password rotation under way) costs
    nothing while another names the master, and with the others down it is waited out as a
    failover: RedisUnavailable after failover_timeout, naming the refusal (before: the cache
    raised RedisCommandError at once, failing a deployment that a sentinel's return cures)."""
    topology = _topology(redis_sandbox_factory)
    options = {**topology.connection_config, "failover_timeout": SHORT_FAILOVER_S}
    _refuse_password(topology, 0)
    assert (await _outcome(client, options))[0] is None
    topology.sentinels[1].kill()
    assert (await _outcome(client, options))[0] is None  # 1 refuses, 1 down, 1 names it
    topology.sentinels[2].kill()
    error, took_s = await _outcome(client, options)
    assert isinstance(error, RedisUnavailable), f"{error!r} after {took_s:.1f} s"
    assert took_s >= SHORT_FAILOVER_S / 2  # waited (the cache stops a backoff short of it)
    refused = "refused authentication" if client == "layer" else "AuthenticationError"
    assert refused in str(error), str(error)


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_master_no_sentinel_knows_is_waited_out_and_named(
    redis_sandbox_factory: TopologyFactory, client: str
) -> None:
    """A master name that no sentinel knows is waited for, as a deployment coming up (an
    operator runs SENTINEL MONITOR after the sentinels start), then named: RedisUnavailable
    after failover_timeout saying which master and where to set its name (before: the cache
    said RedisUnavailable for lack of a master, not which name)."""
    topology = _topology(redis_sandbox_factory)
    options = {
        **topology.connection_config,
        "failover_timeout": SHORT_FAILOVER_S,
        "master_name": "nomaster",
    }
    error, took_s = await _outcome(client, options)
    assert isinstance(error, RedisUnavailable), f"{error!r} after {took_s:.1f} s"
    assert took_s >= SHORT_FAILOVER_S / 2  # waited (the cache stops a backoff short of it)
    assert "nomaster" in str(error), str(error)


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_majority_of_refusing_sentinels_raises_at_once(
    redis_sandbox_factory: TopologyFactory, client: str
) -> None:
    """Two of three sentinels refusing and the third down: the configuration is wrong for
    most of the deployment, and no failover changes that (before: the layer waited the
    10 s failover_timeout)."""
    topology = _topology(redis_sandbox_factory)
    options = {**topology.connection_config, "failover_timeout": FAILOVER_S}
    _refuse_password(topology, 0, 1)
    assert (await _outcome(client, options))[0] is None  # the third names the master
    topology.sentinels[2].kill()
    message = _refused_at_once(*await _outcome(client, options))
    assert "(2 of 3, and none named a master" in message, message
    assert "'sentinel_password'" in message


async def test_the_documented_message_is_the_real_one(
    redis_sandbox_factory: TopologyFactory,
) -> None:
    """docs/failover.md shows the layer's error for a refused sentinel_password as it is."""
    topology = _topology(redis_sandbox_factory)
    options = {**topology.connection_config, "sentinel_password": WRONG}
    error, took_s = await _outcome("layer", options)
    message = _refused_at_once(error, took_s)
    shown = example("docs/failover.md", "sentinels-refused")
    addresses: Callable[[str], list[str]] = re.compile(r"tcp://[\d.]+:\d+").findall
    assert len(addresses(shown)) == len(addresses(message)) == 3
    for documented, real in zip(addresses(shown), addresses(message), strict=True):
        shown = shown.replace(documented, real)
    assert shown == message
