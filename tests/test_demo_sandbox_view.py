"""The demo's reading of the sandbox: node roles from ROLE, and when it may kill again."""

from __future__ import annotations

from typing import Any

import pytest

from demo import sandbox_view as view

MASTER, REPLICA_1, REPLICA_2 = "127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"


def replica_of(master: str, link: str = "connected") -> list[Any]:
    host, port = master.split(":")
    return ["slave", host, int(port), link, 1234]


def replicas_reply(flags: str = "slave", link: str = "ok") -> list[list[str]]:
    return [["name", a, "flags", flags, "master-link-status", link] for a in (REPLICA_1, "x")]


def sentinels(master: str | None = MASTER, replicas_ok: bool = True) -> list[view.SentinelView]:
    reply = None if master is None else master.split(":")
    replicas = replicas_reply() if replicas_ok else replicas_reply(link="err")
    return [view.sentinel_view(f"s{i}", "127.0.0.1:0", reply, replicas) for i in range(3)]


def nodes(master_role: Any = ("master", 0, []), *, replica_2: Any = None) -> list[view.NodeView]:
    second = replica_of(MASTER) if replica_2 is None else replica_2
    return [
        view.node_view("redis-0", MASTER, 10, list(master_role) if master_role else None),
        view.node_view("redis-1", REPLICA_1, 11, replica_of(MASTER)),
        view.node_view("redis-2", REPLICA_2, 12, second),
    ]


def test_a_replica_reads_its_master_and_link_from_role() -> None:
    """A replica's ROLE reply gives its master's address and whether the link is up."""
    node = view.node_view("redis-1", REPLICA_1, 11, replica_of(MASTER, "connecting"))
    assert (node.role, node.master, node.linked) == ("replica", MASTER, False)


def test_a_node_without_a_process_is_down_and_a_silent_one_is_starting() -> None:
    """No pid means down; a running node that does not answer ROLE is starting."""
    assert view.node_view("redis-0", MASTER, None, None).role == "down"
    assert view.node_view("redis-0", MASTER, 10, None).role == "starting"


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        ((nodes(), sentinels()), view.HEALTHY),
        ((nodes(master_role=None), sentinels()), view.FAILING_OVER),
        ((nodes(), sentinels(master=None)), view.FAILING_OVER),
        ((nodes(replica_2=["master", 0, []]), sentinels()), view.REJOINING),
        ((nodes(), sentinels(replicas_ok=False)), view.REJOINING),
    ],
    ids=["healthy", "master-silent", "no-sentinel-answers", "old-master-back", "stale-sentinel"],
)
def test_phase(
    observed: tuple[list[view.NodeView], list[view.SentinelView]], expected: str
) -> None:
    """The kill button is offered only when master, replicas and sentinels all agree."""
    assert view.phase(*observed) == expected


def test_a_dead_node_after_the_failover_is_restarting() -> None:
    """Once the sentinels agree on a live master, a dead data node is due for a restart."""
    observed = nodes()
    observed[2] = view.node_view("redis-2", REPLICA_2, None, None)
    assert view.phase(observed, sentinels()) == view.RESTARTING
