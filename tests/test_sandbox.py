"""The sandbox's topologies start real Redis processes, describe themselves, and clean up."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import channels_ha.sandbox
from channels_ha.exceptions import SandboxError
from channels_ha.sandbox import (
    TOPOLOGY_KINDS,
    ClusterTopology,
    RedisNode,
    SentinelTopology,
    StandaloneTopology,
    Topology,
    TopologyFactory,
    pytest_plugin,
    start_topology,
)
from channels_ha.sandbox._ports import allocate_port, release_port
from channels_ha.sandbox._process import Directive


def _gone(pid: int) -> bool:
    """Whether the process has ended (a zombie awaiting its reaper counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in {"Z", "X"}


def _answer(node: RedisNode, *command: Any) -> Any:
    client = node.client(decode_responses=True)
    try:
        return client.execute_command(*command)
    finally:
        client.close()


def test_every_public_name_imports() -> None:
    """Every name in ``channels_ha.sandbox.__all__`` resolves (they are imported lazily)."""
    for name in channels_ha.sandbox.__all__:
        assert getattr(channels_ha.sandbox, name) is not None


def test_plugin_kinds_match_sandbox_kinds() -> None:
    """The plugin's import-free list of kinds is the sandbox's list."""
    assert pytest_plugin.KINDS == TOPOLOGY_KINDS


def test_each_topology_answers(redis_topology: Topology) -> None:
    """Every node of every topology answers PING on 127.0.0.1 with the topology's TLS and auth."""
    assert redis_topology.nodes
    for node in redis_topology.nodes:
        assert node.host == "127.0.0.1"
        assert node.port != 6379
        assert _answer(node, "PING") is True


def test_each_topology_has_the_documented_roles(redis_topology: Topology) -> None:
    """Data nodes report their role: one master (plus replicas), or a cluster in state ok."""
    if isinstance(redis_topology, ClusterTopology):
        for node in redis_topology.nodes:
            assert "cluster_state:ok" in _answer(node, "CLUSTER", "INFO")
        assert len(redis_topology.masters()) == 3
        return
    data = getattr(redis_topology, "data_nodes", redis_topology.nodes)
    roles = sorted(str(_answer(node, "ROLE")[0]) for node in data)
    assert roles == ["master"] + ["slave"] * (len(data) - 1)


def test_env_holds_url_and_json_config(redis_topology: Topology) -> None:
    """``env()`` holds ``REDIS_URL`` and the JSON of ``connection_config``."""
    env = redis_topology.env()
    assert env["REDIS_URL"] == redis_topology.url
    assert json.loads(env["REDIS_CONNECTION_CONFIG"]) == redis_topology.connection_config


def test_standalone_url_and_config(redis_standalone: StandaloneTopology) -> None:
    """A standalone topology is ``redis://host:port`` and ``{"host", "port"}``."""
    port = redis_standalone.node.port
    assert redis_standalone.url == f"redis://127.0.0.1:{port}"
    assert redis_standalone.connection_config == {"host": "127.0.0.1", "port": port}


def test_tls_url_and_config(redis_tls: StandaloneTopology) -> None:
    """A TLS topology is ``rediss://`` with its CA in ``ssl_ca_certs``, and refuses plain TCP."""
    assert redis_tls.tls is not None
    ca = str(redis_tls.tls.ca_cert)
    port = redis_tls.node.port
    assert redis_tls.url == f"rediss://127.0.0.1:{port}?ssl_ca_certs={ca}"
    assert redis_tls.connection_config == {
        "host": "127.0.0.1",
        "port": port,
        "ssl": True,
        "ssl_ca_certs": ca,
    }
    plain = redis.Redis(port=port, socket_timeout=1, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    plain.close()


def test_tls_client_certificate_is_accepted(redis_tls: StandaloneTopology) -> None:
    """The generated client certificate authenticates a mutual-TLS client."""
    assert redis_tls.tls is not None
    files = redis_tls.tls
    mutual = redis_tls.node.client(
        ssl_certfile=str(files.client_cert), ssl_keyfile=str(files.client_key)
    )
    assert mutual.ping() is True
    mutual.close()


def test_sentinel_url_and_config(redis_sentinel: SentinelTopology) -> None:
    """A Sentinel topology lists its three sentinels and the master name ``mymaster``."""
    hosts = ",".join(f"127.0.0.1:{node.port}" for node in redis_sentinel.sentinels)
    assert redis_sentinel.url == f"redis+sentinel://{hosts}/mymaster"
    assert redis_sentinel.connection_config == {
        "sentinels": [["127.0.0.1", node.port] for node in redis_sentinel.sentinels],
        "master_name": "mymaster",
    }


def test_sentinels_agree_on_the_master(redis_sentinel: SentinelTopology) -> None:
    """Each sentinel names the same master, sees two replicas and two other sentinels."""
    master = redis_sentinel.current_master()
    for sentinel in redis_sentinel.sentinels:
        view = _answer(sentinel, "SENTINEL", "MASTER", "mymaster")
        assert (view["port"], view["num-slaves"], view["num-other-sentinels"]) == (
            str(master.port),
            "2",
            "2",
        )


def test_cluster_url_and_config(redis_cluster: ClusterTopology) -> None:
    """A cluster topology lists every node as a startup node."""
    hosts = ",".join(f"127.0.0.1:{node.port}" for node in redis_cluster.nodes)
    assert redis_cluster.url == f"redis+cluster://{hosts}"
    assert redis_cluster.connection_config == {
        "startup_nodes": [["127.0.0.1", node.port] for node in redis_cluster.nodes],
    }


def test_cluster_slots_are_covered_once(redis_cluster: ClusterTopology) -> None:
    """The slot map covers all 16384 slots across three masters."""
    slots = redis_cluster.slot_map()
    assert sum(last - first + 1 for first, last, _ in slots) == 16384
    assert len(redis_cluster.masters()) == 3


def test_password_appears_encoded_in_url_and_plain_in_config(
    redis_sandbox_factory: TopologyFactory,
) -> None:
    """A password with URL-special characters is percent-encoded in the URL and enforced."""
    topology = redis_sandbox_factory("standalone", password="p@ss/w?rd")
    port = topology.nodes[0].port
    assert topology.url == f"redis://:p%40ss%2Fw%3Frd@127.0.0.1:{port}"
    assert topology.connection_config["password"] == "p@ss/w?rd"
    anonymous = redis.Redis(port=port, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    assert _answer(topology.nodes[0], "PING") is True


def test_stop_ends_every_process_and_removes_files() -> None:
    """``stop()`` ends every process, even a paused one, removes the directory; twice is fine."""
    topology = start_topology("standalone")
    node = topology.nodes[0]
    pid = node.pid
    assert pid is not None
    node.pause()
    topology.stop()
    topology.stop()
    assert _gone(pid)
    assert not topology.directory.exists()


def test_context_manager_stops() -> None:
    """Leaving the ``with`` block stops the topology."""
    with StandaloneTopology() as topology:
        topology.start()
        pid = topology.nodes[0].pid
    assert pid is not None
    assert _gone(pid)


def test_factory_stops_what_it_started() -> None:
    """``TopologyFactory.stop_all`` stops each topology it started."""
    factory = TopologyFactory()
    pid = factory("standalone").nodes[0].pid
    factory.stop_all()
    assert pid is not None
    assert _gone(pid)


def test_unknown_kind_is_refused() -> None:
    """An unknown topology name raises ``SandboxError`` listing the known ones."""
    with pytest.raises(SandboxError, match="standalone, tls, sentinel, cluster"):
        start_topology("galaxy")


def test_missing_redis_server_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``redis-server`` on PATH, starting raises an error naming the apt package."""
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SandboxError, match="apt-get install redis-server"):
        start_topology("standalone")


def test_missing_trustme_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``trustme`` a TLS topology names the ``channels-ha[sandbox]`` extra."""
    monkeypatch.setitem(sys.modules, "trustme", None)
    with pytest.raises(SandboxError, match=r"channels-ha\[sandbox\]"):
        start_topology("tls")


def test_a_node_that_fails_to_start_shows_its_log(tmp_path: Path) -> None:
    """A node whose config Redis rejects raises an error quoting the end of its log."""
    config: list[Directive] = [("port", "0"), ("no-such-directive", "yes")]
    node = RedisNode("broken", 1, tmp_path, config)
    with pytest.raises(SandboxError, match="no-such-directive"):
        node.start(timeout_s=5)


@pytest.mark.serial  # times itself within a second or so
def test_a_node_that_never_answers_shows_its_log(tmp_path: Path) -> None:
    """A node that runs but refuses our PING times out with its log tail in the error."""
    port = allocate_port()
    config: list[Directive] = [("port", str(port)), ("bind", "127.0.0.1"), ("requirepass", "x")]
    node = RedisNode("locked", port, tmp_path, config)
    try:
        with pytest.raises(SandboxError, match=r"(?s)timed out.*last lines of .*Ready to accept"):
            node.start(timeout_s=0.5)
    finally:
        node.stop()
        release_port(port)


def test_kill_pause_resume(redis_sandbox_factory: TopologyFactory) -> None:
    """``kill()`` ends the process; ``pause()`` makes it silent until ``resume()``."""
    node = redis_sandbox_factory("standalone").nodes[0]
    node.pause()
    silent = node.client(socket_timeout=0.1, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.TimeoutError):
        silent.ping()
    silent.close()
    node.resume()
    assert _answer(node, "PING") is True
    pid = node.pid
    node.kill()
    assert pid is not None
    assert _gone(pid)
    assert not node.running


def test_restart_empty_comes_back_empty_on_the_same_port(
    redis_sandbox_factory: TopologyFactory,
) -> None:
    """``restart_empty()`` replaces the process on the same port with an empty dataset."""
    node = redis_sandbox_factory("standalone").nodes[0]
    _answer(node, "SET", "key", "value")
    old_pid, port = node.pid, node.port
    node.restart_empty()
    assert (node.port, _answer(node, "DBSIZE")) == (port, 0)
    assert node.pid != old_pid
    assert old_pid is not None
    assert _gone(old_pid)


async def test_arestart_empty_does_not_block_the_loop(
    redis_sandbox_factory: TopologyFactory,
) -> None:
    """The asyncio twin restarts the node and leaves a process that outlives the call."""
    node = redis_sandbox_factory("standalone").nodes[0]
    await node.arestart_empty()
    client = node.async_client()
    assert await client.ping() is True
    await client.aclose()


def test_wait_until_healthy_restarts_killed_nodes(
    redis_sandbox_factory: TopologyFactory,
) -> None:
    """``wait_until_healthy`` restarts a killed node and resumes a paused one."""
    topology = redis_sandbox_factory("standalone")
    topology.nodes[0].kill()
    topology.wait_until_healthy(timeout_s=10)
    assert _answer(topology.nodes[0], "PING") is True


def test_sigkill_of_the_owner_kills_the_nodes(redis_sandbox_factory: TopologyFactory) -> None:
    """An owner killed with SIGKILL takes its nodes along; the next sandbox sweeps its files."""
    script = (
        "import sys, threading\n"
        "from channels_ha.sandbox import start_topology\n"
        "t = start_topology('standalone')\n"
        # A node restarted from a short-lived thread must survive that thread's end.
        "th = threading.Thread(target=t.nodes[0].restart_empty); th.start(); th.join()\n"
        "print(t.nodes[0].pid, t.directory, flush=True)\n"
        "sys.stdin.read()\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    assert owner.stdin is not None
    pid_text, directory = owner.stdout.readline().split()
    pid = int(pid_text)
    assert not _gone(pid)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    _wait_gone(pid)
    owner.stdin.close()
    owner.stdout.close()
    assert Path(directory).exists()
    redis_sandbox_factory("standalone")
    assert not Path(directory).exists()


def _wait_gone(pid: int, timeout_s: float = 5.0) -> None:
    """Poll for the end of a process that is not our child, under a deadline."""
    deadline = time.monotonic() + timeout_s
    while not _gone(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive"
        time.sleep(0.01)
