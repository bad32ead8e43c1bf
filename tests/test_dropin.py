"""A Channels app moves from channels_redis to channels-ha by changing only BACKEND.

The same settings dict, the same consumer: with ``channels_redis.core.RedisChannelLayer`` and
with ``channels_ha.RedisChannelLayer``, two WebSocket clients of a group chat see each other's
messages through Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from channels_ha.sandbox import Topology
from tests import django_settings

BACKENDS = ["channels_redis.core.RedisChannelLayer", "channels_ha.RedisChannelLayer"]


class ChatConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """A group chat, as written against channels_redis."""

    async def connect(self) -> None:
        await self.channel_layer.group_add("chat", self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard("chat", self.channel_name)

    async def receive_json(self, content: dict[str, Any], **kwargs: Any) -> None:
        await self.channel_layer.group_send(
            "chat", {"type": "chat.message", "text": content["text"]}
        )

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"text": event["text"]})


@pytest.fixture
def chat_settings(request: pytest.FixtureRequest, redis_standalone: Topology) -> Iterator[str]:
    """CHANNEL_LAYERS as a channels_redis user writes it, with the BACKEND under test."""
    django_settings.setup()
    from django.test import override_settings

    layers = {
        "default": {
            "BACKEND": request.param,
            "CONFIG": {"hosts": [redis_standalone.url], "capacity": 500, "expiry": 30},
        }
    }
    with override_settings(CHANNEL_LAYERS=layers):
        yield request.param


@pytest.mark.parametrize("chat_settings", BACKENDS, indirect=True)
async def test_group_chat_through_either_backend(chat_settings: str) -> None:
    """Two clients of one group each see what the other says."""
    layer = get_channel_layer()
    assert f"{type(layer).__module__}.{type(layer).__name__}".endswith(
        chat_settings.rsplit(".", 1)[1]
    )
    application = ChatConsumer.as_asgi()
    alice = WebsocketCommunicator(application, "/chat/")
    bob = WebsocketCommunicator(application, "/chat/")
    try:
        assert (await alice.connect())[0]
        assert (await bob.connect())[0]
        await alice.send_json_to({"text": "hello from alice"})
        assert await bob.receive_json_from(timeout=5) == {"text": "hello from alice"}
        assert await alice.receive_json_from(timeout=5) == {"text": "hello from alice"}
    finally:
        await alice.disconnect()
        await bob.disconnect()
        await layer.flush()
        await _close(layer)


async def _close(layer: Any) -> None:
    close = getattr(layer, "close_pools", None)
    if close is not None:
        await close()
