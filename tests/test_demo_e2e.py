"""The demo end to end: WebSocket clients on both workers, a master killed under their edits.

The launcher runs as a user runs it (``python -m demo.run``, embedded Sentinel sandbox, two
workers sharing one port), and the clients speak the page's protocol with ``websockets``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from channels_ha.sandbox import StandaloneTopology
from demo.process import RunningDemo

CLIENTS_PER_WORKER = 2
MAX_CONNECTS = 40  # sockets opened until both workers hold CLIENTS_PER_WORKER (each: 1 in 2)
EDITS_PER_PHASE = 20  # before the kill, and after the new master is known
EDIT_INTERVAL_S = 0.02
WAIT_S = 30.0  # a sandbox failover takes 1-3 s; everything here waits on events within this


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDemo]:
    """The demo on its embedded Sentinel sandbox; stopped, with all it started, after."""
    with RunningDemo(tmp_path_factory.mktemp("demo") / "notes.sqlite3") as running:
        yield running


@dataclass
class Client:
    """One socket speaking the page's protocol, recording what it receives."""

    ws: ClientConnection
    pid: int
    refs: Counter[str] = field(default_factory=Counter)  # refs of the notes broadcast to it
    master: str | None = None  # its worker's layer's master, from the latest panel
    closed: str | None = None
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self) -> None:
        try:
            async for raw in self.ws:
                self._record(json.loads(raw))
        except ConnectionClosed as err:
            self.closed = f"closed: {err}"
        else:
            self.closed = "closed cleanly"
        self.progress.set()

    def _record(self, message: dict[str, Any]) -> None:
        if message["type"] == "note":
            self.refs[message["ref"]] += 1
        elif message["type"] == "topology":
            self.master = message["worker"]["statistics"]["master"]
        self.progress.set()


async def wait_until(clients: list[Client], condition: Callable[[], bool], what: str) -> None:
    """Return once ``condition`` holds, re-checking whenever a client receives something."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {WAIT_S} s waiting for {what}")
        for client in clients:
            client.progress.clear()
        waits = [asyncio.create_task(client.progress.wait()) for client in clients]
        await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            task.cancel()


async def open_client(demo: RunningDemo, name: str) -> Client:
    ws = await connect(demo.ws_url("e2e", name=name), origin=demo.origin)  # type: ignore[arg-type]
    hello = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
    assert hello["type"] == "hello"
    return Client(ws, hello["pid"])


async def connect_on_both_workers(demo: RunningDemo) -> list[Client]:
    """Open sockets until each of the two workers serves ``CLIENTS_PER_WORKER`` of them."""
    kept: list[Client] = []
    for index in range(MAX_CONNECTS):
        client = await open_client(demo, f"client-{index}")
        if sum(c.pid == client.pid for c in kept) < CLIENTS_PER_WORKER:
            kept.append(client)
        else:
            await client.ws.close()
        if len(kept) == 2 * CLIENTS_PER_WORKER:
            return kept
    raise AssertionError(f"{MAX_CONNECTS} sockets did not land on two workers: {kept}")


async def send_edits(clients: list[Client], phase: str, count: int) -> list[str]:
    """Each edit from the next client in turn; returns their refs."""
    refs = []
    for number in range(count):
        ref = f"{phase}-{number}"
        message = {"type": "add", "text": ref, "ref": ref, "sent_at": time.time()}
        await clients[number % len(clients)].ws.send(json.dumps(message))
        refs.append(ref)
        await asyncio.sleep(EDIT_INTERVAL_S)  # pacing, so that edits are in flight at the kill
    return refs


def kill_master(url: str) -> dict[str, Any]:
    """Press the page's button: GET the page for the CSRF cookie, POST with the token."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(url, timeout=WAIT_S).close()
    token = next(cookie.value for cookie in jar if cookie.name == "csrftoken")
    request = urllib.request.Request(
        f"{url}api/sandbox/kill-master", method="POST", headers={"X-CSRFToken": token or ""}
    )
    with opener.open(request, timeout=WAIT_S) as response:
        reply: dict[str, Any] = json.load(response)
    return reply


async def test_every_client_gets_every_edit_once_through_a_master_kill(demo: RunningDemo) -> None:
    """Edits from clients on two workers reach every client exactly once across a kill -9."""
    clients = await connect_on_both_workers(demo)
    readers = [asyncio.create_task(client.read()) for client in clients]
    try:
        await wait_until(clients, lambda: all(c.master for c in clients), "the panels")
        old_master = clients[0].master
        sent = await send_edits(clients, "before", EDITS_PER_PHASE)
        killed = await asyncio.to_thread(kill_master, demo.url)
        sent += await send_edits(clients, "during", EDITS_PER_PHASE)  # mostly while it is down
        await wait_until(
            clients, lambda: all(c.master != old_master for c in clients), "the new master"
        )
        sent += await send_edits(clients, "after", EDITS_PER_PHASE)
        await wait_until(clients, lambda: all(set(sent) <= set(c.refs) for c in clients), "edits")
    finally:
        for client in clients:
            await client.ws.close()
        await asyncio.gather(*readers)
    assert killed["pid"] > 0
    assert len({client.pid for client in clients}) == 2
    for client in clients:
        assert client.closed == "closed cleanly"  # by us, at the end: none closed before
        assert client.refs == Counter(sent), f"worker {client.pid}: not each edit exactly once"


def test_kill_switch_takes_only_a_post_with_a_csrf_token(demo: RunningDemo) -> None:
    """The kill endpoint refuses GET (405) and a POST without the CSRF token (403)."""
    endpoint = f"{demo.url}api/sandbox/kill-master"
    for method, status in (("GET", 405), ("POST", 403)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(endpoint, method=method), timeout=WAIT_S)
        refused.value.close()
        assert refused.value.code == status


def test_ctrl_c_stops_everything_the_launcher_started(tmp_path: Path) -> None:
    """On SIGINT the launcher exits 0 and leaves no worker, Redis process or temporary file."""
    demo = RunningDemo(tmp_path / "notes.sqlite3").start()
    pids = demo.worker_pids() + demo.node_pids()
    launcher = demo.pid
    assert len(pids) == 2 + 6, demo.output
    assert demo.stop(signum=signal.SIGINT) == 0, demo.output
    alive = [pid for pid in pids if _alive(pid)]
    assert not alive, f"still running: {alive}"
    leftovers = list(Path(tempfile.gettempdir()).glob(f"channels-ha-*-{launcher}-*"))
    assert not leftovers, f"left behind: {leftovers}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_killed_launchers_files_are_removed_by_the_next_one(
    tmp_path: Path, redis_standalone: StandaloneTopology
) -> None:
    """Seen: a launcher killed by SIGKILL (or SIGHUP) left its directory, control socket
    included, for good. The next launcher removes it, and only the directories of dead
    launchers: one whose owner lives (this test's process) stays."""
    redis_env = {"REDIS_URL": redis_standalone.url}  # the user's Redis: a quicker start
    killed = RunningDemo(tmp_path / "first.sqlite3", redis_env=redis_env).start()
    assert killed.pid is not None
    left = list(Path(tempfile.gettempdir()).glob(f"channels-ha-demo-{killed.pid}-*"))
    os.kill(killed.pid, signal.SIGKILL)
    killed.stop()  # reaps it
    living = Path(tempfile.mkdtemp(prefix=f"channels-ha-demo-{os.getpid()}-"))
    try:
        assert len(left) == 1, left
        assert left[0].is_dir()  # nothing ran on SIGKILL
        with RunningDemo(tmp_path / "second.sqlite3", redis_env=redis_env) as second:
            assert second.url
            assert not left[0].exists()
            assert living.is_dir()
    finally:
        shutil.rmtree(living, ignore_errors=True)
