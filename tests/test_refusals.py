"""What Redis refuses is a clear error, and is not asked again in a tight loop."""

from __future__ import annotations

import time
import uuid

import pytest

from channels_ha import RedisChannelLayer, RedisCommandError
from channels_ha.sandbox import StandaloneTopology, Topology

pytestmark = pytest.mark.redis_topologies("standalone")

PASSWORD = "limited-secret"
REFUSED_FOR_S = 2.0


async def test_a_user_refused_a_command_on_connecting_is_told_which_without_a_storm(
    redis_topology: Topology,
) -> None:
    """A user whose ACL lacks ROLE (in @dangerous, which hardening recipes remove) learns
    that the command, not the password, is the problem; and each send that fails does not
    open a connection at once (seen: 727 connections in 3 s)."""
    assert isinstance(redis_topology, StandaloneTopology)
    node = redis_topology.node
    admin = node.async_client()
    await admin.execute_command(
        "ACL", "SETUSER", "limited", "on", f">{PASSWORD}", "~*", "&*", "+@all", "-role"
    )
    url = f"redis://limited:{PASSWORD}@{node.host}:{node.port}/0"
    layer = RedisChannelLayer(hosts=[url], prefix=f"refused{uuid.uuid4().hex[:8]}")
    try:
        before = (await admin.info("stats"))["total_connections_received"]
        errors: list[str] = []
        deadline = time.monotonic() + REFUSED_FOR_S
        while time.monotonic() < deadline and len(errors) < 1000:
            with pytest.raises(RedisCommandError) as caught:
                await layer.send("refused", {"type": "x"})
            errors.append(str(caught.value))
        opened = (await admin.info("stats"))["total_connections_received"] - before
    finally:
        await layer.close()
        await admin.execute_command("ACL", "DELUSER", "limited")
        await admin.aclose()
    assert "accepted the credentials but refused a command" in errors[0], errors[0]
    assert "'role'" in errors[0]
    assert all(PASSWORD not in error for error in errors)
    assert len(errors) >= 3
    assert opened <= 12, f"{opened} connections for {len(errors)} refused sends"
