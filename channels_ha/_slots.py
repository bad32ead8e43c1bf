"""Redis Cluster slots: the slot of a key, and the owner of each slot as most nodes see it.

Right after a failure nodes disagree for a moment: a master restarted from its old
configuration still claims slots its replica took over meanwhile, until it learns better
from its peers. So the slot map is asked of every reachable node, and the majority wins.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Mapping
from typing import NamedTuple, cast

from redis.crc import key_slot

from ._answer_window import answers_in_window
from ._resp import Endpoint, open_client
from ._server import ServerSettings, all_replies
from .exceptions import ConnectionLost

SLOTS = 16_384
# Once most nodes answered (a map among the answers), the others get this long: a frozen
# node (one the layer may not even use) would hold every read for socket_timeout.
_MAP_ANSWER_WINDOW_S = 0.25

Owners = list[str | None]  # the master (``host:port``) of each slot, if any


def slot_of(key: str) -> int:
    slot: int = key_slot(key.encode())
    return slot


@functools.lru_cache(maxsize=1024)
def tag_for_slot(slot: int) -> str:
    """A hash tag whose keys land in ``slot`` (for one key per master, such as the epoch)."""
    for number in range(1_000_000):
        tag = f"s{number}"
        if slot_of(tag) == slot:
            return tag
    raise AssertionError(f"no tag found for slot {slot}")  # pragma: no cover


def node_address(host: str, port: int) -> str:
    return f"{host}:{port}"


def redirect_target(reply: str) -> str:
    """``MOVED 3999 127.0.0.1:6381`` -> ``127.0.0.1:6381``."""
    return reply.split()[2]


Replicas = Mapping[str, frozenset[str]]  # each master's replicas (``host:port``)


class MapRead(NamedTuple):
    """What a read of the slot map from several nodes found."""

    owners: Owners  # the owners most nodes named
    quorum_s: float | None  # how long it took most of them to answer (None: they never did)
    replicas: Replicas  # each master's replicas, as any answer named them


async def read_owners(candidates: list[Endpoint], settings: ServerSettings) -> MapRead:
    """The owners most ``candidates`` name, how long it took most of them to answer (see
    ``_ask_all``), and the replicas the answers name. Raises ConnectionLost if none gave a
    map."""
    answers, quorum_s = await _ask_all(candidates, settings)
    replies = [(where, answer) for where, answer in answers.items() if isinstance(answer, list)]
    if not replies:
        errors = "; ".join(f"{where.describe()}: {answer}" for where, answer in answers.items())
        raise ConnectionLost(f"no cluster node gave its slot map ({errors})")
    maps = [parse_slots(where, reply) for where, reply in replies]
    replicas: dict[str, set[str]] = {}
    for where, reply in replies:
        for master, named in parse_replicas(where, reply).items():
            replicas.setdefault(master, set()).update(named)
    return MapRead(_majority(maps), quorum_s, {m: frozenset(r) for m, r in replicas.items()})


async def _ask_all(
    candidates: list[Endpoint], settings: ServerSettings
) -> tuple[dict[Endpoint, object], float | None]:
    """Each candidate's ``CLUSTER SLOTS`` reply or error, and how long it took most of
    them to answer, with a map among the answers (None: they never did); those still
    due ``_MAP_ANSWER_WINDOW_S`` later are left out (see ``_answer_window``). Not fewer:
    the majority of maps is what outvotes a restarted master still claiming its old
    slots."""
    asks = {node: ask_slots(node, settings) for node in dict.fromkeys(candidates)}
    # Any reply is a map (errors are raised, not returned).
    answers, quorum_s = await answers_in_window(asks, lambda _: True, _MAP_ANSWER_WINDOW_S)
    return dict(answers), quorum_s


async def ask_slots(endpoint: Endpoint, settings: ServerSettings) -> list[list[object]]:
    client = await open_client(endpoint, settings.connect_timeout_s)
    try:
        auth = settings.credentials.auth_command()
        commands = [*([auth] if auth else []), ("CLUSTER", "SLOTS")]
        timeout_s = settings.reply_timeout_s
        replies = await all_replies(client, commands, timeout_s, endpoint=endpoint)
        return cast(list[list[object]], replies[-1])
    finally:
        assert client.protocol is not None
        await client.protocol.aclose()


def _majority(maps: list[Owners]) -> Owners:
    """The map most nodes gave; failing a majority, each slot's most named owner."""
    counted = Counter(tuple(owners) for owners in maps)
    (common, votes), *_ = counted.most_common(1)
    if votes * 2 > len(maps) or len(counted) == 1:
        return list(common)
    by_slot = zip(*maps, strict=True)
    return [_most_named(owners) for owners in by_slot]


def _most_named(owners: tuple[str | None, ...]) -> str | None:
    named = Counter(owner for owner in owners if owner is not None)
    return named.most_common(1)[0][0] if named else None


def parse_slots(asked: Endpoint, reply: list[list[object]]) -> Owners:
    """``CLUSTER SLOTS`` as the owner (``host:port``) of each slot."""
    owners: Owners = [None] * SLOTS
    for start, end, master, *_ in reply:
        first, last = cast(int, start), cast(int, end)
        owners[first : last + 1] = [_node_of(asked, master)] * (last - first + 1)
    return owners


def parse_replicas(asked: Endpoint, reply: list[list[object]]) -> dict[str, set[str]]:
    """``CLUSTER SLOTS`` as the replicas of each master: the nodes that can tell whether a
    master still owns its slots when no other master is known (a replica that took over
    says so)."""
    replicas: dict[str, set[str]] = {}
    for _, _, master, *others in reply:
        named = replicas.setdefault(_node_of(asked, master), set())
        named.update(_node_of(asked, replica) for replica in others)
    return replicas


def _node_of(asked: Endpoint, entry: object) -> str:
    """A node entry of ``CLUSTER SLOTS`` (``[host, port, id, ...]``) as ``host:port``; an
    empty host is the asked node's (a node that does not know its own address)."""
    host, port = cast(list[bytes], entry)[:2]
    return node_address(host.decode() or asked.host, int(port))
