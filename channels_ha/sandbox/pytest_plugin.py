"""pytest fixtures that start real Redis topologies: the ``channels_ha`` pytest plugin.

Installed with channels-ha and loaded automatically (``pytest11`` entry point). Loading it is
cheap: no process starts and no Redis client is imported until a test asks for a fixture.

Shared topologies, session-scoped, started on first use, for tests that leave them intact
(they may write keys, but they kill, pause or reconfigure nothing)::

    def test_ping(redis_sentinel):
        assert redis_sentinel.current_master().client().ping()

``redis_standalone``, ``redis_tls``, ``redis_sentinel``, ``redis_cluster``
    A ``StandaloneTopology``, ``TLSTopology``, ``SentinelTopology`` and ``ClusterTopology``
    (see :mod:`channels_ha.sandbox`).

``redis_topology``
    The same four, one after the other: a test that takes it runs once per topology kind, with
    ids ``[standalone]``, ``[tls]``, ``[sentinel]``, ``[cluster]``. Narrow the kinds with the
    ``redis_topologies`` marker, on a test, a class or a module (``pytestmark``)::

        @pytest.mark.redis_topologies("sentinel", "cluster")
        def test_survives_failover(redis_topology): ...

    or parametrize it indirectly, which takes precedence::

        @pytest.mark.parametrize("redis_topology", ["tls"], indirect=True)

Fresh topologies, for tests that break them (kill, pause, failover, migrate)::

    def test_failover(redis_sandbox_factory):
        sentinel = redis_sandbox_factory("sentinel", tls=False, password=None)
        old = sentinel.current_master()
        old.kill()
        assert sentinel.wait_for_new_master(old) is not old

``redis_sandbox_factory``
    A ``channels_ha.sandbox.TopologyFactory``, function-scoped: every topology it starts
    is stopped when the test ends. Options: ``tls``, ``password``, ``sentinel_password``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from channels_ha import sandbox

if TYPE_CHECKING:
    from channels_ha.sandbox import (
        ClusterTopology,
        SentinelTopology,
        StandaloneTopology,
        TLSTopology,
        Topology,
        TopologyFactory,
    )

#: Kept in step with ``channels_ha.sandbox.TOPOLOGY_KINDS`` (a test checks it) so that
#: collecting tests does not import the sandbox.
KINDS = ("standalone", "tls", "sentinel", "cluster")
_MARKER = "redis_topologies"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(*kinds): run tests using the redis_topology fixture only on these kinds "
        f"({', '.join(KINDS)})",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``redis_topology`` over the kinds its marker allows (default: all)."""
    if "redis_topology" not in metafunc.fixturenames or _parametrized_by_test(metafunc):
        return
    marker = metafunc.definition.get_closest_marker(_MARKER)
    kinds = tuple(marker.args) if marker is not None else KINDS
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise pytest.UsageError(f"{_MARKER} marker needs kinds among {KINDS}, got {kinds}")
    metafunc.parametrize("redis_topology", kinds, indirect=True, ids=kinds)


def _parametrized_by_test(metafunc: pytest.Metafunc) -> bool:
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0] if marker.args else marker.kwargs.get("argnames", ())
        if isinstance(names, str):
            names = [name.strip() for name in names.split(",")]
        if "redis_topology" in names:
            return True
    return False


def _shared(kind: str) -> Iterator[Topology]:
    topology = sandbox.start_topology(kind)
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture(scope="session")
def redis_standalone() -> Iterator[StandaloneTopology]:
    """A shared single Redis node on a free loopback port."""
    yield from _shared("standalone")  # type: ignore[misc]


@pytest.fixture(scope="session")
def redis_tls() -> Iterator[TLSTopology]:
    """A shared TLS-only Redis node; its CA is at ``redis_tls.tls.ca_cert``."""
    yield from _shared("tls")  # type: ignore[misc]


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelTopology]:
    """A shared Sentinel deployment: one master, two replicas, three sentinels."""
    yield from _shared("sentinel")  # type: ignore[misc]


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterTopology]:
    """A shared Redis Cluster: three masters, three replicas."""
    yield from _shared("cluster")  # type: ignore[misc]


@pytest.fixture
def redis_topology(request: pytest.FixtureRequest) -> Topology:
    """The shared topology of the kind this test instance is parametrized with."""
    kind: str = request.param
    topology: Topology = request.getfixturevalue(f"redis_{kind}")
    return topology


@pytest.fixture
def redis_sandbox_factory() -> Iterator[TopologyFactory]:
    """A factory of fresh topologies for destructive tests, all stopped after the test."""
    factory = sandbox.TopologyFactory()
    try:
        yield factory
    finally:
        factory.stop_all()
