"""Sandbox ports: reserved across processes while their node lives, and retaken if a process
that is no sandbox binds one first."""

from __future__ import annotations

import logging
import random
import socket
import subprocess
import sys

import pytest

from channels_ha.exceptions import SandboxPortTaken
from channels_ha.sandbox import (
    RedisNode,
    StandaloneTopology,
    TopologyFactory,
    _ports,
    start_topology,
)
from channels_ha.sandbox._defaults import PORT_TAKEN_TRIES

# Another process's allocate_port() drawing ``port`` first: it prints whether the port is
# free to bind, then the port it got.
_OTHER_PROCESS = """
import random, sys
from channels_ha.sandbox import _ports
port = int(sys.argv[1])
draws = iter([port])
_ports._random.randint = lambda a, b: next(draws, None) or random.randint(a, b)
print(_ports._is_free(port), _ports.allocate_port())
"""


def _other_process_allocates(port: int) -> tuple[bool, int]:
    """(whether ``port`` was free to bind, the port got) in another process that drew it first."""
    result = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, str(port)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    free, got = result.stdout.split()
    return free == "True", int(got)


class _FirstDraw(random.Random):
    """Draws ``port`` first, then at random."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self._first: int | None = port

    def randint(self, a: int, b: int) -> int:
        drawn, self._first = self._first, None
        return drawn if drawn is not None else super().randint(a, b)


def test_a_killed_nodes_port_stays_reserved_for_other_processes(
    redis_sandbox_factory: TopologyFactory,
) -> None:
    """While a node is down, another process's allocate_port() passes over its port, free as
    it is, so the node restarts on it."""
    topology = redis_sandbox_factory("standalone")
    node = topology.nodes[0]
    node.kill()
    free, got = _other_process_allocates(node.port)
    assert free, "the port of the killed node should be free to bind"
    assert got != node.port
    topology.wait_until_healthy()  # restarts it on its port


def test_a_reservation_ends_with_its_release_or_its_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A released port can be allocated by another process, and a port that an exited
    process had reserved by this one."""
    port = _ports.allocate_port()
    _ports.release_port(port)
    assert _other_process_allocates(port) == (True, port)
    monkeypatch.setattr(_ports, "_random", _FirstDraw(port))
    assert _ports.allocate_port() == port
    _ports.release_port(port)


def test_a_port_taken_before_the_first_start_is_retried(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A port another process binds between its allocation and the node's first start costs
    one more start, on fresh ports, not an error."""
    squatters = _squat_before_spawns(monkeypatch, count=1)
    with caplog.at_level(logging.WARNING, logger="channels_ha.sandbox._kinds"):
        topology = start_topology("standalone")
    try:
        assert isinstance(topology, StandaloneTopology)
        assert topology.node.port != squatters[0].getsockname()[1]
        assert [r.getMessage() for r in caplog.records if "fresh ports" in r.getMessage()]
    finally:
        topology.stop()
        for squatter in squatters:
            squatter.close()


def test_a_port_taken_at_every_start_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The retries are bounded: a port taken at every start raises SandboxPortTaken."""
    squatters = _squat_before_spawns(monkeypatch, count=PORT_TAKEN_TRIES + 1)
    try:
        with pytest.raises(SandboxPortTaken, match="Address already in use"):
            start_topology("standalone")
        assert len(squatters) == PORT_TAKEN_TRIES
    finally:
        for squatter in squatters:
            squatter.close()


def _squat_before_spawns(monkeypatch: pytest.MonkeyPatch, count: int) -> list[socket.socket]:
    """Make the first ``count`` spawns find their node's port bound by someone else."""
    squatters: list[socket.socket] = []
    spawn = RedisNode.spawn

    def spawn_after_a_squatter(node: RedisNode) -> None:
        if len(squatters) < count:
            squatter = socket.socket()
            squatter.bind((node.host, node.port))
            squatter.listen()
            squatters.append(squatter)
        spawn(node)

    monkeypatch.setattr(RedisNode, "spawn", spawn_after_a_squatter)
    return squatters
