"""A Redis Cluster: three masters with one replica each, built with CLUSTER commands.

Nodes get distinct config epochs and meet each other directly (no gossip round needed to form
the mesh), and each uses an explicit bus port, so no port ``+10000`` collision is possible.
"""

from __future__ import annotations

from typing import Any

from ..exceptions import SandboxError
from ._defaults import (
    CLUSTER_NODE_TIMEOUT_MS,
    CLUSTER_SLOTS,
    FAILOVER_TIMEOUT_S,
    HOST,
    MIGRATE_BATCH_KEYS,
    MIGRATE_MAX_ROUNDS,
    MIGRATE_TIMEOUT_MS,
    TOPOLOGY_READY_TIMEOUT_S,
)
from ._ops import Call, Op, arun, await_until, run, wait_until
from ._process import Directive, RedisNode
from ._replies import failed, role
from ._topology import Topology, addresses

_MASTERS = 3
#: A slot map: ``(first slot, last slot, owner port)`` for each range, sorted.
SlotMap = list[tuple[int, int, int]]


class ClusterTopology(Topology):
    """Six nodes: ``node-0``..``node-2`` start as masters, ``node-3``..``node-5`` as replicas;
    :meth:`add_master` adds more."""

    kind = "cluster"

    def __init__(self, *, tls: bool = False, password: str | None = None) -> None:
        super().__init__(tls=tls, password=password)
        self.bus_ports: dict[str, int] = {}
        for _ in range(_MASTERS * 2):
            self._add_cluster_node()

    def _add_cluster_node(self) -> RedisNode:
        port, bus_port = self._port(), self._port()
        directives = self._cluster_directives(port, bus_port)
        node = self._add_node(f"node-{len(self.nodes)}", directives, port)
        self.bus_ports[node.name] = bus_port
        return node

    def _cluster_directives(self, port: int, bus_port: int) -> list[Directive]:
        config = [
            *self._data_directives(port),
            ("cluster-enabled", "yes"),
            ("cluster-config-file", "nodes.conf"),
            ("cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS)),
            ("cluster-port", str(bus_port)),
            # A replica may always take over, however long it was cut off from its master.
            ("cluster-replica-validity-factor", "0"),
        ]
        return config + ([("tls-cluster", "yes")] if self.tls else [])

    def add_master(self, timeout_s: float = TOPOLOGY_READY_TIMEOUT_S) -> RedisNode:
        """Start one more node and join it as a master that owns no slot, as when a cluster
        grows: a reshard (:meth:`migrate_slot`) then moves slots onto it."""
        node = self._add_cluster_node()
        node.start()
        run(self._meet_op(node))
        wait_until(lambda: self._joined_check(node), f"{node.name} to join", timeout_s)
        return node

    async def aadd_master(self, timeout_s: float = TOPOLOGY_READY_TIMEOUT_S) -> RedisNode:
        """Asyncio twin of :meth:`add_master`."""
        node = self._add_cluster_node()
        node.spawn()
        await node.await_ready()
        await arun(self._meet_op(node))
        await await_until(lambda: self._joined_check(node), f"{node.name} to join", timeout_s)
        return node

    def _meet_op(self, new: RedisNode) -> Op[None]:
        """Every node meets ``new`` directly: no gossip round needed."""
        calls: list[Call] = [
            (node, ("CLUSTER", "MEET", HOST, new.port, self.bus_ports[new.name]))
            for node in self.nodes
            if node is not new
        ]
        _raise_failures(f"meet {new.name}", calls, (yield calls))

    def _joined_check(self, new: RedisNode) -> Op[str | None]:
        """Every node knows ``new``, and ``new`` serves (a master just started waits a
        moment before its state turns ok: until then it refuses even MIGRATE's keys)."""
        problem = yield from self._mesh_check()
        return problem if problem is not None else (yield from self._state_check([new]))

    # -- what a client needs ---------------------------------------------------------------

    @property
    def url(self) -> str:
        hosts = ",".join(addresses(self.nodes))
        return f"{self._url_base('redis+cluster')}{hosts}{self._url_query({})}"

    @property
    def connection_config(self) -> dict[str, Any]:
        nodes = [[node.host, node.port] for node in self.nodes]
        return {"startup_nodes": nodes, **self._client_settings()}

    # -- lifecycle -------------------------------------------------------------------------

    def _start(self, timeout_s: float) -> None:
        for node in self.nodes:
            node.spawn()
        for node in self.nodes:
            node.wait_ready(timeout_s)
        ids = run(self._form_op())
        wait_until(self._mesh_check, "cluster nodes to know each other", timeout_s)
        run(self._replicate_op(ids))
        self.wait_until_healthy(timeout_s)

    def _form_op(self) -> Op[list[str]]:
        """Give every node its own epoch, the masters their slots, and let every pair meet."""
        replies = yield [(node, ("CLUSTER", "MYID")) for node in self.nodes]
        calls: list[Call] = [
            (node, ("CLUSTER", "SET-CONFIG-EPOCH", i + 1)) for i, node in enumerate(self.nodes)
        ]
        calls += [
            (self.nodes[i], ("CLUSTER", "ADDSLOTSRANGE", *_slot_range(i))) for i in range(_MASTERS)
        ]
        calls += [
            (node, ("CLUSTER", "MEET", HOST, other.port, self.bus_ports[other.name]))
            for i, node in enumerate(self.nodes)
            for other in self.nodes[i + 1 :]
        ]
        _raise_failures("form the cluster", calls, (yield calls))
        return [str(reply) for reply in replies]

    def _replicate_op(self, ids: list[str]) -> Op[None]:
        calls = [
            (self.nodes[_MASTERS + i], ("CLUSTER", "REPLICATE", ids[i])) for i in range(_MASTERS)
        ]
        _raise_failures("attach replicas", calls, (yield calls))

    def _mesh_check(self) -> Op[str | None]:
        """Whether every node knows every other one as healthy and connected."""
        replies = yield [(node, ("CLUSTER", "NODES")) for node in self.nodes]
        for node, reply in zip(self.nodes, replies, strict=True):
            table = _node_table(reply)
            unwell = [row for row in table if not _well(row)]
            if len(table) != len(self.nodes) or unwell:
                return f"{node.name} knows {len(table)} nodes, of which unwell: {unwell}"
        return None

    # -- observing -------------------------------------------------------------------------

    def slot_map(self) -> SlotMap:
        """Who owns which slots, as the first reachable node sees it."""
        return run(self._slot_map_op())

    async def aslot_map(self) -> SlotMap:
        """Asyncio twin of :meth:`slot_map`."""
        return await arun(self._slot_map_op())

    def masters(self) -> list[RedisNode]:
        """The nodes that own slots now."""
        return self._owners(self.slot_map())

    async def amasters(self) -> list[RedisNode]:
        """Asyncio twin of :meth:`masters`."""
        return self._owners(await self.aslot_map())

    def node_for_slot(self, slot: int) -> RedisNode:
        """The node that owns ``slot`` now."""
        return self._owner_of(slot, self.slot_map())

    async def anode_for_slot(self, slot: int) -> RedisNode:
        """Asyncio twin of :meth:`node_for_slot`."""
        return self._owner_of(slot, await self.aslot_map())

    def _owner_of(self, slot: int, slots: SlotMap) -> RedisNode:
        owners = self._owners([entry for entry in slots if entry[0] <= slot <= entry[1]])
        if not owners:
            raise SandboxError(f"slot {slot} has no owner")
        return owners[0]

    def _owners(self, slots: SlotMap) -> list[RedisNode]:
        ports = {port for _, _, port in slots}
        return [node for node in self.nodes if node.port in ports]

    def _slot_map_op(self) -> Op[SlotMap]:
        for node in self._reachable():
            (reply,) = yield [(node, ("CLUSTER", "SLOTS"))]
            if not failed(reply):
                return _slot_map(reply)
        raise SandboxError("no cluster node answered CLUSTER SLOTS")

    def _reachable(self) -> list[RedisNode]:
        return [node for node in self.nodes if node.running and not node.paused]

    def _node(self, port: int) -> RedisNode:
        for node in self.nodes:
            if node.port == port:
                return node
        raise SandboxError(f"{HOST}:{port} is not a node of this cluster")

    # -- faults and waits ------------------------------------------------------------------

    def wait_for_new_master(
        self, old: RedisNode, timeout_s: float = FAILOVER_TIMEOUT_S
    ) -> RedisNode:
        """Block until another node took over the slots of ``old`` and the cluster is ok."""
        slot = self._first_slot_of(old, self.slot_map())
        wait_until(
            lambda: self._taken_over_check(old, slot), f"{old.name} to be replaced", timeout_s
        )
        return self.node_for_slot(slot)

    async def await_new_master(
        self, old: RedisNode, timeout_s: float = FAILOVER_TIMEOUT_S
    ) -> RedisNode:
        """Asyncio twin of :meth:`wait_for_new_master`."""
        slot = self._first_slot_of(old, await self.aslot_map())
        what = f"{old.name} to be replaced"
        await await_until(lambda: self._taken_over_check(old, slot), what, timeout_s)
        return await self.anode_for_slot(slot)

    @staticmethod
    def _first_slot_of(node: RedisNode, slots: SlotMap) -> int:
        for first, _, port in slots:
            if port == node.port:
                return first
        raise SandboxError(f"{node.name} owns no slots: it is not a master")

    def _taken_over_check(self, old: RedisNode, slot: int) -> Op[str | None]:
        live = self._reachable()
        replies = yield [(node, ("CLUSTER", "SLOTS")) for node in live]
        for node, reply in zip(live, replies, strict=True):
            owner = [port for first, last, port in _slot_map(reply) if first <= slot <= last]
            if failed(reply) or owner == [old.port]:
                return f"{node.name} sees slot {slot} owned by {owner or reply}"
        return (yield from self._state_check(live))

    def _state_check(self, nodes: list[RedisNode]) -> Op[str | None]:
        replies = yield [(node, ("CLUSTER", "INFO")) for node in nodes]
        for node, reply in zip(nodes, replies, strict=True):
            if "cluster_state:ok" not in str(reply):
                return f"{node.name} is not ok: {_first_line(reply)}"
        return None

    # -- slot migration --------------------------------------------------------------------

    def migrate_slot(self, slot: int, target: RedisNode, *, finish: bool = True) -> None:
        """Move ``slot`` and its keys to ``target``, as ``redis-cli --cluster reshard`` does.

        With ``finish=False`` the keys are moved but the slot stays MIGRATING/IMPORTING, so
        clients get ASK redirections until :meth:`finish_slot_migration`.
        """
        run(self._migrate_op(slot, target, finish))

    async def amigrate_slot(self, slot: int, target: RedisNode, *, finish: bool = True) -> None:
        """Asyncio twin of :meth:`migrate_slot`."""
        await arun(self._migrate_op(slot, target, finish))

    def finish_slot_migration(self, slot: int, target: RedisNode) -> None:
        """Assign ``slot`` to ``target`` on every master (ends a ``finish=False`` migration)."""
        run(self._assign_op(slot, target))

    async def afinish_slot_migration(self, slot: int, target: RedisNode) -> None:
        """Asyncio twin of :meth:`finish_slot_migration`."""
        await arun(self._assign_op(slot, target))

    def _migrate_op(self, slot: int, target: RedisNode, finish: bool) -> Op[None]:
        source = self._node((yield from self._owner_op(slot)))
        if source is target:
            raise SandboxError(f"slot {slot} is already on {target.name}")
        source_id, target_id = yield from self._ids_op([source, target])
        calls = [
            (target, ("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)),
            (source, ("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)),
        ]
        _raise_failures(f"mark slot {slot} for migration", calls, (yield calls))
        yield from self._move_keys_op(slot, source, target)
        if finish:
            yield from self._assign_op(slot, target)

    def _owner_op(self, slot: int) -> Op[int]:
        slots = yield from self._slot_map_op()
        for first, last, port in slots:
            if first <= slot <= last:
                return port
        raise SandboxError(f"slot {slot} has no owner")

    def _ids_op(self, nodes: list[RedisNode]) -> Op[list[str]]:
        calls = [(node, ("CLUSTER", "MYID")) for node in nodes]
        replies = yield calls
        _raise_failures("read node ids", calls, replies)
        return [str(reply) for reply in replies]

    def _move_keys_op(self, slot: int, source: RedisNode, target: RedisNode) -> Op[None]:
        auth = () if self.password is None else ("AUTH", self.password)
        for _ in range(MIGRATE_MAX_ROUNDS):
            (keys,) = yield [(source, ("CLUSTER", "GETKEYSINSLOT", slot, MIGRATE_BATCH_KEYS))]
            if not keys:
                return
            command = ("MIGRATE", target.host, target.port, "", 0, MIGRATE_TIMEOUT_MS, *auth)
            call = (source, (*command, "KEYS", *keys))
            _raise_failures(f"migrate keys of slot {slot}", [call], (yield [call]))
        raise SandboxError(f"slot {slot} still had keys after {MIGRATE_MAX_ROUNDS} MIGRATE rounds")

    def _assign_op(self, slot: int, target: RedisNode) -> Op[None]:
        (target_id,) = yield from self._ids_op([target])
        masters = self._owners((yield from self._slot_map_op()))
        # The target first, then the others: the documented order that avoids a window in
        # which no node accepts the slot.
        nodes = [target, *(m for m in masters if m is not target)]
        calls = [(node, ("CLUSTER", "SETSLOT", slot, "NODE", target_id)) for node in nodes]
        replies = yield calls
        # A master that gave away its last slot turns into a replica of the new owner
        # (cluster-allow-replica-migration), maybe before its own SETSLOT arrives: a replica
        # refuses SETSLOT, and has nothing left to assign.
        kept = [
            (call, reply)
            for call, reply in zip(calls, replies, strict=True)
            if "only with masters" not in str(reply)
        ]
        _raise_failures(f"assign slot {slot}", [c for c, _ in kept], [r for _, r in kept])

    # -- health ----------------------------------------------------------------------------

    def _health_check(self) -> Op[str | None]:
        for node in self.nodes:
            node.raise_if_exited()
        problem = yield from self._state_check(self.nodes)
        if problem is None:
            problem = yield from self._agreement_check()
        if problem is None:
            problem = yield from self._links_check()
        return problem

    def _agreement_check(self) -> Op[str | None]:
        replies = yield [(node, ("CLUSTER", "SLOTS")) for node in self.nodes]
        maps = [_slot_map(reply) for reply in replies]
        covered = sum(last - first + 1 for first, last, _ in maps[0])
        # At least: masters added later (add_master) may own slots too.
        if covered != CLUSTER_SLOTS or len({port for *_, port in maps[0]}) < _MASTERS:
            return f"{self.nodes[0].name} sees slots {maps[0]}"
        for node, slots in zip(self.nodes, maps, strict=True):
            if slots != maps[0]:
                return f"{node.name} sees slots {slots}, {self.nodes[0].name} sees {maps[0]}"
        return None

    def _links_check(self) -> Op[str | None]:
        replies = yield [(node, ("ROLE",)) for node in self.nodes]
        replicas = [
            (node, rest)
            for node, (name, rest) in zip(self.nodes, map(role, replies), strict=True)
            if name == "slave"
        ]
        for node, rest in replicas:
            if rest[2] != "connected":
                return f"{node.name} is a replica not linked to its master: {rest}"
        if len(replicas) != _MASTERS:
            return f"{len(replicas)} replicas instead of {_MASTERS}"
        return (yield from self._mesh_check())


def _slot_range(index: int) -> tuple[int, int]:
    """The slots the ``index``-th master starts with: an even split of all slots."""
    size = CLUSTER_SLOTS // _MASTERS
    last = CLUSTER_SLOTS - 1 if index == _MASTERS - 1 else (index + 1) * size - 1
    return index * size, last


def _slot_map(reply: Any) -> SlotMap:
    """A raw ``CLUSTER SLOTS`` reply as sorted ``(first, last, owner port)`` ranges."""
    if not isinstance(reply, list):
        return []
    return sorted((int(entry[0]), int(entry[1]), int(entry[2][1])) for entry in reply)


def _node_table(reply: Any) -> list[dict[str, str]]:
    """A raw ``CLUSTER NODES`` reply as ``{"id", "address", "flags", "link"}`` per node."""
    rows = [line.split() for line in str(reply).splitlines() if line.strip()]
    if failed(reply):
        return []
    return [{"id": r[0], "address": r[1], "flags": r[2], "link": r[7]} for r in rows]


def _well(row: dict[str, str]) -> bool:
    """Whether a ``CLUSTER NODES`` row shows a reachable, fully known node."""
    flags = set(row["flags"].split(","))
    return row["link"] == "connected" and not flags & {"fail", "fail?", "handshake", "noaddr"}


def _first_line(reply: Any) -> str:
    return str(reply).splitlines()[0] if str(reply) else repr(reply)


def _raise_failures(action: str, calls: list[Any], replies: list[Any]) -> None:
    for (node, command), reply in zip(calls, replies, strict=True):
        if failed(reply):
            raise SandboxError(
                f"could not {action}: {node.name} answered {command[:3]} with {reply}"
            )
