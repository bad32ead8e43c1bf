"""The one exception hierarchy of channels-ha.

Every error this package raises on purpose derives from :class:`ChannelsHAError`, except
``channels.exceptions.ChannelFull`` (the Channels specification names it) and ``TypeError``
for invalid channel names and messages (as every channel layer does).
"""

from __future__ import annotations


class ChannelsHAError(Exception):
    """Base class of every channels-ha error."""


class ConfigurationError(ChannelsHAError, ValueError):
    """The Redis configuration is invalid; the message names the source and the field."""


class RedisUnavailable(ChannelsHAError):
    """No usable Redis master answered within the failover timeout."""


class LayerClosed(RedisUnavailable):
    """The channel layer was closed before a request of its own could be answered."""

    def __init__(self, message: str = "the channel layer was closed") -> None:
        super().__init__(message)


class RedisCommandError(ChannelsHAError):
    """Redis answered a command with an error that retrying cannot fix."""


class ForeignChannel(ChannelsHAError, ValueError):
    """``receive()`` on a process-specific channel that another layer instance made
    (channels_redis raises ``AssertionError("Wrong client prefix")`` there)."""


class MalformedElement(ChannelsHAError, ValueError):
    """A list element that is not a channels-ha message (something else wrote it); raised
    internally, and the element is dropped."""


class ConnectionLost(ChannelsHAError):
    """A connection to Redis broke; raised internally and retried within the failover timeout."""


class SandboxError(ChannelsHAError):
    """A local Redis sandbox could not be started or controlled."""


class SandboxPortTaken(SandboxError):
    """A sandbox node found its port taken by another process (the first start of a topology
    tries fresh ports)."""


__all__ = [
    "ChannelsHAError",
    "ConfigurationError",
    "ConnectionLost",
    "ForeignChannel",
    "LayerClosed",
    "RedisCommandError",
    "RedisUnavailable",
    "SandboxError",
    "SandboxPortTaken",
]
