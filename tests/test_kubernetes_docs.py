"""The manifests in docs/kubernetes.md parse and keep the rules the page states."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from channels_ha import parse_url

DOC = Path(__file__).resolve().parent.parent / "docs" / "kubernetes.md"
ELECTION_S = 1.0  # the page's "about a second"


def example(name: str) -> Any:
    _, _, after = DOC.read_text().partition(f"<!-- example: {name} -->")
    match = re.search(r"```yaml\n(.*?)\n```", after, re.DOTALL)
    assert match, name
    return yaml.safe_load(match.group(1))


def redis_url() -> str:
    container = example("deployment")["spec"]["template"]["spec"]["containers"][0]
    (value,) = [e["value"] for e in container["env"] if e["name"] == "REDIS_URL"]
    return str(value).replace("$(REDIS_PASSWORD)", "generatedpassword")


def test_failover_is_shorter_than_failover_timeout() -> None:
    """The chart values make a failover shorter than the application's failover_timeout."""
    sentinel = example("redis-values")["sentinel"]
    assert sentinel["enabled"]
    assert sentinel["masterSet"] == "mymaster"
    config = parse_url(redis_url())
    assert sentinel["downAfterMilliseconds"] / 1000 + ELECTION_S < config.failover_timeout_s


def test_deployment_configuration_is_valid() -> None:
    """The Deployment's REDIS_URL is a valid Sentinel URL with auth on both hops."""
    summary = parse_url(redis_url()).summary_dict()
    assert summary["mode"] == "sentinel"
    assert summary["data_nodes"]["auth"]
    assert summary["sentinels"]["auth"]


def test_probes_outlast_a_failover() -> None:
    """Readiness tolerates a failover; liveness never asks Redis (/livez)."""
    container = example("deployment")["spec"]["template"]["spec"]["containers"][0]
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    patience_s = readiness["periodSeconds"] * readiness["failureThreshold"]
    assert patience_s >= parse_url(redis_url()).failover_timeout_s
    assert readiness["httpGet"]["path"] == "/healthz"
    assert liveness["httpGet"]["path"] == "/livez"
    assert "--workers" in container["command"]
