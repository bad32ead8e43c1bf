"""Every example in docs/operations.md runs, and its tables match the code.

Examples are fenced blocks (or a table) after an ``<!-- example: KIND -->`` comment.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import types
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.conf import global_settings
from django.core.asgi import get_asgi_application
from django.core.management import call_command
from django.test import AsyncClient, override_settings

import channels_ha
from channels_ha import channel_layers, parse_url
from channels_ha._config import DEFAULT_FAILOVER_TIMEOUT_S
from channels_ha._health import HEALTH_TIMEOUT_S
from channels_ha.checks import CHECK_IDS, check_configuration, check_deployment
from channels_ha.metrics import METRICS
from channels_ha.sandbox import SentinelTopology, StandaloneTopology
from tests import django_settings
from tests.startproject import manage_check, settings_of, startproject

DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
PACKAGE = Path(channels_ha.__file__).resolve().parent
KINDS = {
    "settings",
    "urls",
    "asgi",
    "check",
    "status",
    "health",
    "kubernetes",
    "metrics",
    "alerts",
    "events",
}
_FENCE = re.compile(r"```(\w*)\n(.*?)\n```", re.DOTALL)
_MARKER = re.compile(r"<!-- example: ([\w-]+) -->")


@pytest.fixture(autouse=True)
def _django(monkeypatch: pytest.MonkeyPatch) -> None:
    """Django is set up; the Redis variables are unset unless a test sets them."""
    django_settings.setup()
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("REDIS_CONNECTION_CONFIG", raising=False)


def _part(kind: str) -> str:
    parts = DOC.read_text().split(f"<!-- example: {kind} -->")
    assert len(parts) == 2, f"expected one '{kind}' example in {DOC.name}"
    return parts[1]


def _blocks(kind: str) -> list[tuple[str, str]]:
    """The (language, body) of the fenced blocks right after the marker (two at most)."""
    return _FENCE.findall(_part(kind))[:2]


def _table(kind: str) -> list[list[str]]:
    """The rows of the table right after the marker, header and rule left out."""
    lines = _part(kind).strip().splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    return rows


def _run(kind: str, **namespace: Any) -> dict[str, Any]:
    ((language, code), *_) = _blocks(kind)
    assert language == "python"
    exec(compile(code, f"{DOC.name}:{kind}", "exec"), namespace)
    return namespace


def test_every_marker_is_a_known_kind() -> None:
    """A misspelt marker would silently leave its example untested."""
    assert set(_MARKER.findall(DOC.read_text())) == KINDS


# -- the Python files ------------------------------------------------------------------------

SECURE = "redis+sentinel://:pw@s1,s2,s3/mymaster?sentinel_password=spw"


def test_settings_example_passes_the_deploy_checks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The settings, added to a startproject settings.py, pass ``manage.py check`` and build
    both settings from REDIS_URL, which pass check --deploy."""
    monkeypatch.setenv("REDIS_URL", SECURE)
    ((_, code), *_) = _blocks("settings")
    project = startproject(tmp_path, code)
    checked = manage_check(project, {"REDIS_URL": SECURE})
    assert checked.returncode == 0, checked.stderr
    settings = settings_of(project)
    assert settings["CHANNEL_LAYERS"]["default"]["CONFIG"]["config"] == parse_url(SECURE)
    assert settings["CACHES"]["default"]["OPTIONS"]["config"] == parse_url(SECURE)
    assert "channels_ha" in settings["INSTALLED_APPS"]
    overrides = {key: settings[key] for key in ("CHANNEL_LAYERS", "CACHES", "CHANNELS_HA_METRICS")}
    with override_settings(**overrides):
        assert [*check_configuration(), *check_deployment()] == []


async def test_urls_example_serves_the_probes(redis_standalone: StandaloneTopology) -> None:
    """The urls.py answers /healthz, /livez and /metrics."""
    urls = types.ModuleType("urls")
    urls.__dict__.update(_run("urls"))
    layers = channel_layers(parse_url(redis_standalone.url))
    with override_settings(ROOT_URLCONF=urls, CHANNEL_LAYERS=layers):
        client = AsyncClient()
        for path in ("/healthz", "/livez", "/metrics"):
            assert (await client.get(path)).status_code == 200, path


_WITHOUT_PROMETHEUS = """
import sys
sys.modules["prometheus_client"] = None  # as if not installed
import django
from django.conf import settings
settings.configure(
    INSTALLED_APPS=["channels_ha"], ROOT_URLCONF="urls", CHANNELS_HA_METRICS=True,
    ALLOWED_HOSTS=["testserver"], SECRET_KEY="x",
)
django.setup()
from django.core.checks import run_checks
from django.test import Client
print(sorted(message.id for message in run_checks()))
response = Client().get("/metrics")
print(response.status_code, response.content.decode())
"""


def test_urls_example_works_without_prometheus_client(tmp_path: Path) -> None:
    """Without prometheus_client the app starts (E004), and so must the urls.py: seen, its
    ``from channels_ha.metrics import metrics_view`` raised ModuleNotFoundError. /metrics then
    answers 503 naming the missing extra."""
    ((_, code), *_) = _blocks("urls")
    (tmp_path / "urls.py").write_text(code)
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PROMETHEUS],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{PACKAGE.parent}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    checks, answer = done.stdout.splitlines()[:2]
    assert "channels_ha.E004" in checks
    assert answer.startswith("503 Metrics need prometheus_client")
    assert 'pip install "channels-ha[metrics]"' in answer


def _asgi_application(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The asgi.py example, with a stand-in for the project's websocket routing."""
    routing = types.ModuleType("myproject.routing")
    routing.websocket_urlpatterns = []  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "myproject", types.ModuleType("myproject"))
    monkeypatch.setitem(sys.modules, "myproject.routing", routing)
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "tests.django_settings")
    return _run("asgi")["application"]


async def _get(application: Any, path: str, host: bytes | None = None) -> int:
    sent: list[dict[str, Any]] = []
    requested = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if requested.is_set():  # Django then listens for a disconnect: there is none
            await asyncio.Event().wait()
        requested.set()
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [] if host is None else [(b"host", host)]
    scope = {"type": "http", "path": path, "method": "GET", "headers": headers, "query_string": b""}
    await application(scope, receive, send)
    status: int = sent[0]["status"]
    return status


async def test_kubernetes_probes_hit_the_asgi_example(
    redis_standalone: StandaloneTopology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest's probes are the paths the asgi.py answers, with sound timings."""
    ((language, manifest), *_) = _blocks("kubernetes")
    assert language == "yaml"
    (container,) = yaml.safe_load(manifest)["spec"]["template"]["spec"]["containers"]
    ports = {port["name"] for port in container["ports"]}
    ready, live = container["readinessProbe"], container["livenessProbe"]
    assert {ready["httpGet"]["port"], live["httpGet"]["port"]} <= ports
    assert ready["timeoutSeconds"] > HEALTH_TIMEOUT_S + 0.5
    assert ready["periodSeconds"] * ready["failureThreshold"] >= DEFAULT_FAILOVER_TIMEOUT_S
    application = _asgi_application(monkeypatch)
    with override_settings(CHANNEL_LAYERS=channel_layers(parse_url(redis_standalone.url))):
        for probe in (ready, live):
            assert await _get(application, probe["httpGet"]["path"]) == 200


async def test_a_probe_by_pod_ip_is_refused_by_django_but_not_by_the_asgi_example(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the page says of the Host header: a kubelet asks for http://<pod IP>:<port>/...,
    so Host is the pod's IP. Through Django, CommonMiddleware (in every startproject) answers
    400 (DisallowedHost) for a Host not in ALLOWED_HOSTS before the urls.py view runs; the
    asgi.py example answers before Django."""
    pod = b"10.1.2.3:8000"
    with override_settings(MIDDLEWARE=["django.middleware.common.CommonMiddleware"]):
        application = _asgi_application(monkeypatch)
        django_app = get_asgi_application()
        assert await _get(django_app, "/livez", host=b"localhost") == 200  # in ALLOWED_HOSTS
        assert await _get(django_app, "/livez", host=pod) == 400
        assert await _get(application, "/livez", host=pod) == 200
    said = _part("health").partition("<!-- example: kubernetes -->")[0]
    assert "ALLOWED_HOSTS" in said
    assert "HealthCheckMiddleware" in said


# -- outputs ---------------------------------------------------------------------------------


def test_check_example_is_the_real_output() -> None:
    """The documented check --deploy session is what the command prints for those settings."""
    (_, code), (_, session) = _blocks("check")
    namespace: dict[str, Any] = {}
    exec(compile(code, f"{DOC.name}:check", "exec"), namespace)
    command, _, expected = session.partition("\n")
    assert command == "$ python manage.py check --deploy --tag channels_ha"
    out = StringIO()
    layers, default_caches = namespace["CHANNEL_LAYERS"], global_settings.CACHES
    with override_settings(CHANNEL_LAYERS=layers, CACHES=default_caches):
        call_command("check", "--deploy", "--tag", "channels_ha", stdout=out, stderr=out)
    assert out.getvalue() == expected + "\n"


def _shape(text: str) -> str:
    """The text with every number replaced, so addresses, versions and timings compare."""
    return re.sub(r"\d+(\.\d+)*", "N", text)


def test_status_example_is_the_real_output(redis_sentinel: SentinelTopology) -> None:
    """The documented status output is what the command prints, up to the numbers."""
    ((_, session), *_) = _blocks("status")
    command, _, expected = session.partition("\n")
    assert command == "$ python manage.py channels_ha status"
    out = StringIO()
    with override_settings(CHANNEL_LAYERS=channel_layers(parse_url(redis_sentinel.url))):
        call_command("channels_ha", "status", stdout=out)
    assert _shape(out.getvalue()) == _shape(expected + "\n")


async def test_health_example_has_the_real_shape(redis_sentinel: SentinelTopology) -> None:
    """The documented health body has exactly the keys the view returns."""
    ((language, body), *_) = _blocks("health")
    assert language == "json"
    documented = json.loads(body)
    with override_settings(CHANNEL_LAYERS=channel_layers(parse_url(redis_sentinel.url))):
        real = json.loads((await AsyncClient().get("/healthz")).content)
    assert real.keys() == documented.keys()
    assert real["shards"][0].keys() == documented["shards"][0].keys()


# -- tables ----------------------------------------------------------------------------------


def test_every_check_id_is_documented() -> None:
    """Each check id has its own section, and every section is a real id."""
    documented = re.findall(r"^#### `(channels_ha\.[EW]\d{3})`$", DOC.read_text(), re.MULTILINE)
    assert documented == list(CHECK_IDS)


def test_metrics_table_is_the_collector() -> None:
    """The metrics table lists every exposed metric, and nothing else."""
    rows = _table("metrics")
    assert [row[0] for row in rows] == list(METRICS)


def test_alert_rules_use_real_metrics() -> None:
    """The alert examples parse and name only metrics the collector exposes."""
    ((language, rules), *_) = _blocks("alerts")
    assert language == "yaml"
    exprs = [rule["expr"] for group in yaml.safe_load(rules)["groups"] for rule in group["rules"]]
    names = {name for expr in exprs for name in re.findall(r"channels_ha_\w+", expr)}
    assert names
    assert names <= set(METRICS)


def _logged_events() -> set[tuple[str, str, str]]:
    """(event, logger, level) of every log call with an ``event`` field in the package."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        logger = re.search(r'logging\.getLogger\("([\w.]+)"\)', text)
        for match in re.finditer(r'"event": "(\w+)"', text):
            call = list(re.finditer(r"logger\.(\w+)\(", text[: match.start()]))[-1]
            assert logger is not None, path
            found.add((match.group(1), logger.group(1), call.group(1).upper()))
    return found


def test_every_log_event_is_documented() -> None:
    """The events table has every event the package logs, with its logger and level."""
    documented = {(row[0], row[1], row[2]) for row in _table("events")}
    assert documented == _logged_events()
