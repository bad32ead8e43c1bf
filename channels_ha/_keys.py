"""The Redis key layout.

Every key carries a hash tag (the part in braces) so that each server script touches keys of
a single Cluster slot, and a prefix so that ``flush()`` can find them with SCAN:

- a group's sorted set is tagged with the group name, so groups spread over the slots;
- a process inbox is tagged with the process's part of the channel name (the random client
  prefix before the "!"), so every inbox of one process shares a slot and one blocking pop
  serves them all;
- normal channels (and their de-duplication keys, wake streams and the in-flight lists of
  their readers) share one slot, so that one pop can take from any of them even on Cluster;
  they carry little traffic in Channels applications (worker channels), and process inboxes
  carry the rest.

Channel and group names cannot contain braces (the Channels name rules forbid them).
"""

from __future__ import annotations

from dataclasses import dataclass

from .exceptions import ConfigurationError

_NORMAL_TAG = "normal"
_GLOB_SPECIALS = str.maketrans({c: f"\\{c}" for c in "*?[]\\"})


def wake_stream(list_key: str) -> str:
    """The stream beside a normal channel's list (``KeyLayout.channel``) that gets an entry
    for each message pushed there: what readers wait on with XREAD (see POP_NORMAL).
    ``<prefix>:c:{normal}:<channel>`` gives ``<prefix>:w:{normal}:<channel>`` (a prefix holds
    no brace, so the first ":c:{" is the one before the tag)."""
    return list_key.replace(":c:{", ":w:{", 1)


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
        return f"{self.prefix}:c:{{{_NORMAL_TAG}}}:{channel}"

    def in_flight(self, reader: str) -> str:
        """The batch a normal-channel reader popped last, kept until its next pop (see
        POP_NORMAL); ``reader`` is the reader's random id."""
        return f"{self.prefix}:f:{{{_NORMAL_TAG}}}:{reader}"

    def inbox(self, non_local_name: str) -> str:
        """The list holding messages of the process-specific channels ``<name>!...``."""
        tag = non_local_name.rpartition(".")[2]
        return f"{self.prefix}:i:{{{tag}}}:{non_local_name}"

    def is_inbox(self, key: str) -> bool:
        """Whether ``key`` is a process inbox (else a normal channel's list)."""
        return key.startswith(f"{self.prefix}:i:")

    def dedupe(self, channel: str, sender: str) -> str:
        """Which sequence numbers of ``sender`` a normal channel may still take (a string: the
        highest and a bit per number below it, see PUSH). Versions before it kept a hash under
        ``:d:``; the new name keeps either script from ever reading the other's record."""
        return f"{self.prefix}:s:{{{_NORMAL_TAG}}}:{channel}:{sender}"

    def return_marker(self, list_key: str, returner: str) -> str:
        """Marks one return of messages to ``list_key`` as applied (see RETURN); it shares
        the list's hash tag, which is the first in the key."""
        return f"{self.prefix}:r:{list_key[len(self.prefix) + 1 :]}:{returner}"

    def inbox_limit(self, non_local_name: str) -> str:
        """How many messages the receiving process lets its inbox hold (its channels times
        their capacity), published by that process; missing, ``capacity`` applies."""
        tag = non_local_name.rpartition(".")[2]
        return f"{self.prefix}:l:{{{tag}}}:{non_local_name}"

    def is_inbox_limit(self, key: str) -> bool:
        """Whether ``key`` is a process's inbox limit (which ``flush()`` keeps)."""
        return key.startswith(f"{self.prefix}:l:{{")

    def group(self, group: str) -> str:
        """The sorted set of a group's member channels, scored by time of joining."""
        return f"{self.prefix}:g:{{{group}}}"

    def group_token(self, group: str) -> str:
        """A random value that changes whenever the group's members change (see GROUP_PUSH)."""
        return f"{self.prefix}:t:{{{group}}}"

    def group_keys(self, group: str) -> tuple[str, str]:
        """(members, token): the KEYS of the scripts that read a group."""
        return self.group(group), self.group_token(group)

    def group_of(self, key: str) -> str | None:
        """The group whose sorted set ``key`` is, or None for any other key."""
        head = f"{self.prefix}:g:{{"
        if key.startswith(head) and key.endswith("}"):
            return key[len(head) : -1]
        return None

    def group_discards(self, group: str) -> str:
        """The channels discarded from the group (a sorted set, scored by when each record
        stops holding), which a re-assertion must not put back (see GROUP_DISCARD)."""
        return f"{self.prefix}:x:{{{group}}}"

    def is_group_discards(self, key: str) -> bool:
        """Whether ``key`` holds a group's discards (which ``flush()`` keeps)."""
        return key.startswith(f"{self.prefix}:x:{{")

    def membership_keys(self, group: str) -> tuple[str, str, str]:
        """(members, token, discards): the KEYS of the scripts that join and leave."""
        return self.group(group), self.group_token(group), self.group_discards(group)

    def epoch(self, tag: str | None = None) -> str:
        """When the data of a server began (ms): missing or young after a restart empty.

        On Cluster there is one per master, ``tag`` placing it in a slot the master owns.
        """
        return f"{self.prefix}:epoch" if tag is None else f"{self.prefix}:epoch:{{{tag}}}"

    def scan_pattern(self) -> str:
        """A SCAN MATCH pattern for every key of this layer."""
        return self.prefix.translate(_GLOB_SPECIALS) + ":*"
