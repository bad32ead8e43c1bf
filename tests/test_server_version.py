"""channels-ha needs Redis 7 (BLMPOP, LPOS ... RANK, scripts with a #!lua shebang).

An older server refuses the scripts at the handshake, which read as a puzzling Lua error; the
handshake and the probe now say which version was found and which is needed. Only Redis 7 is
installed here, so the older server is a real Redis 7 INFO reply with its version line
changed.
"""

from __future__ import annotations

import re

import pytest
import redis

from channels_ha._probe import _master_problems
from channels_ha._probe_report import NodeReport
from channels_ha._resp import Endpoint
from channels_ha._server import require_supported_version, too_old
from channels_ha.exceptions import RedisCommandError
from channels_ha.sandbox import StandaloneTopology


@pytest.fixture
def info_server(redis_standalone: StandaloneTopology) -> bytes:
    """A real ``INFO server`` reply, as the handshake reads it."""
    client = redis.Redis(host=redis_standalone.node.host, port=redis_standalone.node.port)
    try:
        client.response_callbacks.clear()
        reply = client.execute_command("INFO", "server")  # type: ignore[no-untyped-call]
    finally:
        client.close()
    assert isinstance(reply, bytes)
    return reply


def test_this_machines_redis_is_supported(info_server: bytes) -> None:
    require_supported_version(info_server, Endpoint("127.0.0.1", 6390))


def test_an_older_redis_is_refused_by_name(info_server: bytes) -> None:
    older = re.sub(rb"redis_version:\S+", b"redis_version:6.2.14", info_server)
    with pytest.raises(RedisCommandError) as refused:
        require_supported_version(older, Endpoint("127.0.0.1", 6390))
    assert str(refused.value) == (
        "Redis at tcp://127.0.0.1:6390 is version 6.2.14; channels-ha needs Redis 7.0 or newer "
        "(BLMPOP, server scripts)."
    )


@pytest.mark.parametrize(
    ("version", "old"),
    [
        ("6.2.14", True),
        ("5.0.7", True),
        ("7.0.0", False),
        ("7.2.5", False),
        ("8.0.2", False),
        ("10.0", False),
        (None, False),
        ("", False),
    ],
)
def test_versions(version: str | None, old: bool) -> None:
    assert too_old(version) is old


def test_the_probe_names_an_older_master() -> None:
    node = NodeReport("10.0.1.7:6379", reachable=True, role="master", version="6.2.14")
    assert _master_problems(node) == [
        "10.0.1.7:6379 runs Redis 6.2.14; channels-ha needs 7.0 or newer"
    ]
