"""Asking every node of a deployment at once without waiting for the one that never answers.

A frozen process (SIGSTOP, a stuck VM) or a black-holed host accepts a connection, or lets it
hang, and answers nothing until the timeout: waiting for every node makes each question as
slow as the slowest node, one the caller may not even need. Nodes that do answer, answer in
milliseconds. So once more than half of the nodes have answered (an error counts: it is
what that node has to say) and one answer can be used, the rest get ``window_s`` more; those
still due then are left out, their questions cancelled. Not fewer than half: the majority is
what outvotes a node with an outdated view (a restarted Cluster master claiming its old
slots, a sentinel that has not caught up with a failover). Used for the Cluster slot map
(``_slots``) and for finding the Sentinel master (``_server.SentinelLocator``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

K = TypeVar("K")
T = TypeVar("T")


async def answers_in_window(
    asks: Mapping[K, Awaitable[T]], usable: Callable[[T], bool], window_s: float
) -> tuple[dict[K, T | BaseException], float | None]:
    """Each key's answer or error, among those in before the window closed, and how long it
    took most of them to answer with a usable one among them (None: they never did, and
    every question ran to its own end)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    asked = {asyncio.ensure_future(ask): key for key, ask in asks.items()}
    answers: dict[K, T | BaseException] = {}
    pending, closes_at = set(asked), None
    try:
        while pending:
            timeout = None if closes_at is None else max(closes_at - loop.time(), 0.0)
            done, pending = await asyncio.wait(
                pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                break  # the window closed
            for task in done:
                error = task.exception()
                answers[asked[task]] = error if error is not None else task.result()
            if closes_at is None and 2 * len(answers) > len(asked) and _any_usable(answers, usable):
                closes_at = loop.time() + window_s
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            for task in pending:
                if not task.cancelled():
                    task.exception()  # retrieved: no "never retrieved" log line
    quorum_s = None if closes_at is None else closes_at - window_s - started
    return answers, quorum_s


def _any_usable(answers: Mapping[K, T | BaseException], usable: Callable[[T], bool]) -> bool:
    return any(
        not isinstance(answer, BaseException) and usable(answer) for answer in answers.values()
    )
