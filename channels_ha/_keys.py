"""The Redis key layout.

Every key carries a hash tag (the part in braces) naming the one channel, inbox or group it
belongs to, so that each server script touches keys of a single Cluster slot, and a prefix so
that ``flush()`` can find them with SCAN. Channel and group names cannot contain braces (the
Channels name rules forbid them), so the tag is always exactly the name.
"""

from __future__ import annotations

from dataclasses import dataclass

from .exceptions import ConfigurationError

_GLOB_SPECIALS = str.maketrans({c: f"\\{c}" for c in "*?[]\\"})


@dataclass(frozen=True)
class KeyLayout:
    """Builds the keys of one layer from its ``prefix`` option."""

    prefix: str

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str) or not self.prefix:
            raise ConfigurationError("Channel layer option 'prefix' must be a non-empty string.")
        if "{" in self.prefix or "}" in self.prefix:
            raise ConfigurationError(
                f"Channel layer option 'prefix' must not contain braces (got {self.prefix!r}): "
                "braces would change which Redis Cluster slot the keys land in."
            )

    def channel(self, channel: str) -> str:
        """The list holding messages of a normal channel."""
        return f"{self.prefix}:c:{{{channel}}}"

    def inbox(self, non_local_name: str) -> str:
        """The list holding messages of all process-specific channels of one process."""
        return f"{self.prefix}:i:{{{non_local_name}}}"

    def dedupe(self, channel: str, sender: str) -> str:
        """The last sequence number of ``sender`` applied to a normal channel."""
        return f"{self.prefix}:d:{{{channel}}}:{sender}"

    def group(self, group: str) -> str:
        """The sorted set of a group's member channels, scored by time of joining."""
        return f"{self.prefix}:g:{{{group}}}"

    def epoch(self) -> str:
        """When the data of this server began (ms): missing or young after a restart empty."""
        return f"{self.prefix}:epoch"

    def scan_pattern(self) -> str:
        """A SCAN MATCH pattern for every key of this layer."""
        return self.prefix.translate(_GLOB_SPECIALS) + ":*"
