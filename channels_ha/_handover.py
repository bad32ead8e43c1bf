"""Handing the process's inbox over from one event loop to the next that receives it.

One event loop at a time receives a process's inbox (``RedisChannelLayer.receive`` refuses a
second). The loop that received last may still hold part of it when another starts:

- its inbox reader's pop stays blocked on the inbox after its last receiver returned (for
  up to BLOCKING_POP_TIMEOUT_S). That is on purpose: a consumer that receives again right
  after handling a message (Channels' consumers do) finds its pop already waiting, and pays
  neither a new pop nor a CLIENT UNBLOCK per message (W1). But a message sent meanwhile is
  taken by that pop into a buffer nobody waits on, while the new loop waits in vain;
- its buffers may hold messages popped along with another channel's.

So the loop that starts receiving an inbox asks every other live loop of the layer that has
an inbox reader to hand the inbox over, in that loop (``call_soon_threadsafe``): end the pop
(CLIENT UNBLOCK), collect its reply, and give back to the head of the inbox, in order, what
it holds of it (``GiveBack.hand_over``). Until each has answered, the new loop does not pop
that inbox (``Deliveries.gate``), nor do its sends skip Redis (``LocalPath`` reads the gate):
what comes back is received first, as it would have been. A loop that does not answer in
INBOX_HANDOVER_TIMEOUT_S (stuck in sync code) is not waited for further: what it gives back
later comes late, and a channel's buffer keeps a pop's batch past its capacity (_buffers):
nothing is lost. Nothing of this runs while one event loop receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ._constants import INBOX_HANDOVER_TIMEOUT_S
from ._delivery import inbox_of

if TYPE_CHECKING:
    from ._session import Session


def take_over(taker: Session, sessions: Callable[[], Iterable[Session]], channel: str) -> None:
    """``taker``'s loop is about to receive on ``channel``: unless it receives its inbox
    already, or took it over last, the other loops hand that inbox over first."""
    core = taker.core
    buffer = taker.deliveries.buffers.get(channel)  # (its route, worked out once)
    target = inbox_of(channel)
    key = buffer.waiting_key if buffer is not None else core.keys.inbox(target)
    if key in taker.deliveries.inbox_waiting:
        return  # this loop receives the inbox already: nobody else holds it
    last = core.inbox_takers.get(key)
    if last is not None and last() is taker:
        # Nobody popped the inbox since: any loop that did took it over after this one.
        # (A consumer receiving message after message beside closed async_to_sync sessions
        # scanned them all at every receive: ~1.2 us, ~4% of a message.)
        return
    shard = core.shard_index(target)
    for holder in sessions():
        if holder is not taker and holder.may_hold_inbox(key, shard):
            _ask(holder, taker, key, shard)
    core.inbox_takers[key] = weakref.ref(taker)


def _ask(holder: Session, taker: Session, key: str, shard: int) -> None:
    """Asks ``holder`` to hand ``key`` over; ``taker`` waits for the answer only if the
    holder's loop runs (one that does not would answer when it runs again)."""
    waits = holder.loop.is_running()
    done = _gate(taker, key, shard) if waits else _nothing
    # Not asked again (nor waited for: a loop stuck in sync code would hold up each receive)
    # until it receives there again; what it pops before it runs this request goes back too.
    holder.deliveries.inboxes_handed_over.add(key)
    try:
        holder.loop.call_soon_threadsafe(holder.give_back.hand_over, key, shard, done)
    except RuntimeError:  # its loop closed meanwhile: it holds nothing any more
        done()


def _gate(taker: Session, key: str, shard: int) -> Callable[[], None]:
    """Closes ``key`` to ``taker``'s pops and local sends (``Deliveries.gate``); returns what
    opens it again, once, called from any thread, or by itself after
    INBOX_HANDOVER_TIMEOUT_S."""
    loop = taker.loop
    taker.deliveries.gate(key)
    opened = False

    def open_gate() -> None:  # in the taker's loop
        nonlocal opened
        if not opened:
            opened = True
            timer.cancel()
            taker.give_back.open_inbox(key, shard)

    timer = loop.call_later(INBOX_HANDOVER_TIMEOUT_S, open_gate)
    return lambda: _call_in(loop, open_gate)  # called in the holder's loop


def _call_in(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
    """Runs ``callback`` in ``loop``, from any thread; not if that loop is closed (its
    session goes with it)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)


def _nothing() -> None:
    """Nobody waits for this answer."""
