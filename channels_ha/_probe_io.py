"""What both probes share: an event loop of their own, bounded asyncio clients that are
closed even when cancelled, and the reading of raw replies."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import AsyncIterator, Coroutine, Iterable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from ._config import NodeAddress, RedisConfig, SingleNodeConfig
from ._redis_kwargs import client_kwargs

PROBE_FAILURES = (redis.RedisError, OSError)
T = TypeVar("T")


def run_blocking(main: Coroutine[Any, Any, T]) -> T:
    """The result of ``main``, run on an event loop of its own; in a worker thread when this
    thread already runs a loop (a notebook, an async view), which then waits, as it always has
    for a blocking probe."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_here(main)
    with concurrent.futures.ThreadPoolExecutor(1) as worker:
        return worker.submit(_run_here, main).result()


def _run_here(main: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(main)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        # Shuts the default executor down without waiting for a DNS lookup still running.
        loop.close()


async def all_at_once(asks: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """The results of ``asks``, run at once, in their order. Unlike ``gather``, none is left
    running when one fails or the caller is cancelled: each has closed its client first."""
    tasks = [asyncio.create_task(ask) for ask in asks]
    try:
        if tasks:
            await asyncio.wait(tasks)
    finally:
        await settle_tasks(tasks)
    return [task.result() for task in tasks]


async def finish(task: asyncio.Future[Any]) -> None:
    """Waits until ``task`` has ended, through a cancellation of the caller (raised after).

    An error ``task`` ends with is marked as read: its result is for the caller to use or not.
    """
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError as err:
            cancelled = err
    if not task.cancelled():
        task.exception()
    if cancelled is not None:
        raise cancelled


async def settle_tasks(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancels the tasks still running and waits until they have closed their clients."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def bounded_kwargs(kwargs: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Client arguments with both socket timeouts capped at ``timeout_s`` and no retries."""
    for key in ("socket_timeout", "socket_connect_timeout"):
        kwargs[key] = min(kwargs.get(key) or timeout_s, timeout_s)
    kwargs.pop("health_check_interval", None)
    # RESP2 works with every server version, and its replies have one shape to read.
    return {**kwargs, "retry": AsyncRetry(NoBackoff(), 0), "decode_responses": True, "protocol": 2}


def data_kwargs(config: RedisConfig, address: NodeAddress, timeout_s: float) -> dict[str, Any]:
    kwargs = {**client_kwargs(config), "host": address.host, "port": address.port}
    return bounded_kwargs(kwargs, timeout_s)


def single_kwargs(config: SingleNodeConfig, timeout_s: float) -> dict[str, Any]:
    if config.address is not None:
        return data_kwargs(config, config.address, timeout_s)
    kwargs = {**client_kwargs(config), "unix_socket_path": config.unix_socket_path}
    kwargs = bounded_kwargs(kwargs, timeout_s)
    kwargs.pop("socket_keepalive", None)  # unix sockets reject it
    return kwargs


@asynccontextmanager
async def probe_client(kwargs: dict[str, Any]) -> AsyncIterator[Any]:
    """An asyncio client returning raw replies (no redis-py parsing); closed on exit,
    cancellation included."""
    client = redis.asyncio.Redis(**kwargs)
    client.response_callbacks.clear()
    try:
        yield client
    finally:
        # To the end even if the ask is cancelled meanwhile: a pool cancelled while closing
        # cancels its connections' closing before it starts, and they stay open.
        await finish(asyncio.ensure_future(client.aclose()))


def describe_error(err: BaseException) -> str:
    # redis-py's messages name the address and the failure, never the password; its asyncio
    # client gives only the number of a refused connect ("Error 111 ..."), so add the words.
    message = f"{type(err).__name__}: {err}"
    cause = err.__cause__ or err.__context__
    if isinstance(cause, OSError) and cause.errno and cause.strerror:
        reason = os.strerror(cause.errno)
        if reason not in message:
            message = f"{message.rstrip('.')} ({reason})"
    return message


def node_address(host: Any, port: Any) -> NodeAddress:
    return NodeAddress(host=str(host), port=int(port))


def reply_pairs(reply: Any) -> dict[str, str]:
    """A flat ``[key, value, ...]`` reply (a map in RESP2) as a dict."""
    items = [str(item) for item in reply]
    return dict(zip(items[::2], items[1::2], strict=False))
