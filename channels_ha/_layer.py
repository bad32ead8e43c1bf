"""``channels_ha.RedisChannelLayer``: the public channel layer."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from channels.layers import BaseChannelLayer

from ._codec import MessageCodec
from ._constants import (
    DEFAULT_CAPACITY,
    DEFAULT_EXPIRY_S,
    DEFAULT_GROUP_EXPIRY_S,
    DEFAULT_PREFIX,
    DEFAULT_SERIALIZER_FORMAT,
    MAX_EXPIRY_S,
    MAX_OPTION_S,
    REPLAY_MAX_BYTES,
)
from ._core import LayerCore
from ._handover import take_over
from ._keys import KeyLayout
from ._options import did_you_mean
from ._session import Session
from ._shard import ShardSpec
from ._specs import shard_spec
from ._stats import LayerStatistics, statistics_of
from .exceptions import ConfigurationError, ForeignChannel, RedisUnavailable

if TYPE_CHECKING:
    from ._config import RedisConfig

_VALID_NAMES_REMEMBERED = 10_000  # bounded: channel names come and go with connections


# Every layer of the process, started over in a forked child (see _start_as_this_process).
_LAYERS: weakref.WeakSet[RedisChannelLayer] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for layer in list(_LAYERS):
        layer._start_as_this_process()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)


class RedisChannelLayer(BaseChannelLayer):  # type: ignore[misc]
    """A drop-in for ``channels_redis.core.RedisChannelLayer`` that survives failovers.

    Takes the options of channels_redis with the same meaning and defaults, plus ``config``
    (a validated configuration, as :func:`channels_ha.channel_layers` puts in the settings),
    ``failover_timeout`` (seconds an operation waits for a usable master),
    ``replica_acks`` / ``replica_ack_timeout`` (wait for that many replicas to acknowledge
    each message: Redis ``WAIT``), and ``replay_max_bytes`` (the most this process keeps of
    its recent writes, to write them again after a failover; 0 keeps none). Without
    ``hosts`` or ``config`` it reads ``REDIS_CONNECTION_CONFIG`` / ``REDIS_URL`` from the
    environment.
    ``random_prefix_length`` is accepted and ignored: messages are not kept in sorted sets.
    """

    extensions: ClassVar[list[str]] = ["groups", "flush"]

    def __init__(
        self,
        hosts: Sequence[Any] | None = None,
        prefix: str = DEFAULT_PREFIX,
        expiry: float = DEFAULT_EXPIRY_S,
        group_expiry: int = DEFAULT_GROUP_EXPIRY_S,
        capacity: int = DEFAULT_CAPACITY,
        channel_capacity: Mapping[Any, int] | None = None,
        symmetric_encryption_keys: Iterable[str | bytes | bytearray] | None = None,
        random_prefix_length: int = 12,
        serializer_format: str = DEFAULT_SERIALIZER_FORMAT,
        *,
        config: RedisConfig | None = None,
        failover_timeout: float | None = None,
        replica_acks: int = 0,
        replica_ack_timeout: float = 1.0,
        replay_max_bytes: int = REPLAY_MAX_BYTES,
        **unknown: object,
    ) -> None:
        if unknown:  # Channels builds the layer as BACKEND(**CONFIG): a typo lands here
            raise _unknown_option(next(iter(unknown)))
        _check_options(
            expiry, group_expiry, capacity, replica_acks, failover_timeout, replica_ack_timeout
        )
        _check_replay_max_bytes(replay_max_bytes)
        _check_channel_capacity(channel_capacity)
        super().__init__(expiry=expiry, capacity=capacity, channel_capacity=channel_capacity)
        self.channel_capacity = self.compile_capacities(channel_capacity or {})
        self.group_expiry = group_expiry
        self.prefix = prefix
        self.configs = _configs(hosts, config, failover_timeout)
        codec = MessageCodec(serializer_format, symmetric_encryption_keys, expiry)

        def new_core() -> LayerCore:
            return LayerCore(
                shards=self._shard_specs(),
                keys=KeyLayout(prefix),
                codec=codec,
                expiry_s=expiry,
                group_expiry_s=group_expiry,
                capacity_of=self._capacity_lookup(),
                replica_acks=replica_acks,
                replica_ack_timeout_s=replica_ack_timeout,
                replay_max_bytes=replay_max_bytes,
            )

        self._new_core = new_core
        self._valid_channels: set[str] = set()
        self._start_as_this_process()
        _LAYERS.add(self)

    def _start_as_this_process(self) -> None:
        """What belongs to one process: its inbox (``client_prefix``), connections, writes
        kept for replay, memberships. A child forked after the layer was built (gunicorn
        --preload, a module-level ``get_channel_layer()``) starts over: with the parent's
        prefix the workers would share one inbox and pop each other's messages, and with
        its sessions they would share sockets and sender ids (the replies read by the wrong
        process, one's messages taken for the other's retries)."""
        self.client_prefix = uuid.uuid4().hex
        self._core = self._new_core()
        self._sessions: dict[asyncio.AbstractEventLoop, Session] = {}
        self._core.memberships.waiting = self._waiting_on

    def _waiting_on(self, channel: str) -> bool:
        return any(
            session.deliveries.waiting_on(channel) for session in list(self._sessions.values())
        )

    def _shard_specs(self) -> list[ShardSpec]:
        name = f"channels-ha:{os.getpid()}:{self.client_prefix[:8]}"
        return [shard_spec(config, index, name) for index, config in enumerate(self.configs)]

    def _capacity_lookup(self) -> Any:
        if not self.channel_capacity:
            default = self.capacity
            return lambda channel: default
        cache: dict[str, int] = {}

        def capacity_of(channel: str) -> int:
            capacity = cache.get(channel)
            if capacity is None:
                capacity = cache[channel] = self.get_capacity(channel)
                if len(cache) > 10_000:
                    cache.clear()
            return capacity

        return capacity_of

    def _session(self) -> Session:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            if session is not None and session.ended_with_loop:
                raise RedisUnavailable(
                    "the event loop is shutting down, and the channel layer's connections "
                    "in it were closed"
                )
            for other in [other for other in list(self._sessions) if other.is_closed()]:
                gone = self._sessions.pop(other, None)  # async_to_sync threads may prune too
                if gone is not None:  # (a loop closed without shutting down, its session too)
                    gone.abandon()
            session = self._sessions[loop] = Session(self._core, self.client_prefix)
        return session

    def require_valid_channel_name(self, name: str, receive: bool = False) -> bool:
        """Checks each name once: a regex per send and receive is a measurable share of
        the per-message cost."""
        if self._known_channel(name) and not receive:
            return True
        super().require_valid_channel_name(name, receive)
        if len(self._valid_channels) >= _VALID_NAMES_REMEMBERED:
            self._valid_channels.clear()
        self._valid_channels.add(name)
        return True

    def _known_channel(self, name: object) -> bool:
        """Whether ``name`` passed the checks already; an unhashable one gets the name rules'
        TypeError from the checks, not "unhashable type"."""
        try:
            return name in self._valid_channels
        except TypeError:
            return False

    def _require_own_channel(self, channel: str) -> None:
        """Receiving on another layer's process-specific channel would pop that layer's whole
        inbox here, and its messages for other channels would wait here in vain."""
        if not channel[: channel.index("!")].endswith(self.client_prefix):
            raise ForeignChannel(
                f"Channel {channel!r} is a process-specific channel of another channel layer "
                "instance (another process, or a layer built again since): only the layer "
                "whose new_channel() made it can receive on it."
            )

    # -- the channel layer API -------------------------------------------------------------

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Sends a message to a channel; raises ChannelFull when it is at capacity."""
        # The hot path of every send: the checks' and the session's usual case inline.
        if not self._known_channel(channel):
            self.require_valid_channel_name(channel)
        if not isinstance(message, dict):
            _require_message(message)
        if RESERVED_KEY in message:  # channels_redis: AssertionError, as for a non-dict
            raise TypeError(f"message must not contain the key {RESERVED_KEY!r} (reserved)")
        session = self._sessions.get(asyncio.get_running_loop())
        if session is None or session.closed:
            session = self._session()
        await session.send(channel, message)

    async def receive(self, channel: str) -> dict[str, Any]:
        """The next message on ``channel``, waiting for one (through failovers too)."""
        if not self._known_channel(channel):
            self.require_valid_channel_name(channel)
        session = self._sessions.get(asyncio.get_running_loop())
        if session is None or session.closed:
            session = self._session()
        if "!" in channel:
            self._require_own_channel(channel)
            if len(self._sessions) > 1:
                self._refuse_a_second_receiving_loop(session)
                take_over(session, lambda: list(self._sessions.values()), channel)
        return await session.receive(channel)

    def _refuse_a_second_receiving_loop(self, session: Session) -> None:
        """The process-specific channels of a process share one inbox in Redis: an event loop
        waiting on them pops messages for the others, which would then wait in vain. As
        channels_redis does, refuse rather than lose them."""
        for other in list(self._sessions.values()):
            if other is session or other.closed or other.loop.is_closed():
                continue  # (a loop closed without shutting down leaves its waiters behind)
            if other.deliveries.receiving_inbox():
                raise RuntimeError(
                    "Two event loops are trying to receive() on one channel layer at once! "
                    "Process-specific channels (from new_channel()) of one process share one "
                    "inbox, which one event loop at a time receives from: receive in the "
                    "event loop already receiving, or on a channel without '!'."
                )

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new process-specific channel name; its messages arrive in this process's inbox."""
        return f"{prefix}.{self.client_prefix}!{uuid.uuid4().hex}"

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self._session().group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self._session().group_discard(group, channel)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Sends to every channel of the group; full channels are skipped, as the spec says."""
        self.require_valid_group_name(group)
        _require_message(message)
        if RESERVED_KEY in message:  # channels_redis overwrites it, and receive() drops it
            message = {key: value for key, value in message.items() if key != RESERVED_KEY}
        await self._session().group_send(group, message)

    async def flush(self) -> None:
        """Deletes every message and group of this layer's prefix (SCAN, never KEYS).

        The process forgets its writes kept for replay (every event loop's); other processes
        cannot be told, and may write their last 2 s again after a failover. Their group
        memberships it deleted stay deleted: it records each as discarded (kept for
        group_expiry, like the records of group_discard, which it keeps too), and their
        re-assertions skip those."""
        await self._session().flush()

    async def close(self) -> None:
        """Closes this event loop's connections, returning undelivered messages to Redis;
        receive() calls still waiting raise RedisUnavailable."""
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is not None:
            if not session.ended_with_loop:  # kept then: later calls in this loop must fail
                self._sessions.pop(loop, None)
            await session.aclose()

    close_pools = close  # the name channels_redis uses

    def statistics(self) -> LayerStatistics:
        """Counters and per-shard state (master, failovers seen, reconnects), for health."""
        return statistics_of(self._core, list(self._sessions.values()))

    def __repr__(self) -> str:
        hosts = ", ".join(_describe(config) for config in self.configs)
        return f"<{type(self).__name__} prefix={self.prefix!r} hosts=[{hosts}]>"


def _describe(config: RedisConfig) -> str:
    """``sentinel mymaster via a:26379, b:26379``; never credentials."""
    nodes = ", ".join(config.node_labels())
    if config.mode == "sentinel":
        return f"sentinel {config.master_name} via {nodes}"
    return f"{config.mode} {nodes}"


# channels_redis carries a process-specific channel's name inside the message under this key:
# its send() refuses a message that has it, its group_send() overwrites it and receive()
# removes it. channels-ha does the same, so that no application depends on it either way.
RESERVED_KEY = "__asgi_channel__"


def _require_message(message: object) -> None:
    """A non-dict message is a TypeError, as the Channels specification asks (channels_redis
    raises AssertionError)."""
    if not isinstance(message, dict):
        raise TypeError(f"message must be a dict, not {type(message).__name__}")


def _unknown_option(name: str) -> ConfigurationError:
    """A misspelt option named, with the closest known one, instead of Python's "__init__()
    got an unexpected keyword argument", which names neither the setting nor the options."""
    parameters = inspect.signature(RedisChannelLayer.__init__).parameters.values()
    known = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self"]
    known += [p.name for p in parameters if p.kind is p.KEYWORD_ONLY]
    return ConfigurationError(
        f"Channel layer option {name!r} is unknown{did_you_mean(name, known)}; expected one "
        f"of {', '.join(known)}."
    )


def _check_options(
    expiry: float,
    group_expiry: int,
    capacity: int,
    replica_acks: int,
    failover_timeout: float | None,
    replica_ack_timeout: float,
) -> None:
    """Rejects what would otherwise fail at the first send, or never: NaN compares false with
    every limit, infinity overflows the millisecond timeouts, True passes for 1, and an
    expiry overflowing a message's 13 digits lost every message (see MAX_EXPIRY_S)."""
    seconds = f"a positive number of seconds, finite and at most {MAX_OPTION_S:,.0f}"
    _require_number(
        "expiry",
        expiry,
        f"a positive number of seconds, finite and at most {MAX_EXPIRY_S:,.0f} (about 31 "
        "years: a message carries its expiry time in 13 digits of milliseconds)",
        MAX_EXPIRY_S,
    )
    _require_number("group_expiry", group_expiry, seconds)
    if group_expiry % 1:  # Redis keeps a group for whole seconds (EXPIRE)
        raise ConfigurationError(
            "Channel layer option 'group_expiry' must be a whole number of seconds, at most "
            f"{MAX_OPTION_S:,.0f} (got {group_expiry!r})."
        )
    _require_number("replica_ack_timeout", replica_ack_timeout, seconds)
    if failover_timeout is not None:
        _require_number("failover_timeout", failover_timeout, seconds)
    _require_count("capacity", capacity, minimum=1)
    _require_count("replica_acks", replica_acks, minimum=0)


def _require_number(
    name: str, value: object, expectation: str, maximum: float = MAX_OPTION_S
) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= maximum  # False for NaN too
    ):
        raise ConfigurationError(
            f"Channel layer option {name!r} must be {expectation} (got {value!r})."
        )


def _require_count(name: str, value: object, *, minimum: int) -> None:
    """An integer (a float only if whole, as channels_redis settings sometimes carry)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and value % 1 == 0 and value >= minimum:  # type: ignore[operator]  # NaN, inf: no
        return
    expectation = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    raise ConfigurationError(
        f"Channel layer option {name!r} must be {expectation} (got {value!r})."
    )


def _check_replay_max_bytes(value: object) -> None:
    """A whole number of bytes: a float is refused (``32e6`` reads as bytes to nobody), and
    so is True, which would pass for 1."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return
    raise ConfigurationError(
        "Channel layer option 'replay_max_bytes' must be an integer number of bytes >= 0, "
        f"such as {REPLAY_MAX_BYTES} (32 MiB, the default) or 0 to keep none (got {value!r})."
    )


def _check_channel_capacity(channel_capacity: Mapping[Any, int] | None) -> None:
    if channel_capacity is None:
        return
    if not isinstance(channel_capacity, Mapping):
        raise ConfigurationError(
            "Channel layer option 'channel_capacity' must be a dict of channel name patterns "
            f"to capacities (got {type(channel_capacity).__name__})."
        )
    for pattern, capacity in channel_capacity.items():
        if not isinstance(pattern, str | re.Pattern):
            raise ConfigurationError(
                "Channel layer option 'channel_capacity' must map channel name patterns (a "
                f"glob string or a compiled regex) to capacities (got the key {pattern!r})."
            )
        _require_count(f"channel_capacity[{pattern!r}]", capacity, minimum=1)


def host_entries(hosts: object, where: str) -> Sequence[Any]:
    """``hosts`` as a list of entries. The order picks each channel's shard, so every process
    must see the same order: a set or other unordered collection is refused. Empty
    (``None``, ``[]``, ``""``) means not given, as in channels_redis."""
    if not hosts and not isinstance(hosts, Mapping):
        return ()
    if isinstance(hosts, list | tuple):
        return hosts
    if isinstance(hosts, Mapping):
        raise ConfigurationError(
            f"{where} must be a list of hosts, got a single dict: wrap it in a list, "
            "hosts=[{...}], even for one host."
        )
    expected = "a list of hosts (Redis URLs, (host, port) pairs or dicts), even for one host"
    raise ConfigurationError(f"{where} must be {expected} (got {type(hosts).__name__}).")


def _configs(
    hosts: Sequence[Any] | None, config: RedisConfig | None, failover_timeout: float | None
) -> list[RedisConfig]:
    if config is not None and hosts:
        raise ConfigurationError("Give the channel layer either 'config' or 'hosts', not both.")
    configs: Iterable[RedisConfig]
    if config is not None:
        configs = [config]
    elif entries := host_entries(hosts, "Channel layer option 'hosts'"):
        from ._sources import parse_hosts_entry

        configs = [
            parse_hosts_entry(entry, source=f"channel layer option hosts[{index}]")
            for index, entry in enumerate(entries)
        ]
    else:
        from ._sources import load_config

        configs = [load_config()]
    if failover_timeout is not None:
        configs = [c.model_copy(update={"failover_timeout_s": failover_timeout}) for c in configs]
    return list(configs)
