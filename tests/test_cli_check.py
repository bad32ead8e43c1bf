"""``channels-ha check``: summary on success, one paragraph on failure, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from channels_ha import _sources
from channels_ha._cli import main

EXAMPLE = (
    '{"sentinels": [["sentinel1", 26379], ["sentinel2", 26379], ["sentinel3", 26379]], '
    '"master_name": "mymaster", "socket_timeout": 10, "db": 0, "password": "yourpassword"}'
)
CLI = Path(sys.executable).parent / "channels-ha"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with neither variable set and an empty "logged once" memory."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("REDIS_CONNECTION_CONFIG", raising=False)
    monkeypatch.setattr(_sources, "_announced", set())


def test_default_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    """With nothing set, check reports the localhost default as valid."""
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Redis configuration from the default redis://localhost:6379/0 is valid")
    assert "nodes: localhost:6379" in out


def test_environment_summary_is_redacted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The summary of REDIS_CONNECTION_CONFIG names both hops and hides the password."""
    monkeypatch.setenv("REDIS_CONNECTION_CONFIG", EXAMPLE)
    monkeypatch.setenv("REDIS_URL", "redis://ignored")
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert out == (
        "Redis configuration from REDIS_CONNECTION_CONFIG (REDIS_URL is also set and ignored) "
        "is valid:\n"
        "mode: sentinel\n"
        "nodes: sentinel1:26379, sentinel2:26379, sentinel3:26379\n"
        "master name: mymaster\n"
        "db: 0\n"
        "data nodes: TLS no; auth yes (default user, password set)\n"
        "sentinels: TLS no; auth no\n"
        "timeouts: socket 10 s, connect 2 s (default), failover 30 s\n"
    )


def test_url_override(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """--url replaces the environment."""
    monkeypatch.setenv("REDIS_CONNECTION_CONFIG", "{not json")
    assert main(["check", "--url", "rediss://:pw@h:6380/1"]) == 0
    out = capsys.readouterr().out
    assert "from argument url is valid" in out
    assert "TLS yes (verify required, hostname checked)" in out


def test_config_override_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    """--config with --json prints summary_dict() as JSON."""
    assert main(["check", "--json", "--config", EXAMPLE]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["mode"] == "sentinel"
    assert facts["master_name"] == "mymaster"
    assert facts["data_nodes"]["password_set"] is True
    assert "yourpassword" not in json.dumps(facts)


def test_invalid_configuration_exits_1_with_one_paragraph(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid variable gives exit 1 and the one-line error on stderr, nothing on stdout."""
    monkeypatch.setenv("REDIS_URL", "redis+sentinel://:hunter2@s1:26379/")
    assert main(["check"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "channels-ha check: Invalid Redis configuration in REDIS_URL "
        "(redis+sentinel://:***@s1:26379/): 'master_name': expected the master name as the URL "
        "path, e.g. redis+sentinel://host:26379/mymaster.\n"
    )


def test_malformed_json_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """Malformed JSON is reported with its position, without echoing the text."""
    assert main(["check", "--config", '{"password": "hunter2",}']) == 1
    err = capsys.readouterr().err
    assert "not valid JSON" in err
    assert "hunter2" not in err


def test_console_script_end_to_end() -> None:
    """The installed channels-ha script validates and fails cleanly, with no traceback."""
    environment = {"PATH": "/usr/bin:/bin", "REDIS_URL": "redis://:hunter2@h:0"}
    failed = subprocess.run(
        [str(CLI), "check"], capture_output=True, text=True, env=environment, check=False
    )
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert failed.stderr == (
        "channels-ha check: Invalid Redis configuration in REDIS_URL (redis://:***@h:0): "
        "'address.port': expected a port number from 1 to 65535.\n"
    )
    environment["REDIS_URL"] = "redis+cluster://a:7000,b:7001"
    passed = subprocess.run(
        [str(CLI), "check"], capture_output=True, text=True, env=environment, check=False
    )
    assert passed.returncode == 0
    assert "mode: cluster\nnodes: a:7000, b:7001\n" in passed.stdout
