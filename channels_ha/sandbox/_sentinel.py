"""A Sentinel deployment: one master, two replicas, three sentinels (quorum 2).

Sentinels start with a pre-seeded view (their ids, the replicas, each other), so they need no
hello-message round before the topology is usable, and they start only after the replicas are
linked, so their first ``INFO`` already sees healthy links. The whole topology is ready within a
couple of seconds.
"""

from __future__ import annotations

import secrets
from collections import Counter
from typing import Any

import redis

from ..exceptions import SandboxError
from ._defaults import (
    FAILOVER_TIMEOUT_S,
    HOST,
    MASTER_NAME,
    SENTINEL_DOWN_AFTER_MS,
    SENTINEL_FAILOVER_TIMEOUT_MS,
    SENTINEL_QUORUM,
)
from ._ops import Op, arun, await_until, run, wait_until
from ._process import Directive, RedisNode
from ._replies import address, failed, pairs, records, role
from ._topology import Topology, addresses


class SentinelTopology(Topology):
    """Three data nodes (``redis-0`` starts as master) watched by three sentinels."""

    kind = "sentinel"

    def __init__(
        self,
        *,
        tls: bool = False,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        self.sentinel_password = sentinel_password
        super().__init__(tls=tls, password=password)
        data_ports = [self._port() for _ in range(3)]
        sentinel_ports = [self._port() for _ in range(3)]
        ids = [secrets.token_hex(20) for _ in sentinel_ports]
        self.data_nodes = [self._data_node(i, data_ports) for i in range(3)]
        self.sentinels = [self._sentinel(i, sentinel_ports, ids, data_ports) for i in range(3)]

    # -- configuration ---------------------------------------------------------------------

    def _data_node(self, index: int, ports: list[int]) -> RedisNode:
        return self._add_node(f"redis-{index}", self._data_directives(ports[index]), ports[index])

    def _sentinel(
        self, index: int, ports: list[int], ids: list[str], data_ports: list[int]
    ) -> RedisNode:
        config = [*self._listen(ports[index]), ("sentinel", "myid", ids[index])]
        config += self._monitor(data_ports)
        config += [
            ("sentinel", "known-sentinel", MASTER_NAME, HOST, str(port), ids[other])
            for other, port in enumerate(ports)
            if other != index
        ]
        return self._add_node(f"sentinel-{index}", config, ports[index], sentinel=True)

    def _monitor(self, data_ports: list[int]) -> list[Directive]:
        config: list[Directive] = [
            ("sentinel", "resolve-hostnames", "no"),
            ("sentinel", "monitor", MASTER_NAME, HOST, str(data_ports[0]), str(SENTINEL_QUORUM)),
            ("sentinel", "down-after-milliseconds", MASTER_NAME, str(SENTINEL_DOWN_AFTER_MS)),
            ("sentinel", "failover-timeout", MASTER_NAME, str(SENTINEL_FAILOVER_TIMEOUT_MS)),
            ("sentinel", "parallel-syncs", MASTER_NAME, "2"),
        ]
        config += [("sentinel", "known-replica", MASTER_NAME, HOST, str(p)) for p in data_ports[1:]]
        if self.password is not None:
            config.append(("sentinel", "auth-pass", MASTER_NAME, self.password))
        if self.sentinel_password is not None:
            config.append(("requirepass", self.sentinel_password))
            config.append(("sentinel", "sentinel-pass", self.sentinel_password))
        return config

    def _node_password(self, sentinel: bool) -> str | None:
        return self.sentinel_password if sentinel else self.password

    # -- what a client needs ---------------------------------------------------------------

    @property
    def url(self) -> str:
        hosts = ",".join(addresses(self.sentinels))
        query = (
            {} if self.sentinel_password is None else {"sentinel_password": self.sentinel_password}
        )
        return f"{self._url_base('redis+sentinel')}{hosts}/{MASTER_NAME}{self._url_query(query)}"

    @property
    def connection_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "sentinels": [[node.host, node.port] for node in self.sentinels],
            "master_name": MASTER_NAME,
            **self._client_settings(),
        }
        if self.sentinel_password is not None:
            config["sentinel_password"] = self.sentinel_password
        return config

    # -- lifecycle -------------------------------------------------------------------------

    def _start(self, timeout_s: float) -> None:
        for node in self.data_nodes:
            node.spawn()
        for node in self.data_nodes:
            node.wait_ready(timeout_s)
        run(self._replicate_op())
        wait_until(self._replication_check, "replicas to link to redis-0", timeout_s)
        for node in self.sentinels:
            node.spawn()
        self.wait_until_healthy(timeout_s)

    def _replicate_op(self) -> Op[None]:
        """Attach the replicas with REPLICAOF, recorded in their config files.

        A ``replicaof`` line in the initial config would do, but a replica configured so
        waits for its next cron tick (up to a second) before connecting; REPLICAOF connects
        at once. CONFIG REWRITE keeps the setting for a restart, as with a real server.
        """
        master, *replicas = self.data_nodes
        replies = yield [(node, ("REPLICAOF", master.host, master.port)) for node in replicas]
        replies += yield [(node, ("CONFIG", "REWRITE")) for node in replicas]
        for node, reply in zip(replicas * 2, replies, strict=True):
            if failed(reply):
                raise SandboxError(f"could not make {node.name} a replica: {reply}")

    def _replication_check(self) -> Op[str | None]:
        for node in self.data_nodes:
            node.raise_if_exited()
        master, *replicas = self.data_nodes
        replies = yield [(node, ("ROLE",)) for node in [*replicas, master]]
        return _replication_problem(master, replicas, replies)

    # -- observing -------------------------------------------------------------------------

    def current_master(self) -> RedisNode:
        """The data node most reachable sentinels name as master."""
        return _named(run(self._master_op()))

    async def acurrent_master(self) -> RedisNode:
        """Asyncio twin of :meth:`current_master`."""
        return _named(await arun(self._master_op()))

    def _master_op(self) -> Op[RedisNode | None]:
        sentinels = self._reachable_sentinels()
        replies = yield [
            (s, ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)) for s in sentinels
        ]
        votes = Counter(port for port in map(_port_of, replies) if port is not None)
        return self._data_node_on(votes.most_common(1)[0][0]) if votes else None

    def _data_node_on(self, port: int | None) -> RedisNode:
        for node in self.data_nodes:
            if node.port == port:
                return node
        raise SandboxError(f"sentinels name {HOST}:{port} as master, which is no sandbox node")

    def _reachable_sentinels(self) -> list[RedisNode]:
        return [node for node in self.sentinels if node.running and not node.paused]

    def _events(self) -> RedisNode | None:
        reachable = self._reachable_sentinels()
        return reachable[0] if reachable else None

    # -- faults and waits ------------------------------------------------------------------

    def failover(self) -> None:
        """Ask a sentinel for a graceful failover (``SENTINEL FAILOVER``); returns at once."""
        run(self._failover_op())

    async def afailover(self) -> None:
        """Asyncio twin of :meth:`failover`."""
        await arun(self._failover_op())

    def _failover_op(self) -> Op[None]:
        sentinel = self._events()
        if sentinel is None:
            raise SandboxError("no sentinel is running to start a failover")
        (reply,) = yield [(sentinel, ("SENTINEL", "FAILOVER", MASTER_NAME))]
        if failed(reply):
            raise SandboxError(f"SENTINEL FAILOVER on {sentinel.name} failed: {reply}")

    def wait_for_new_master(
        self, old: RedisNode, timeout_s: float = FAILOVER_TIMEOUT_S
    ) -> RedisNode:
        """Block until every reachable sentinel names a master other than ``old``; return it."""
        what = f"sentinels to replace {old.name} as master"
        wait_until(lambda: self._new_master_check(old), what, timeout_s, self._events())
        return self.current_master()

    async def await_new_master(
        self, old: RedisNode, timeout_s: float = FAILOVER_TIMEOUT_S
    ) -> RedisNode:
        """Asyncio twin of :meth:`wait_for_new_master`."""
        what = f"sentinels to replace {old.name} as master"
        await await_until(lambda: self._new_master_check(old), what, timeout_s, self._events())
        return await self.acurrent_master()

    def _new_master_check(self, old: RedisNode) -> Op[str | None]:
        sentinels = self._reachable_sentinels()
        replies = yield [
            (s, ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)) for s in sentinels
        ]
        ports = {_port_of(reply) for reply in replies}
        if len(ports) != 1 or None in ports or old.port in ports:
            return f"sentinels name {sorted(map(str, ports))} as master"
        new = self._data_node_on(ports.pop())
        (reply,) = yield [(new, ("ROLE",))]
        return None if role(reply)[0] == "master" else f"{new.name} reports ROLE {reply!r}"

    # -- health ----------------------------------------------------------------------------

    def _health_check(self) -> Op[str | None]:
        for node in self.nodes:
            node.raise_if_exited()
        master = yield from self._master_op()
        if master is None:
            return "no sentinel names a master"
        replicas = [node for node in self.data_nodes if node is not master]
        replies = yield [(node, ("ROLE",)) for node in [*replicas, master]]
        problem = _replication_problem(master, replicas, replies)
        if problem is None:
            problem = yield from self._sentinels_check(master)
        return problem

    def _sentinels_check(self, master: RedisNode) -> Op[str | None]:
        replies = yield [(sentinel, _TUNE) for sentinel in self.sentinels]
        for sentinel, reply in zip(self.sentinels, replies, strict=True):
            if isinstance(reply, (redis.ConnectionError, redis.TimeoutError)):
                return f"{sentinel.name} does not answer: {reply}"
        commands = [("MASTER",), ("REPLICAS",), ("SENTINELS",)]
        calls = [(s, ("SENTINEL", c[0], MASTER_NAME)) for s in self.sentinels for c in commands]
        replies = yield calls
        for index, sentinel in enumerate(self.sentinels):
            views = replies[index * 3 : index * 3 + 3]
            problem = _sentinel_view_problem(sentinel, master, *views)
            if problem is not None:
                return problem
        return None


# Sentinel's internal periods (Redis >= 7.0), set again on every health check because a restarted
# sentinel forgets them: INFO every second instead of every 10 s lets sentinels notice replicas
# linking and converted masters within a second; hello messages every 0.5 s (and so the 4
# periods a sentinel waits before converting a restarted master) speed up reconfiguration; a
# ping (and reconnection attempt) every 0.2 s links sentinels that started before their peers
# were listening without a second's wait; a short TILT period lets a paused sentinel rejoin
# quickly. Older servers answer with an error that is ignored: they converge too, only slower.
_TUNE = (
    "SENTINEL", "DEBUG", "INFO-PERIOD", 1000, "PUBLISH-PERIOD", 500, "PING-PERIOD", 200,
    "TILT-PERIOD", 5000,
)  # fmt: skip


def _named(master: RedisNode | None) -> RedisNode:
    if master is None:
        raise SandboxError("no reachable sentinel answered SENTINEL GET-MASTER-ADDR-BY-NAME")
    return master


def _port_of(reply: Any) -> int | None:
    """The port of a ``GET-MASTER-ADDR-BY-NAME`` reply, or ``None``."""
    addr = address(reply)
    return None if addr is None else addr[1]


def _replication_problem(
    master: RedisNode, replicas: list[RedisNode], roles: list[Any]
) -> str | None:
    """What keeps ``replicas`` from being linked to ``master``, or ``None``; ``roles`` are
    the replicas' ``ROLE`` replies, then the master's.

    A replica says "connected" once it loaded the master's data, but the master counts it
    (for ``WAIT``, and so for what a failover keeps) only from its first acknowledgement:
    ready means both sides agree."""
    *replica_roles, master_role = roles
    for replica, reply in zip(replicas, replica_roles, strict=True):
        name, rest = role(reply)
        linked = name == "slave" and int(rest[1]) == master.port and rest[2] == "connected"
        if not linked:
            return f"{replica.name} is not a linked replica of {master.name}: ROLE {reply!r}"
    name, rest = role(master_role)
    online = {int(entry[1]) for entry in rest[1]} if name == "master" else set()
    missing = [replica.name for replica in replicas if replica.port not in online]
    if missing:
        return f"{master.name} does not count {', '.join(missing)} as online: ROLE {master_role!r}"
    return None


def _sentinel_view_problem(
    sentinel: RedisNode, master: RedisNode, master_reply: Any, replicas: Any, peers: Any
) -> str | None:
    """What is wrong with one sentinel's view of the topology, or ``None``."""
    view = pairs(master_reply)
    expected = {"port": str(master.port), "flags": "master", "num-slaves": "2"}
    expected["num-other-sentinels"] = "2"
    wrong = {key: view.get(key) for key, value in expected.items() if view.get(key) != value}
    if wrong or failed(master_reply):
        return f"{sentinel.name} sees master {wrong or master_reply}"
    flags = [p.get("flags") for p in records(peers)]
    if flags != ["sentinel", "sentinel"]:
        return f"{sentinel.name} sees its peers flagged {flags}"
    return _replicas_view_problem(sentinel, master, records(replicas))


def _replicas_view_problem(
    sentinel: RedisNode, master: RedisNode, replicas: list[dict[str, str]]
) -> str | None:
    """Whether a sentinel's last ``INFO`` of each replica shows it linked to ``master``.

    Waiting for this, not just for the replicas' own ``ROLE``, keeps a later failover from
    racing a sentinel that still remembers a converted replica as a master.
    """
    expected = {"flags": "slave", "role-reported": "slave", "master-link-status": "ok"}
    expected["master-port"] = str(master.port)
    for replica in replicas:
        wrong = {
            key: replica.get(key) for key, value in expected.items() if replica.get(key) != value
        }
        if wrong:
            return f"{sentinel.name} sees replica {replica.get('name')} with {wrong}"
    return None
