"""The reader of process inboxes: a batch whose pop reply is cut on its way is lost, and said.

The process-specific channels of a process share one inbox list per shard, popped with
``BLMPOP ... COUNT`` (up to INBOX_BATCH_SIZE messages). These pops are not acknowledged (an
in-flight list, as normal channels have, cost about 5% of throughput: failover.md): Redis
removes the batch as it answers, so a reply cut on its way, on a master that stays up, loses
the batch. Senders write their recent messages again only after a failover (``_replay``).

Part of the reply arrived before the cut (bytes received after the pop went out): proof that
Redis answered with a batch, so the loss is counted (``inbox_batches_lost``) and logged
(``inbox_batch_lost``, then at most once a minute, with the count). A cut with nothing
arrived is not: most often it is a pop blocked on an empty inbox whose idle connection
dropped, which took nothing. Redis's hard ``client-output-buffer-limit`` cuts that way too,
the whole reply before any of it leaves; only ``replies_cut`` (``_lost_replies``), from the
third cut in a row, tells of those.
"""

from __future__ import annotations

import logging

from ._constants import REPLAY_WINDOW_S
from ._lost_replies import Sent
from ._reader import BlockingReader, some_keys

logger = logging.getLogger("channels_ha.reader")


class InboxReader(BlockingReader):
    """Pops the process's inboxes with ``BLMPOP``; counts and logs the batches cut."""

    def _reply_lost(self, sent: Sent) -> None:
        if sent.arrived:  # Redis answered: it removed the batch (nothing came: see above)
            self._stats.inbox_batches_lost += 1
            self._say_lost(sent.arrived)

    def _say_lost(self, received: int) -> None:
        count = self._failure_log.due("inbox_batch_lost")
        if not count:
            return
        logger.warning(
            "Reply to an inbox pop cut on %s after part of it had arrived (%d bytes): "
            "up to %d messages of %s, which Redis had already removed (inbox pops are not "
            "acknowledged), are lost, unless a new server run of this master (a failover, a "
            "restart) caused the cut or follows it: each sender then writes again what it "
            "wrote in the %g s before it, as far as its replay_max_bytes keeps. The "
            "connection closed mid-reply: most likely a proxy or the network, else Redis "
            "(CLIENT KILL, the master going down, its client-output-buffer-limit for normal "
            "clients). %d batch(es) lost this way since the last report",
            self._describe_server(),
            received,
            self._count,
            some_keys(self._pending_keys),
            REPLAY_WINDOW_S,
            count,
            extra={"event": "inbox_batch_lost", "received": received, "batches": count},
        )
