"""group_send: one message to every member of a group, in as few round trips as it can.

The members' channels become targets (one per process inbox, one per normal channel),
batched into one PUSH per shard, or per slot on Cluster. A plan remembered from the last
send to the group (``_fanout``) skips the member read: the server pushes it only if the
group's membership token is still the one the plan was made from.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any, cast

from ._buffers import now_ms
from ._codec import encode_element
from ._core import LayerCore
from ._delivery import target_of
from ._fanout import Plan, Target
from ._group_members import GroupMembers
from ._push import FULL, Pusher, push_request, with_wakes, written_once
from ._resp import pack
from ._scripts import GROUP_PUSH
from ._sequence import SendSequences
from ._shard import ShardConnections
from ._slots import slot_of
from .exceptions import RedisCommandError

logger = logging.getLogger("channels_ha.layer")

Units = dict[tuple[int, int], tuple[list[str], list[Any]]]  # (shard, slot) -> keys, args


class GroupSender:
    """group_send on one event loop."""

    def __init__(
        self,
        core: LayerCore,
        shards: list[ShardConnections],
        seqs: SendSequences,
        pusher: Pusher,
        members: GroupMembers,
    ) -> None:
        self.core = core
        self._shards = shards
        self._seqs = seqs
        self._pusher = pusher
        self._members = members

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        core = self.core
        core.stats.group_sends += 1  # every call, empty groups included
        body, now = core.codec.dumps(message), now_ms()
        seqs: dict[str, tuple[str, int]] = {}  # list -> (sender, number), kept across attempts
        plan = core.fanout.tokened(group)
        if plan is not None:
            statuses = await self._push_if_members_unchanged(group, plan, body, now, seqs)
            if statuses is not None:
                self._log_over_capacity(group, [statuses], len(plan.members))
                self._members.seen(group)
                return
            core.fanout.distrust(group, plan)
        members, token = await self._members.read(group)
        if not members:
            return
        home = core.shard_index(group)
        unit = None if self._shards[home].router else (home, 0)  # see _push_if_members_unchanged
        targets = core.fanout.targets(group, members, self._group_targets, token, unit)
        units = self._push_arguments(targets, body, now, seqs)
        header = self._pusher.header(now)
        links = [(self._shards[index].link, keys[0]) for (index, _), (keys, _) in units.items()]
        written_on = [link.connection_of(key) for link, key in links]
        results = await asyncio.gather(
            *(
                self._pusher.push(
                    index, push_request(keys, header, args), keys[0], parts=(keys, header, args)
                )
                for (index, _), (keys, args) in units.items()
            )
        )
        for (keys, _), statuses, (link, key), since in zip(
            units.values(), results, links, written_on, strict=True
        ):
            if written_once(link, key, since):
                self._unnote_refused(keys, statuses, seqs)
        self._log_over_capacity(group, results, len(members))

    def _unnote_refused(
        self, keys: list[str], statuses: list[int] | None, seqs: dict[str, tuple[str, int]]
    ) -> None:
        """The copies a full target refused to a request written once were not stored: in
        this process's own inbox no local send waits for them to be popped (seen: 20,000
        group_sends to a full inbox left as many notes, and every send went through Redis
        until they expired)."""
        if not statuses or FULL not in statuses:
            return
        unpopped = self.core.unpopped
        for index, status in enumerate(statuses):
            numbered = seqs.get(keys[2 * index]) if status == FULL else None
            if numbered is not None:
                unpopped.discard(keys[2 * index], *numbered)

    def _log_over_capacity(
        self, group: str, results: Sequence[list[int] | None], members: int
    ) -> None:
        full = sum(statuses.count(FULL) for statuses in results if statuses)
        if full:
            logger.info("%d of %d targets of group %s over capacity", full, members, group)

    async def _push_if_members_unchanged(
        self, group: str, plan: Plan, body: bytes, now: int, seqs: dict[str, tuple[str, int]]
    ) -> list[int] | None:
        """One round trip instead of two: the PUSH of a remembered plan, done by the server
        only if the group's membership token is still the one the plan was made from. None
        when it is not, or when Redis refused it for memory (nothing was pushed)."""
        core = self.core
        (((index, _), (keys, args)),) = self._push_arguments(plan.targets, body, now, seqs).items()
        header = self._pusher.header(now)
        group_key, token_key = core.keys.group_keys(group)
        token = cast(str, plan.token)  # FanoutPlans.tokened() returns plans with one
        cutoff = time.time() - core.group_expiry_s
        push_keys = with_wakes(keys, args)
        packed = pack(
            "EVALSHA", GROUP_PUSH.sha, len(push_keys) + 2, group_key, token_key, *push_keys,
            token, cutoff, *header, *args,
        )  # fmt: skip
        # A replay writes the plain PUSH: the token may be gone by then.
        unguarded = functools.partial(push_request, keys, header, args)
        link = self._shards[index].link
        connection = link.connection_of(group_key)
        try:
            statuses = await self._pusher.push(
                index, packed, group_key, unguarded, (keys, header, args)
            )
        except RedisCommandError as err:
            # Past maxmemory Redis refuses GROUP_PUSH before it checks the token, and the
            # plan may be stale (the group emptied elsewhere): a group_send to nobody must
            # not fail there (channels_redis reads the members with plain commands). As
            # stale: the members are read (GROUP_MEMBERS runs there), and a PUSH to any is
            # refused in turn.
            if not str(err).startswith("OOM"):
                raise
            statuses = None
        once = written_once(link, group_key, connection)
        if once:  # (a retry refused may be a copy the first write stored: see written_once)
            self._unnote_refused(keys, statuses, seqs)
        if statuses is None and once:
            # Written once (no reconnect since), and refused whole: nothing was stored, so
            # the message is numbered afresh. Its old numbers would be the lowest on their
            # lists by the time the members are read: past MAX_GAPS other messages this
            # event loop stored there meanwhile, taken for a copy and dropped (seen: 1 of
            # 5,000 concurrent group_sends lost). A request written again after a reconnect
            # may have been stored by its first copy: it keeps its numbers, which recognise
            # that copy.
            self._unnumber(seqs)
        return statuses

    def _unnumber(self, seqs: dict[str, tuple[str, int]]) -> None:
        """Forgets the numbers of a group message that Redis did not store; in this
        process's own inbox, no local send waits for them to be popped any more."""
        unpopped = self.core.unpopped
        for key, (sender, seq) in seqs.items():
            unpopped.discard(key, sender, seq)
        seqs.clear()

    def _group_targets(self, members: list[str]) -> list[Target]:
        """One target per process inbox and one per normal channel of the members."""
        core = self.core
        by_target: dict[str, list[str]] = {}  # inbox or normal channel -> member channels
        for channel in members:
            by_target.setdefault(target_of(channel), []).append(channel)
        targets = []
        for target, channels in by_target.items():
            key, aux, kind = self._pusher.target_keys(channels[0], target)
            named: str | list[str] = channels[0] if len(channels) == 1 else channels
            capacity = max(core.capacity_of(channel) for channel in channels)
            targets.append(Target(self._unit(target, key), key, aux, kind, named, capacity))
        return targets

    def _push_arguments(
        self, targets: list[Target], body: bytes, now: int, seqs: dict[str, tuple[str, int]]
    ) -> Units:
        """The targets batched into one PUSH per shard, or per slot on Cluster (a script's
        keys must share a slot there): its keys and the arguments after the header. The link
        pipelines the PUSHes of one node, so a group costs one round trip per node.

        A list keeps the sequence number ``seqs`` gave it in an earlier attempt that may have
        landed (written again after a reconnect): a copy must be recognised as one."""
        expires = now + self.core.expiry_ms
        own_inbox = self._pusher.own_inbox_end
        units: Units = {}
        for target in targets:
            keys, args = units.setdefault(target.unit, ([], []))
            numbered = seqs.get(target.key)
            if numbered is None:
                numbered = seqs[target.key] = self._seqs.next(target.key)
            sender, seq = numbered
            aux = target.aux
            if target.kind == "c":  # a normal channel: named, and its record, by sender
                aux = self.core.keys.dedupe(cast(str, target.named), sender)
            elif target.key.endswith(own_inbox):  # a later local send must not overtake it
                self.core.unpopped.add(target.key, sender, seq, expires)
            element = encode_element(expires, sender, seq, target.named, body)
            keys += [target.key, aux]
            args += [target.capacity, seq, element, target.kind]
        return units

    def _unit(self, target: str, key: str) -> tuple[int, int]:
        """(shard, slot): what one PUSH may cover; the slot matters only on Cluster."""
        index = self.core.shard_index(target)
        return index, slot_of(key) if self._shards[index].router else 0
