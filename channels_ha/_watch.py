"""Listening to the sentinels' announcements of a failover.

Two windows lose writes during a Sentinel failover, and announcements close both:

- A frozen master (SIGSTOP, a stuck VM) keeps its TCP connections open, so a client only
  notices a failover when a reply times out. ``+switch-master`` names the new master the
  moment the sentinels agree on it.
- A graceful handover (``SENTINEL FAILOVER``, a Kubernetes node drain) leaves the old master
  writable for a few seconds after its replica was promoted: writes sent there are discarded
  when it is turned into a replica. The leading sentinel announces the promotion as it starts
  it (``+failover-state-send-slaveof-noone``), so writes can wait for the new master instead.

Only the sentinel leading a failover announces its steps, and any of them may lead, so the
watch subscribes on every sentinel (one connection each per process). A sentinel may refuse
(a Redis 7 ACL user, as ``sentinel_username``, has no channel permission unless granted one):
the layer still works, noticing failovers later by other means (replies that stop coming, the
sentinels asked every 10 s), so the refusal is reported, and tried again once a minute.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ._constants import RECONNECT_BACKOFF_MAX_S
from ._resp import Endpoint, FutureSink, ReplyError, open_connection, pack
from ._server import Credentials
from ._throttle import LogThrottle
from ._timeouts import within
from .exceptions import ConnectionLost, RedisCommandError

logger = logging.getLogger("channels_ha.sentinel")

SWITCH_MASTER = "+switch-master"
FAILOVER_STARTS = "+failover-state-send-slaveof-noone"
FAILOVER_ABORTS = (
    "-failover-abort-not-elected",
    "-failover-abort-no-good-slave",
    "-failover-abort-slave-timeout",
    "+failover-end-for-timeout",
)
WATCH_PING_INTERVAL_S = 5.0  # how often a quiet subscription checks its sentinel answers
# A sentinel that refused the subscription is asked again this often (its permissions change
# only when an operator grants them), and the refusal logged at most this often.
REFUSED_RETRY_S = 60.0
CHANNELS = (SWITCH_MASTER, FAILOVER_STARTS, *FAILOVER_ABORTS)


class _Refused(RedisCommandError):
    """A sentinel answered SUBSCRIBE with an error (a user without the channel permission)."""


@dataclass(frozen=True)
class FailoverEvents:
    """What a watch reports: a failover started, was abandoned, or ended at an address."""

    started: Callable[[], None]
    aborted: Callable[[], None]
    switched: Callable[[str], None]


class _Subscription(FutureSink):
    """A connection in subscribe mode: pushes go to a callback, not to futures."""

    def __init__(self, on_message: Callable[[bytes, bytes], None]) -> None:
        super().__init__()
        self._on_message = on_message
        loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[None] = loop.create_future()
        self._subscribed: asyncio.Future[None] = loop.create_future()

    def subscribe(self, *channels: str) -> asyncio.Future[None]:
        """SUBSCRIBE answers once per channel, so it does not go through the reply queue."""
        assert self.protocol is not None
        self.protocol.write(pack("SUBSCRIBE", *channels))
        return self._subscribed

    def on_reply(self, reply: object) -> None:
        kind = reply[0] if isinstance(reply, list) and reply else None
        if kind == b"message":
            self._on_message(reply[1], reply[2])  # type: ignore[index]
        elif kind == b"subscribe":
            if not self._subscribed.done():
                self._subscribed.set_result(None)
        elif isinstance(reply, ReplyError) and not self._waiting:
            # SUBSCRIBE refused (NOPERM): no future waits for its reply. Given to the reply
            # queue, it raised IndexError in data_received, at every attempt.
            if not self._subscribed.done():
                self._subscribed.set_exception(_Refused(str(reply)))
        else:
            super().on_reply(reply)

    def on_lost(self, exc: BaseException | None) -> None:
        super().on_lost(exc)
        if not self.lost.done():
            self.lost.set_result(None)


class SentinelWatch:
    """Subscribes on every sentinel and reports failover events for ``master_name``."""

    def __init__(
        self,
        sentinels: Sequence[Endpoint],
        master_name: str,
        credentials: Credentials,
        connect_timeout_s: float,
        reply_timeout_s: float,
        events: FailoverEvents,
        client_name: str = "channels-ha",
    ) -> None:
        self._sentinels = list(sentinels)
        self._master_name = master_name
        self._credentials = credentials
        self._connect_timeout_s = connect_timeout_s
        self._reply_timeout_s = reply_timeout_s  # also bounds the PING of a quiet subscription
        self._events = events
        self._client_name = client_name
        self._tasks: list[asyncio.Task[None]] = []
        self._listening: set[Endpoint] = set()
        self._all_listening = asyncio.Event()
        self._refusals = LogThrottle(REFUSED_RETRY_S)

    async def subscribed(self) -> None:
        """Waits until every sentinel has confirmed the subscription (what a test that
        makes a failover happen needs before it starts one)."""
        await self._all_listening.wait()

    def start(self) -> None:
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._watch(s)) for s in self._sentinels]

    async def _watch(self, sentinel: Endpoint) -> None:
        """Keeps one sentinel subscribed, for as long as the watch runs."""
        while True:
            pause_s = RECONNECT_BACKOFF_MAX_S  # the sentinel is gone: pace retries
            try:
                await self._listen(sentinel)
            except _Refused as err:
                self._refused(sentinel, err)
                pause_s = REFUSED_RETRY_S
            except (ConnectionLost, RedisCommandError) as err:
                logger.debug("Sentinel watch on %s ended: %s", sentinel.describe(), err)
            await asyncio.sleep(pause_s)

    def _refused(self, sentinel: Endpoint, err: _Refused) -> None:
        """Says, at most once a minute, which user lacks which permission: a refusal
        repeats at every attempt, on every sentinel, until an operator grants it."""
        count = self._refusals.due()
        if not count:
            return
        username = self._credentials.username
        user = f"sentinel_username {username!r}" if username else "the default user"
        grant = " ".join(f"&{channel}" for channel in CHANNELS)
        logger.warning(
            "Sentinel %s refuses to let %s subscribe to its failover announcements (%s). "
            "Without them failovers are noticed later (by replies that stop coming, and by "
            "asking the sentinels every 10 s) and writes are not held during a handover. "
            "Grant the channels on every sentinel: ACL SETUSER %s %s (or allchannels); "
            "trying again every %d s (refusals since the last line: %d)",
            sentinel.describe(),
            user,
            err,
            username or "default",
            grant,
            REFUSED_RETRY_S,
            count,
            extra={"event": "sentinel_watch_refused", "refusals": count},
        )

    async def _listen(self, sentinel: Endpoint) -> None:
        subscription = _Subscription(self._message)
        protocol = await open_connection(sentinel, subscription, self._connect_timeout_s)
        subscription.protocol = protocol
        try:
            await self._subscribe(subscription)
            self._listening.add(sentinel)
            if len(self._listening) == len(self._sentinels):
                self._all_listening.set()
            await self._stay_subscribed(subscription)
        except asyncio.TimeoutError as err:
            raise ConnectionLost(f"sentinel {sentinel.describe()} did not answer") from err
        finally:
            self._listening.discard(sentinel)
            self._all_listening.clear()
            await protocol.aclose()

    async def _subscribe(self, subscription: _Subscription) -> None:
        auth = self._credentials.auth_command()
        commands = [auth] if auth else []
        commands.append(("CLIENT", "SETNAME", self._client_name))
        for command in commands:
            await within(subscription.call(*command), self._reply_timeout_s)
        subscribed = subscription.subscribe(*CHANNELS)
        await within(subscribed, self._reply_timeout_s)

    async def _stay_subscribed(self, subscription: _Subscription) -> None:
        """Waits until the connection ends; a sentinel that stops answering PING (frozen,
        partitioned without a reset) ends it too."""
        while True:
            done, _ = await asyncio.wait({subscription.lost}, timeout=WATCH_PING_INTERVAL_S)
            if done:
                return
            await within(subscription.call("PING"), self._reply_timeout_s)

    def _message(self, channel: bytes, data: bytes) -> None:
        event, parts = channel.decode(), data.decode(errors="replace").split()
        if event == SWITCH_MASTER:
            # "<master name> <old ip> <old port> <new ip> <new port>"
            if len(parts) == 5 and parts[0] == self._master_name:
                self._events.switched(f"{parts[3]}:{parts[4]}")
        elif _about(parts, self._master_name):
            if event == FAILOVER_STARTS:
                self._events.started()
            else:
                self._events.aborted()

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


def _about(parts: list[str], master_name: str) -> bool:
    """Whether an instance event concerns our master. Sentinels describe a replica (the
    promoted one, in "+failover-state-send-slaveof-noone") as "<type> <name> <ip> <port> @
    <master name> <master ip> <master port>", and the master itself (the aborts) as
    "master <name> <ip> <port>"."""
    if "@" in parts:
        at = parts.index("@")
        return at + 1 < len(parts) and parts[at + 1] == master_name
    return len(parts) >= 2 and parts[0] == "master" and parts[1] == master_name
