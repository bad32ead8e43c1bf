"""The sentinel watch when a sentinel refuses the subscription: a Redis 7 ACL user, given as
``sentinel_username``, may use no channel unless granted one (``acl-pubsub-default`` is
``resetchannels``). The layer works on without the announcements; the refusal is said once,
clearly, and not tried again at once."""

from __future__ import annotations

import asyncio
import logging

import pytest

from channels_ha import RedisChannelLayer, parse_connection_config
from channels_ha._constants import SENTINEL_WATCH_DELAY_S
from channels_ha.sandbox import RedisNode, SentinelTopology, TopologyFactory

USER, PASSWORD = "watcher", "watch-secret"
# How long the refused watch is looked at for another attempt: no event tells that nothing
# happens. Before the fix each sentinel was asked again within about 2.5 s.
QUIET_WINDOW_S = 4.0


async def denied_subscriptions(node: RedisNode) -> int:
    """How many times ``node`` refused ``USER`` a channel (its ``ACL LOG`` counts them)."""
    client = node.async_client()
    try:
        entries = await client.execute_command("ACL", "LOG")
    finally:
        await client.aclose()
    return sum(
        int(entry[b"count"])
        for entry in entries
        if entry[b"reason"] == b"channel" and entry[b"username"] == USER.encode()
    )


async def test_a_sentinel_refusing_the_subscription_is_reported_once_and_not_retried_at_once(
    redis_sandbox_factory: TopologyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Seen: the refusal (an error reply) went to the reply queue, which had nothing waiting:
    IndexError in data_received ("Fatal error: protocol.data_received() call failed") at each
    attempt, every sentinel asked again every ~2.5 s, and nothing said why."""
    sentinel = redis_sandbox_factory("sentinel")
    assert isinstance(sentinel, SentinelTopology)
    for node in sentinel.sentinels:  # every right but channels
        client = node.async_client()
        try:
            await client.execute_command(
                "ACL", "SETUSER", USER, "on", f">{PASSWORD}", "~*", "+@all"
            )
        finally:
            await client.aclose()
    config = {
        **sentinel.connection_config,
        "sentinel_username": USER,
        "sentinel_password": PASSWORD,
    }
    layer = RedisChannelLayer(config=parse_connection_config(config), prefix="watchrefused")
    try:
        with caplog.at_level(logging.DEBUG):
            await layer.send("refused.watch", {"type": "before"})
            shard = layer._session()._shards[0]
            await asyncio.wait_for(shard._watch_begun.wait(), SENTINEL_WATCH_DELAY_S + 5)
            await asyncio.sleep(QUIET_WINDOW_S)  # a window: see QUIET_WINDOW_S
            await layer.send("refused.watch", {"type": "after"})
            received = [(await layer.receive("refused.watch"))["type"] for _ in range(2)]
    finally:
        await layer.close()
    assert received == ["before", "after"]
    errors = [r.getMessage()[:120] for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors
    refused = [r for r in caplog.records if getattr(r, "event", None) == "sentinel_watch_refused"]
    assert len(refused) == 1, "three sentinels refusing at once make one line"
    message = refused[0].getMessage()
    assert "sentinel_username 'watcher'" in message
    assert "ACL SETUSER watcher &+switch-master" in message
    assert PASSWORD not in message
    attempts = [await denied_subscriptions(node) for node in sentinel.sentinels]
    assert attempts == [1, 1, 1], "subscriptions tried again within the window"
