"""Listening to the sentinels' ``+switch-master`` announcements.

A frozen master (SIGSTOP, a stuck VM) keeps its TCP connections open, so a client only notices
the failover when a reply times out. The sentinels announce the new master the moment they
promote it; following the announcement moves traffic over without waiting for a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence

from ._constants import RECONNECT_BACKOFF_MAX_S
from ._resp import Endpoint, FutureSink, open_connection
from ._server import Credentials
from ._timeouts import within
from .exceptions import ConnectionLost, RedisCommandError

logger = logging.getLogger("channels_ha.sentinel")

SWITCH_MASTER = "+switch-master"


class _Subscription(FutureSink):
    """A connection in subscribe mode: pushes go to a callback, not to futures."""

    def __init__(self, on_message: Callable[[bytes], None]) -> None:
        super().__init__()
        self._on_message = on_message
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_reply(self, reply: object) -> None:
        if isinstance(reply, list) and reply and reply[0] == b"message":
            self._on_message(reply[2])
        else:
            super().on_reply(reply)

    def on_lost(self, exc: BaseException | None) -> None:
        super().on_lost(exc)
        if not self.lost.done():
            self.lost.set_result(None)


class SwitchMasterWatch:
    """Calls ``on_switch(address)`` when a sentinel announces a new master for ``master_name``."""

    def __init__(
        self,
        sentinels: Sequence[Endpoint],
        master_name: str,
        credentials: Credentials,
        connect_timeout_s: float,
        on_switch: Callable[[str], None],
        client_name: str = "channels-ha",
    ) -> None:
        self._client_name = client_name
        self._sentinels = list(sentinels)
        self._master_name = master_name
        self._credentials = credentials
        self._connect_timeout_s = connect_timeout_s
        self._on_switch = on_switch
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        index = random.randrange(len(self._sentinels))  # spread subscribers over sentinels
        while True:
            sentinel = self._sentinels[index % len(self._sentinels)]
            index += 1
            try:
                await self._listen(sentinel)
            except (ConnectionLost, RedisCommandError) as err:
                logger.debug("Sentinel watch on %s ended: %s", sentinel.describe(), err)
            # Listening ended (sentinel gone): try the next one after a short pause.
            await asyncio.sleep(RECONNECT_BACKOFF_MAX_S)

    async def _listen(self, sentinel: Endpoint) -> None:
        subscription = _Subscription(self._message)
        protocol = await open_connection(sentinel, subscription, self._connect_timeout_s)
        subscription.protocol = protocol
        try:
            auth = self._credentials.auth_command()
            if auth:
                await within(subscription.call(*auth), self._connect_timeout_s)
            name = subscription.call("CLIENT", "SETNAME", self._client_name)
            await within(name, self._connect_timeout_s)
            await within(subscription.call("SUBSCRIBE", SWITCH_MASTER), self._connect_timeout_s)
            await subscription.lost
        except asyncio.TimeoutError as err:
            raise ConnectionLost(f"sentinel {sentinel.describe()} did not answer") from err
        finally:
            await protocol.aclose()

    def _message(self, data: bytes) -> None:
        # "<master name> <old ip> <old port> <new ip> <new port>"
        parts = data.decode(errors="replace").split()
        if len(parts) == 5 and parts[0] == self._master_name:
            self._on_switch(f"{parts[3]}:{parts[4]}")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
