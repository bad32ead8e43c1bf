"""Worker processes for the multi-process workloads; none outlives its workload.

Workers are started with the ``spawn`` method: a fork of a process with a running event loop,
open sockets and a sampler thread would inherit all three. Each worker runs one coroutine
function under its own timeout and talks to the parent over a pipe with ``(tag, payload)``
tuples; both ends read the pipe without blocking their event loop. On the way out the parent
says ``close`` (workers keep their connections open until then, so they can be counted),
joins, then terminates, then kills whatever is left.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

WorkerFn = Callable[..., Awaitable[None]]
JOIN_TIMEOUT_S = 5.0


class WorkerFailed(Exception):
    """A worker reported an error, or exited without saying what it was waiting for."""


class Pipe:
    """One end of a worker's pipe, with an asyncio-friendly receive."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def send(self, tag: str, payload: Any = None) -> None:
        self.connection.send((tag, payload))

    def send_quietly(self, tag: str) -> None:
        """Sends if the other end still listens (it may have exited already)."""
        try:
            self.send(tag)
        except OSError:
            return

    async def receive(self, expected: str) -> Any:
        """The payload of the next message, which must be tagged ``expected``."""
        await _readable(self.connection)
        try:
            tag, payload = self.connection.recv()
        except EOFError as err:
            raise WorkerFailed(f"worker exited while the parent waited for {expected!r}") from err
        if tag != expected:
            raise WorkerFailed(f"worker sent {tag!r} instead of {expected!r}: {payload}")
        return payload


class Worker:
    """A started worker process and the parent's end of its pipe."""

    def __init__(self, process: BaseProcess, pipe: Pipe) -> None:
        self.process = process
        self.pipe = pipe

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid


@asynccontextmanager
async def started_workers(
    fn: WorkerFn, kwargs_list: list[dict[str, Any]], timeout_s: float
) -> AsyncIterator[list[Worker]]:
    """One worker per entry of ``kwargs_list``, each running ``fn``; all stopped on exit."""
    workers: list[Worker] = []
    try:
        for kwargs in kwargs_list:
            workers.append(_start(fn, kwargs, timeout_s))
        yield workers
    finally:
        for worker in workers:
            worker.pipe.send_quietly("close")
        await asyncio.to_thread(_stop, [worker.process for worker in workers])
        for worker in workers:
            worker.pipe.connection.close()


def _start(fn: WorkerFn, kwargs: dict[str, Any], timeout_s: float) -> Worker:
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    process = context.Process(
        target=worker_main, args=(child_end, fn, kwargs, timeout_s), daemon=True
    )
    process.start()
    child_end.close()  # the child has its copy; ours would keep the pipe open past its exit
    return Worker(process, Pipe(parent_end))


def _stop(processes: list[BaseProcess]) -> None:
    """Joins, then terminates, then kills: every process is gone when this returns."""
    for process in processes:
        process.join(JOIN_TIMEOUT_S)
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(JOIN_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join()


async def _readable(connection: Connection) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(connection.fileno(), _resolve, ready)
    try:
        await ready
    finally:
        loop.remove_reader(connection.fileno())


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # the reader fires until removed
        future.set_result(None)


def worker_main(
    connection: Connection, fn: WorkerFn, kwargs: dict[str, Any], timeout_s: float
) -> None:
    """The entry point of a worker process: ``fn(pipe, **kwargs)`` under a timeout."""
    pipe = Pipe(connection)
    try:
        asyncio.run(asyncio.wait_for(fn(pipe, **kwargs), timeout_s))
    except Exception as err:  # reported to the parent, which records it as the run's failure
        pipe.send("error", f"{type(err).__name__}: {err}")
    finally:
        connection.close()
