"""flush(): deletes this prefix's messages and groups from every shard.

The epoch marks stay: deleting them would look like data loss to every process watching
them. The other processes cannot be told, and their re-assertions must not bring back the
memberships it deletes: a group is deleted as if each member were discarded, its records
kept (see GROUP_FLUSH), and the discard records stay. So do the inbox limits: they are
what each process says its inbox may hold, not messages, and they expire by themselves
once it stops publishing them. A process trusts its last publication for seconds; deleted,
senders went by one channel's capacity meanwhile (7 of 10 sends to the channels of a
process refused with ChannelFull after another process's flush, for up to 3 s).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from ._constants import FLUSH_GROUP_BATCH, FLUSH_SCAN_COUNT
from ._core import LayerCore
from ._delivery import Deliveries
from ._link import CommandLink
from ._push import Link
from ._scripts import GROUP_FLUSH
from ._shard import ShardConnections
from .exceptions import RedisCommandError, RedisUnavailable

_MAX_SCAN_ROUNDS = 1_000_000
_MAX_GROUP_FLUSH_CALLS = 100_000  # of FLUSH_GROUP_BATCH members each
_MAX_FLUSH_ROUNDS = 1_000  # bounded by failover_timeout first: a failover or two
_FLUSH_RETRY_S = 0.1


async def flush(
    core: LayerCore,
    shards: list[ShardConnections],
    deliveries: Deliveries,
    closed: Callable[[], bool],
) -> None:
    """Flushes every shard through one event loop's connections and empties its buffers;
    ``closed`` tells whether its session closed meanwhile."""
    core.memberships.clear()  # flushed groups must not be re-asserted
    core.fanout.forget()  # (their tokens are gone: the plans would only be refused)
    _forget_recent(core)
    for shard in shards:
        await _flush_shard(core, shards, shard, closed)
    _forget_recent(core)  # sends acknowledged during the scan were deleted too
    # Not core.unpopped: a send written while the scan ran may land after it and survive
    # it, and a later local send must not overtake it (seen: 1,376 of 143,868 sends out of
    # order with a flush every few ms); what the flush deleted expires from there.
    deliveries.clear()


def _forget_recent(core: LayerCore) -> None:
    """Forgets the process's writes kept for replay (every event loop's): after flush(),
    writing them again after a failover would bring back what the application deleted."""
    for recent in core.recent:
        recent.clear()


def _epoch_keys(core: LayerCore, shards: list[ShardConnections]) -> list[tuple[str, str]]:
    return [pair for shard in shards for pair in shard.epoch_keys(core.keys)]


async def _flush_shard(
    core: LayerCore,
    shards: list[ShardConnections],
    shard: ShardConnections,
    closed: Callable[[], bool],
) -> None:
    """SCANs every master of the shard. On Cluster a master may fail over mid-way: its
    keys are then on its replica, a master now, which a later round scans instead."""
    router = shard.router
    scanned: set[str] = set()
    deadline = time.monotonic() + shard.spec.settings.failover_timeout_s
    if router is not None and not router.mapped:
        await router.reread_map()  # a map of another event loop's may lack a new master
    for _ in range(_MAX_FLUSH_ROUNDS):
        pending = [(a, node) for a, node in shard.scan_nodes() if a not in scanned]
        if scanned and not pending:
            return  # every master the map names was scanned
        try:
            for address, node in pending:
                await _flush_node(core, shards, node, shard.link)
                scanned.add(address)
                deadline = time.monotonic() + shard.spec.settings.failover_timeout_s
        except RedisUnavailable:
            if router is None or closed() or time.monotonic() >= deadline:
                raise  # (closed: a new link to a node would never be closed)
        else:
            if pending:
                continue  # look again: the map may name a new master by now
        if router is None or time.monotonic() >= deadline:
            raise RedisUnavailable("flush() found no master to scan on the cluster")
        await asyncio.sleep(_FLUSH_RETRY_S)  # the map may name a failed node's successor
        await router.reread_map()
    raise RedisUnavailable("flush() found no stable set of masters to scan")


async def _flush_node(
    core: LayerCore,
    shards: list[ShardConnections],
    node: Callable[[], CommandLink],
    link: Link,
) -> None:
    """SCANs one master; deletes through ``link``, which routes each key to its slot."""
    cursor = b"0"
    layout = core.keys
    pattern = layout.scan_pattern()
    kept = {key for _, key in _epoch_keys(core, shards)}
    for _ in range(_MAX_SCAN_ROUNDS):
        scan = ("SCAN", cursor, "MATCH", pattern, "COUNT", FLUSH_SCAN_COUNT)
        reply = await node().submit(*scan)
        cursor, keys = cast("tuple[bytes, list[bytes]]", reply)
        # One key per request: on Cluster, keys of one SCAN page live in different slots.
        deletes: list[Awaitable[Any]] = []
        for key in (raw.decode() for raw in keys):
            group = layout.group_of(key)
            if group is not None:
                deletes.append(_flush_group(core, group, link))
            elif not (key in kept or layout.is_group_discards(key) or layout.is_inbox_limit(key)):
                deletes.append(link.submit("UNLINK", key, key=key))
        await asyncio.gather(*deletes)
        if cursor == b"0":
            return


async def _flush_group(core: LayerCore, group: str, link: Link) -> None:
    """Deletes a group and its token, recording each member as discarded (see
    GROUP_FLUSH), a bounded number of members per call."""
    keys = core.keys.membership_keys(group)
    for _ in range(_MAX_GROUP_FLUSH_CALLS):
        args = (time.time(), core.group_expiry_s, FLUSH_GROUP_BATCH)
        if not await link.submit_script(GROUP_FLUSH, keys, args):
            return
    raise RedisCommandError(
        f"flush() could not empty group {group!r}: members joined it faster than "
        f"{FLUSH_GROUP_BATCH} per call were discarded"
    )
