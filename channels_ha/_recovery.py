"""What a process does when it meets a new server run (a failover, or a restart).

It re-asserts the group memberships of its live channels, which a master restarted empty
(or a replica that missed the last writes) no longer has. And it tells the two cases apart
with an epoch mark, so that group_send can wait for the other processes to re-assert theirs
after a loss, and only then.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any, NamedTuple, cast

from ._buffers import now_ms
from ._constants import RESTART_GRACE_S, RESTART_NOTICE_WINDOW_S
from ._core import LayerCore
from ._epochs import Epochs
from ._resp import Arg
from ._scripts import GROUP_ADD
from ._server import ServerInfo
from ._shard import ShardConnections
from .exceptions import LayerClosed, RedisUnavailable

logger = logging.getLogger("channels_ha.layer")

_REASSERT_BATCH = 500  # channels per GROUP_ADD call


Batch = tuple[str, int, asyncio.Future[Any]]  # group, channels, the GROUP_ADD's reply


class Reassertion(NamedTuple):
    """GROUP_ADD calls submitted to re-assert memberships, and when (monotonic) the
    memberships were read for them."""

    began: float
    batches: list[Batch]


def reassert(core: LayerCore, shard: ShardConnections) -> Reassertion:
    """Re-adds the live memberships kept on ``shard`` (submitted now, in this call: a
    group_send submitted after it reads the members after them), except those another
    process or event loop ended: Redis skips a channel whose discard record holds (see
    GROUP_DISCARD), and ``forget_ended`` then makes the process forget it, so that it does
    not come back when the record expires either."""
    began = time.monotonic()
    return reassert_from(core, shard, began, core.memberships.live())


def reassert_from(
    core: LayerCore, shard: ShardConnections, began: float, live: dict[str, dict[str, str]]
) -> Reassertion:
    """Re-adds the memberships ``live`` (read at ``began``: group -> channel -> the record
    its last join cleared) kept on ``shard``."""
    batches: list[Batch] = []
    try:
        for group, members in live.items():
            if core.shard_index(group) == shard.spec.index:
                batches += _readd(core, shard, group, members)
    except RedisUnavailable as err:  # closed meanwhile
        logger.debug("Re-assertion stopped: %s", err)
    return Reassertion(began, batches)


def _readd(
    core: LayerCore, shard: ShardConnections, group: str, members: dict[str, str]
) -> list[Batch]:
    batches = []
    keys = core.keys.membership_keys(group)
    channels = list(members.items())
    for start in range(0, len(channels), _REASSERT_BATCH):
        batch = channels[start : start + _REASSERT_BATCH]
        token = secrets.token_hex(8)  # taken only if a member was missing
        args: list[Arg] = [time.time(), core.group_expiry_s, token, "reassert"]
        for channel, cleared in batch:
            args += (channel, cleared)
        batches.append((group, len(batch), shard.link.submit_script(GROUP_ADD, keys, args)))
    return batches


async def forget_ended(core: LayerCore, shard: ShardConnections, done: Reassertion) -> None:
    """Waits for the re-assertion's replies; forgets the memberships Redis said were ended,
    and logs the re-assertion."""
    if not done.batches:
        return
    await asyncio.wait([future for _, _, future in done.batches])  # (never cancels them)
    readded = forgotten = 0
    groups = set()
    for group, size, future in done.batches:
        if future.cancelled() or future.exception() is not None:
            log_failure(future)
            continue
        skipped = cast(list[bytes], future.result())
        for channel in skipped:
            forgotten += core.memberships.forget(group, channel.decode(), done.began)
        readded += size - len(skipped)
        groups.add(group)
    if groups:
        logger.info(
            "Re-asserted %d group memberships in %d groups on %s; forgot %d that another "
            "process discarded or flushed",
            readded,
            len(groups),
            shard.spec.locator.describe(),
            forgotten,
            extra={
                "event": "memberships_reasserted",
                "memberships": readded,
                "forgotten": forgotten,
            },
        )


def check_epoch(
    core: LayerCore, shard: ShardConnections, info: ServerInfo, changed: bool, seen: Epochs
) -> asyncio.Future[None] | None:
    """Reads (creating it if missing) when this server's data began.

    A failover to a replica keeps the epoch (it was replicated); a master restarted empty
    has none, so the first process back writes a new one. A process that saw the server
    change and finds an epoch other than the one it knew concludes the data was lost, and
    lets group_send wait for the memberships to be re-asserted.
    """
    key = shard.epoch_key(core.keys, info)
    if key is None:
        return None
    mark = (shard.spec.index, shard.node_of(info))
    last = seen.get(mark)
    known = last[1] if last is not None and last[0] == key else None
    shard.link.submit("SET", key, now_ms(), "NX", key=key).add_done_callback(log_failure)
    check = shard.link.submit("GET", key, key=key)
    # Done only once the comparison ran: the GET's own future is done as soon as its reply
    # is read, before its callbacks run, and a group_send that saw it done then would find
    # no grace period yet and read a member list nobody had re-asserted.
    compared: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def compare(done: asyncio.Future[Any]) -> None:
        try:
            _compare(shard, done, (mark, key), known, changed, seen)
        finally:
            compared.set_result(None)

    check.add_done_callback(compare)
    return compared


def _compare(
    shard: ShardConnections,
    check: asyncio.Future[Any],
    where: tuple[tuple[int, str], str],
    known: object,
    changed: bool,
    seen: Epochs,
) -> None:
    if check.cancelled() or check.exception() is not None or check.result() is None:
        log_failure(check)
        return
    mark, key = where
    if changed and known is not None and check.result() != known:
        note_data_loss(shard, int(check.result()) / 1000)
    # Recorded only now: a session of another thread that reads the new epoch from the
    # process's record finds the grace period set (see GroupMembers._emptied_by_data_loss).
    seen[mark] = (key, check.result())


def note_data_loss(shard: ShardConnections, began_s: float) -> None:
    # A process that reached the server only now (seen on Cluster: 2 s after the epoch was
    # written) cannot assume that the others re-asserted their memberships meanwhile, so the
    # period counts from now. Not for a process that was idle for long, though: the others
    # have long re-asserted theirs, and it would wait for nothing.
    now = time.time()
    start = now if now - began_s <= RESTART_NOTICE_WINDOW_S else began_s
    shard.stats.recovering_until = max(shard.stats.recovering_until, start + RESTART_GRACE_S)
    logger.warning(
        "Redis on %s restarted without its data; group_send waits at least %.1f s for "
        "group memberships to be re-asserted (longer while the server refuses commands, "
        "as a Cluster node answering CLUSTERDOWN does)",
        shard.spec.locator.describe(),
        RESTART_GRACE_S,
        extra={"event": "data_lost"},
    )


async def recovered(shard: ShardConnections) -> None:
    """Waits out the grace period after a master came back without its data."""
    if shard.epoch_checks:
        await asyncio.wait(set(shard.epoch_checks))
    delay = shard.stats.recovering_until - time.time()
    if delay > 0:
        await asyncio.sleep(delay)  # the grace period is the point: processes re-assert


def log_failure(future: asyncio.Future[Any]) -> None:
    """Done-callback for background requests: nobody awaits them, so failures are logged."""
    if future.cancelled():
        return
    error = future.exception()
    if isinstance(error, LayerClosed):  # cut by the layer's own close(): no failure of Redis
        logger.debug("Background Redis operation not completed: %s", error)
    elif error is not None:
        logger.warning("Background Redis operation failed: %s", error)


async def watch_epoch(
    core: LayerCore, shard: ShardConnections, seen: Epochs, node: str, key: str
) -> bool:
    """Notices that the master ``node`` of ``shard`` lost its data even without a connection
    that saw it restart; True when it did. ``key``: its epoch key.

    On Cluster (or with several hosts, or in a process that sends without receiving) a
    process talks only to the masters it uses, so a master restarted empty can go unnoticed
    by the very processes whose memberships it held or whose messages it forgot. Reading each
    master's epoch every second notices it: a changed or missing epoch means the data began
    again.
    """
    value = await shard.link.submit("GET", key, key=key)
    if value is None:
        shard.link.submit("SET", key, now_ms(), "NX", key=key).add_done_callback(log_failure)
    last_key, last_value = seen.get((shard.spec.index, node), (None, None))
    seen[(shard.spec.index, node)] = (key, value)  # (as in _compare)
    if last_key != key or last_value is None or value == last_value:
        return False
    # Noticed here first, the connection's own epoch check will find nothing new:
    # group_send must wait for the memberships from here.
    began_s = time.time() if value is None else int(cast(bytes, value)) / 1000
    note_data_loss(shard, began_s)
    logger.warning(
        "A master of %s lost its data; re-asserting group memberships",
        shard.spec.locator.describe(),
        extra={"event": "data_lost"},
    )
    return True
