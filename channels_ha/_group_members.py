"""A group's members in Redis: joining, leaving, and reading them for group_send.

A read that finds a group empty may be reading data that began again (a restart, a
``FLUSHALL``) before the members re-asserted themselves: it checks, and then waits for them.
"""

from __future__ import annotations

import logging
import secrets
import time
from contextlib import AbstractContextManager, nullcontext, suppress
from typing import cast

from ._buffers import now_ms
from ._constants import RESTART_GRACE_S, RESTART_NOTICE_WINDOW_S
from ._core import LayerCore
from ._recovery import log_failure, note_data_loss, recovered
from ._resync import Resync
from ._scripts import GROUP_ADD, GROUP_DISCARD, GROUP_MEMBERS
from ._shard import ShardConnections
from .exceptions import RedisCommandError, RedisUnavailable

logger = logging.getLogger("channels_ha.layer")

_GROUPS_SEEN_REMEMBERED = 10_000  # see LayerCore.groups_with_members


class GroupMembers:
    """group_add, group_discard, and the member reads of group_send, on one event loop."""

    def __init__(
        self,
        core: LayerCore,
        shards: list[ShardConnections],
        client_prefix: str,
        resync: Resync,
    ) -> None:
        self.core = core
        self._shards = shards
        self._client_prefix = client_prefix
        self._resync = resync

    async def add(self, group: str, channel: str) -> None:
        core = self.core
        link = self._shards[core.shard_index(group)].link
        args = (time.time(), core.group_expiry_s, secrets.token_hex(8), "join", channel)
        with self._joining(group, channel):
            reply = await link.submit_script(GROUP_ADD, core.keys.membership_keys(group), args)
            (cleared,) = cast(list[bytes], reply)
            if cleared:
                core.memberships.cleared_record(group, channel, cleared.decode())

    def _joining(self, group: str, channel: str) -> AbstractContextManager[None]:
        """Records the membership for re-assertion, unless the channel is another layer's
        process-specific one (a view adding a consumer's channel): only the layer that made
        it receives on it, so it is never live here and never re-asserted from here. Kept,
        such records only grew until group_expiry (one per call, never swept in a process
        without a long-lived event loop) and made every event loop check epochs for
        nothing."""
        if "!" in channel and not self._owns(channel):
            return nullcontext()
        return self.core.memberships.joining(group, channel)

    async def discard(self, group: str, channel: str) -> None:
        core = self.core
        core.memberships.discarded(group, channel)
        link = self._shards[core.shard_index(group)].link
        # The discard is recorded, so that a re-assertion does not undo it. Another
        # process's channel (or a normal one, which any process may receive on and have
        # joined) for group_expiry: its process re-asserts the membership until it hears of
        # the discard. This process's own forgot the membership above, but a re-assertion on
        # another event loop may have read it before and write after: for failover_timeout,
        # the longest its GROUP_ADD can take to reach Redis (what every disconnect records
        # thus costs nothing lasting).
        kept_s = core.failover_timeout_s if self._owns(channel) else core.group_expiry_s
        args = (channel, secrets.token_hex(8), time.time(), kept_s)
        await link.submit_script(GROUP_DISCARD, core.keys.membership_keys(group), args)

    def _owns(self, channel: str) -> bool:
        """Whether ``channel`` is a process-specific channel of this layer."""
        local = channel.find("!")
        return local >= 0 and channel[:local].endswith(self._client_prefix)

    async def read(self, group: str) -> tuple[list[bytes], str | None]:
        """The group's live members, and their membership token (None: no such group, or
        Cluster, where no plan can use one)."""
        core = self.core
        shard = self._shards[core.shard_index(group)]
        for attempt in range(2):
            changes = shard.stats.server_changes
            await recovered(shard)
            members, token = await self._read(shard, group)
            if members:
                self.seen(group)
            elif not attempt and await self._emptied_by_data_loss(shard, group):
                continue  # read again once the memberships had time to be re-asserted
            if shard.stats.server_changes == changes:
                break  # no new server run meanwhile: the list is not from before a loss
        core.stats.group_member_reads += 1
        return members, token

    def seen(self, group: str) -> None:
        """Notes that ``group`` had members now (see ``_emptied_by_data_loss``)."""
        seen = self.core.groups_with_members
        seen.pop(group, None)  # to the end: the oldest go first
        seen[group] = time.time()
        if len(seen) > _GROUPS_SEEN_REMEMBERED:
            with suppress(RuntimeError, StopIteration, KeyError):  # other threads race here
                del seen[next(iter(seen))]

    async def _emptied_by_data_loss(self, shard: ShardConnections, group: str) -> bool:
        """Whether a group reads empty because the data began again since this process
        (in any event loop: async_to_sync makes one per call) last knew it with members, or,
        shortly after a new server run, since the epoch the process knew.

        A ``FLUSHALL`` or ``FLUSHDB`` (a cache's ``clear()`` on a shared database) loses the
        data without a reconnect that would notice, and the periodic epoch check may be a
        second away, or, in a short-lived event loop, have nothing to compare with: a
        group_send meanwhile would go to nobody. So read the epoch of the group's master:
        missing, or begun after the members were last seen, the data began again. A group
        that emptied in the ordinary way costs one GET, once.

        The record of the group is read, not taken: concurrent calls (one event loop per
        thread) read the empty group together, and each must wait for the re-assertion,
        not only the first (seen: 4 of 16 group_sends from threads went to nobody)."""
        seen, stats = self.core.groups_with_members, shard.stats
        known_at = seen.get(group)
        lately = stats.last_server_change is not None and (
            time.time() - stats.last_server_change < RESTART_NOTICE_WINDOW_S
        )
        if known_at is None and not lately:
            return stats.recovering_until > time.time()  # a loss noticed since the read
        where = shard.epoch_key_beside(self.core.keys, self.core.keys.group(group))
        if where is None:
            return False
        node, key = where
        try:
            value = cast("bytes | None", await shard.link.submit("GET", key, key=key))
        except (RedisUnavailable, RedisCommandError) as err:
            logger.debug("Epoch read failed: %s", err)
            return False  # the member read itself succeeded: send to what it found
        now = time.time()
        if value is None:
            shard.link.submit("SET", key, now_ms(), "NX", key=key).add_done_callback(log_failure)
        began_s = now if value is None else int(value) / 1000
        mark, epochs = (shard.spec.index, node), self._resync.epochs
        if known_at is not None:
            lost = began_s >= known_at  # else the data began before: the group emptied
        else:  # a group this process never sent to: compare with the epoch it knew
            last = epochs.get(mark)
            lost = last is not None and last[0] == key and last[1] not in (None, value)
        if lost and stats.recovering_until < began_s + RESTART_GRACE_S:  # news to the process
            note_data_loss(shard, began_s)
            epochs[mark] = (key, value)  # after: see _recovery._compare
            self._resync.after_loss(shard)
        recovering = stats.recovering_until > time.time()
        if known_at is not None and not recovering and seen.get(group) == known_at:
            seen.pop(group, None)  # empty the ordinary way, or since the loss: no more GETs
        return recovering

    async def _read(self, shard: ShardConnections, group: str) -> tuple[list[bytes], str | None]:
        core = self.core
        key, cutoff = core.keys.group(group), time.time() - core.group_expiry_s
        if shard.router:  # a plain read: cheaper than the script, whose token goes unused
            reply = await shard.link.submit("ZRANGE", key, f"({cutoff}", "+inf", "BYSCORE", key=key)
            return cast(list[bytes], reply), None
        args = (cutoff, secrets.token_hex(8))
        token, members = cast(
            "tuple[bytes | None, list[bytes]]",
            await shard.link.submit_script(GROUP_MEMBERS, core.keys.group_keys(group), args),
        )
        return members, None if token is None else token.decode()
