"""The manifests in docs/kubernetes.md parse and keep the rules the page states."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from channels_ha import RedisConfig, parse_url
from channels_ha._config import SentinelConfig
from channels_ha._constants import LIFESPAN_CLOSE_TIMEOUT_S
from channels_ha._probe import FAILOVER_ELECTION_S
from channels_ha._sources import parse_connection_config

DOCS = Path(__file__).resolve().parent.parent / "docs"
DOC = DOCS / "kubernetes.md"
CHART_DOWN_AFTER_MS = 60_000  # the Bitnami chart's sentinel.downAfterMilliseconds


def example(name: str, document: Path = DOC) -> Any:
    _, _, after = document.read_text().partition(f"<!-- example: {name} -->")
    match = re.search(r"```yaml\n(.*?)\n```", after, re.DOTALL)
    assert match, name
    return yaml.safe_load(match.group(1))


def redis_config(password: str = "generatedpassword") -> RedisConfig:
    """The Deployment's Redis configuration once Kubernetes expanded ``$(REDIS_PASSWORD)``."""
    container = example("deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env.keys() & {"REDIS_URL", "REDIS_CONNECTION_CONFIG"}, env.keys()
    if "REDIS_CONNECTION_CONFIG" in env:
        text = str(env["REDIS_CONNECTION_CONFIG"]).replace("$(REDIS_PASSWORD)", password)
        return parse_connection_config(text, source="REDIS_CONNECTION_CONFIG")
    return parse_url(str(env["REDIS_URL"]).replace("$(REDIS_PASSWORD)", password))


@pytest.mark.parametrize("password", ["generatedpassword", "ab+c/d==", "p@ss:w%rd?#&x"])
def test_any_password_reaches_both_hops(password: str) -> None:
    """Seen: the Deployment expanded the secret into a URL, at the data nodes' place and as
    ?sentinel_password=: a base64 password's '/' broke the URL, its '+' reached the sentinels
    as a space. Expanded as it is (Kubernetes cannot percent-encode), any password without
    '"' or '\\' must reach the data nodes and the sentinels unchanged."""
    config = redis_config(password)
    assert isinstance(config, SentinelConfig)
    assert config.password is not None
    assert config.sentinel_password is not None
    assert config.password.get_secret_value() == password
    assert config.sentinel_password.get_secret_value() == password


def configuration_md_config(password: str = "generatedpassword") -> RedisConfig:
    """configuration.md's Bitnami REDIS_URL once Kubernetes expanded ``$(REDIS_PASSWORD)``."""
    env = {
        e["name"]: e.get("value")
        for e in example("kubernetes-env", DOCS / "configuration.md")["env"]
    }
    return parse_url(str(env["REDIS_URL"]).replace("$(REDIS_PASSWORD)", password))


@pytest.mark.parametrize(
    ("document", "application"),
    [(DOC, redis_config), (DOCS / "configuration.md", configuration_md_config)],
    ids=["kubernetes.md", "configuration.md"],
)
def test_failover_is_shorter_than_failover_timeout(
    document: Path, application: Callable[[], RedisConfig]
) -> None:
    """The chart values make a failover shorter than the application's failover_timeout (seen:
    configuration.md's left the chart's 60 s down-after, past the default 30 s)."""
    sentinel = example("redis-values", document)["sentinel"]
    assert sentinel["enabled"]
    assert sentinel["masterSet"] == "mymaster"
    down_after_s = sentinel.get("downAfterMilliseconds", CHART_DOWN_AFTER_MS) / 1000
    assert down_after_s + FAILOVER_ELECTION_S < application().failover_timeout_s


def test_the_docs_state_the_election_time_the_check_uses() -> None:
    """Seen: the docs said a failover takes down-after plus "about 1 s", the docs test used
    1.0 and ``channels-ha check`` 5.0, so a failover_timeout the docs called enough (2 s past
    down-after) was warned about. Each page states the figure the check uses, once."""
    stated = f"election and the promotion (up to {FAILOVER_ELECTION_S:g} s)"
    for page in ("kubernetes.md", "failover.md"):
        text = " ".join((DOCS / page).read_text().split())
        assert stated in text, page
        assert not re.search(r"about (1 s|a second)|~1 s", text), page
    (row,) = [
        line for line in DOC.read_text().splitlines() if line.startswith("| `failover_timeout`")
    ]
    assert "at most the readiness probe's" in row  # as test_probes_outlast_a_failover checks


def test_deployment_configuration_is_valid() -> None:
    """The Deployment's REDIS_URL is a valid Sentinel URL with auth on both hops."""
    summary = redis_config().summary_dict()
    assert summary["mode"] == "sentinel"
    assert summary["data_nodes"]["auth"]
    assert summary["sentinels"]["auth"]


def test_probes_outlast_a_failover() -> None:
    """Readiness tolerates a failover; liveness never asks Redis (/livez)."""
    container = example("deployment")["spec"]["template"]["spec"]["containers"][0]
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    patience_s = readiness["periodSeconds"] * readiness["failureThreshold"]
    assert patience_s >= redis_config().failover_timeout_s
    assert readiness["httpGet"]["path"] == "/healthz"
    assert liveness["httpGet"]["path"] == "/livez"
    assert "--workers" in container["command"]


@pytest.mark.parametrize(
    ("document", "name"), [(DOC, "deployment"), (DOCS / "operations.md", "kubernetes")]
)
def test_the_grace_period_leaves_time_to_close_the_layer(document: Path, name: str) -> None:
    """Both manifests run uvicorn (daphne runs no lifespan shutdown, so nothing would close
    the layer) with a bounded graceful shutdown, and give it time for that and for
    close_layers_at_shutdown before the SIGKILL."""
    spec = example(name, document)["spec"]["template"]["spec"]
    (command,) = [container["command"] for container in spec["containers"]]
    assert command[0] == "uvicorn"
    assert "--lifespan" not in command  # "auto": the wrapper in asgi.py answers it
    graceful_s = float(command[command.index("--timeout-graceful-shutdown") + 1])
    assert spec["terminationGracePeriodSeconds"] > graceful_s + LIFESPAN_CLOSE_TIMEOUT_S
