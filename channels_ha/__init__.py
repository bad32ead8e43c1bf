"""channels-ha: a highly available, fast Redis channel layer for Django Channels."""

from __future__ import annotations

from .exceptions import (
    ChannelsHAError,
    ConfigurationError,
    RedisCommandError,
    RedisUnavailable,
    SandboxError,
)

__version__ = "0.1.0"

__all__ = [
    "ChannelsHAError",
    "ConfigurationError",
    "RedisCommandError",
    "RedisUnavailable",
    "SandboxError",
    "__version__",
]
