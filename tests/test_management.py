"""``manage.py channels_ha status``: the live probe's report for a channel layer, on every
topology, as text or JSON, failing when Redis is not ok."""

from __future__ import annotations

import json
import math
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from channels_ha import channel_layers, parse_url
from channels_ha.sandbox import StandaloneTopology, Topology, TopologyFactory
from tests import django_settings
from tests.conftest import refusing_writes

MODES = {"standalone": "single", "tls": "single", "sentinel": "sentinel", "cluster": "cluster"}


@pytest.fixture(autouse=True, scope="module")
def _django() -> None:
    """Django is set up for this module."""
    django_settings.setup()


def _status(*args: str, layers: object) -> str:
    out = StringIO()
    with override_settings(CHANNEL_LAYERS=layers):
        call_command("channels_ha", "status", *args, stdout=out)
    return out.getvalue()


def test_status_text(redis_topology: Topology) -> None:
    """The text report names the mode, the master and ends with status OK."""
    config = parse_url(redis_topology.url)
    out = _status(layers=channel_layers(config))
    mode = MODES[redis_topology.kind]
    assert out.startswith(f"mode: {mode}")
    assert out.endswith("status: OK\n")
    assert ("master " in out) if mode != "cluster" else ("cluster_state: ok" in out)


def test_status_json(redis_topology: Topology) -> None:
    """--json prints {"ok", "alias", "shards"}, each shard the probe report's dict."""
    report = json.loads(_status("--json", layers=channel_layers(parse_url(redis_topology.url))))
    assert (report["ok"], report["alias"]) == (True, "default")
    (shard,) = report["shards"]
    assert (shard["ok"], shard["mode"]) == (True, MODES[redis_topology.kind])


def test_status_of_another_alias_and_of_the_environment(
    redis_standalone: StandaloneTopology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--alias picks a layer; an alias that is no Redis layer falls back to REDIS_URL."""
    monkeypatch.setenv("REDIS_URL", redis_standalone.url)
    layers = {
        **channel_layers(parse_url(redis_standalone.url), alias="chat"),
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
    }
    assert json.loads(_status("--json", "--alias", "chat", layers=layers))["ok"] is True
    assert json.loads(_status("--json", layers=layers))["ok"] is True


def test_status_fails_when_redis_is_down(redis_sandbox_factory: TopologyFactory) -> None:
    """With the master killed the command prints the report and exits non-zero."""
    topology = redis_sandbox_factory("standalone")
    assert isinstance(topology, StandaloneTopology)
    topology.node.kill()
    out = StringIO()
    layers = channel_layers(parse_url(topology.url))
    with override_settings(CHANNEL_LAYERS=layers), pytest.raises(CommandError) as caught:
        call_command("channels_ha", "status", "--json", stdout=out)
    assert caught.value.returncode == 1
    assert json.loads(out.getvalue())["ok"] is False


def test_status_of_an_invalid_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """An invalid configuration is a one-paragraph CommandError, password redacted."""
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@cache:notaport")
    in_memory = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    with override_settings(CHANNEL_LAYERS=in_memory), pytest.raises(CommandError) as caught:
        call_command("channels_ha", "status")
    assert "Invalid Redis configuration in REDIS_URL" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_passwords_never_printed(redis_sandbox_factory: TopologyFactory) -> None:
    """With passwords on data nodes and sentinels, neither appears in text or JSON output."""
    topology = redis_sandbox_factory(
        "sentinel", password="data-secret", sentinel_password="sentinel-secret"
    )
    layers = channel_layers(parse_url(topology.url))
    output = _status(layers=layers) + _status("--json", layers=layers)
    assert "status: OK" in output
    assert "data-secret" not in output
    assert "sentinel-secret" not in output


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "-0"])
def test_a_timeout_that_bounds_nothing_is_refused(
    timeout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen: --timeout 0, -1 or nan were taken, and every node was then "unreachable". Such a
    value is a CommandError naming --timeout, before anything is asked."""
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@127.0.0.1:1/0")
    in_memory = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    with override_settings(CHANNEL_LAYERS=in_memory), pytest.raises(CommandError) as caught:
        call_command("channels_ha", "status", "--timeout", timeout)
    assert "--timeout" in str(caught.value)
    assert "a finite number of seconds > 0" in str(caught.value)


@pytest.mark.parametrize("timeout", [0, -1.0, math.nan, math.inf, "0", None, True], ids=repr)
def test_a_timeout_that_bounds_nothing_is_refused_from_call_command(
    timeout: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """call_command("channels_ha", "status", timeout=...) skips argparse and its check: 0 or
    nan was taken and every node reported unreachable. The command checks it again."""
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@127.0.0.1:1/0")
    in_memory = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    with override_settings(CHANNEL_LAYERS=in_memory), pytest.raises(CommandError) as caught:
        call_command("channels_ha", "status", timeout=timeout, stdout=StringIO())
    assert "--timeout" in str(caught.value)
    assert "a finite number of seconds > 0" in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("timeout", [0.2, 1, "0.2"], ids=repr)
def test_a_timeout_from_call_command_is_taken(
    timeout: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A valid one goes through: the probe runs, and finds nothing listening."""
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    in_memory = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    out = StringIO()
    with override_settings(CHANNEL_LAYERS=in_memory), pytest.raises(CommandError) as caught:
        call_command("channels_ha", "status", "--json", timeout=timeout, stdout=out)
    assert "is not ok" in str(caught.value)
    assert json.loads(out.getvalue())["ok"] is False


def test_status_fails_while_the_master_refuses_writes(
    redis_standalone: StandaloneTopology,
) -> None:
    """As the health check: a master out of memory answers ROLE and PING but refuses every
    send; the report names the refusal as a problem and the command exits 1."""
    out = StringIO()
    layers = channel_layers(parse_url(redis_standalone.url))
    with (
        refusing_writes(redis_standalone.nodes, "oom"),
        override_settings(CHANNEL_LAYERS=layers),
        pytest.raises(CommandError) as caught,
    ):
        call_command("channels_ha", "status", stdout=out)
    assert caught.value.returncode == 1
    assert "refuses writes (OOM command not allowed when used memory" in out.getvalue()
    assert out.getvalue().endswith("status: FAILED\n")


def test_status_of_an_unknown_alias(
    redis_standalone: StandaloneTopology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo in --alias is an error naming the aliases there are, not a report on the
    environment's Redis (which here would say OK)."""
    monkeypatch.setenv("REDIS_URL", redis_standalone.url)
    layers = channel_layers(parse_url(redis_standalone.url), alias="chat")
    with override_settings(CHANNEL_LAYERS=layers), pytest.raises(CommandError) as caught:
        call_command("channels_ha", "status", "--alias", "caht", stdout=StringIO())
    assert str(caught.value) == "CHANNEL_LAYERS has no alias 'caht': its aliases are 'chat'."
