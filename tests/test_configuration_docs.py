"""Every example in docs/configuration.md parses, and every documented message is real.

Examples are fenced blocks after an ``<!-- example: KIND -->`` comment; an ``error`` or
``check`` example is an input block followed by the exact output block.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from channels_ha import RedisChannelLayer, _sources
from channels_ha._cli import main
from channels_ha._options import IGNORED_KEYS
from channels_ha._sources import load_config, parse_connection_config, parse_url
from channels_ha.exceptions import ConfigurationError

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
KINDS = {
    "url",
    "connection_config",
    "error",
    "layer-error",
    "check",
    "log",
    "python",
    "kubernetes-env",
    "redis-values",  # checked by tests/test_kubernetes_docs.py with kubernetes.md's
}
_FENCE = re.compile(r"```(\w*)\n(.*?)\n```", re.DOTALL)
_MARKER = re.compile(r"<!-- example: ([\w-]+) -->")


def _examples(kind: str) -> list[list[tuple[str, str]]]:
    """The (language, body) of the first two fenced blocks after each marker of ``kind``."""
    parts = re.split(rf"<!-- example: {re.escape(kind)} -->", DOC.read_text())[1:]
    examples = [_FENCE.findall(part)[:2] for part in parts]
    assert examples, f"no '{kind}' example in {DOC.name}"
    return examples


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Examples run with neither variable set and an empty "logged once" memory."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("REDIS_CONNECTION_CONFIG", raising=False)
    monkeypatch.setattr(_sources, "_announced", set())


def test_every_marker_is_a_known_kind() -> None:
    """A misspelt marker would silently leave its example untested."""
    assert set(_MARKER.findall(DOC.read_text())) == KINDS


def test_url_examples_parse() -> None:
    """Every URL in a url example block parses."""
    urls = [line for (_, body), *_ in _examples("url") for line in body.splitlines()]
    assert len(urls) >= 10
    for url in urls:
        parse_url(url, source="docs")


def test_connection_config_examples_parse() -> None:
    """Every JSON example is valid JSON and a valid configuration."""
    for (language, body), *_ in _examples("connection_config"):
        assert language == "json"
        parse_connection_config(body, source="docs")


def test_error_examples_are_the_real_messages() -> None:
    """Each documented error is exactly what parsing its input raises."""
    for (language, given), (_, message) in _examples("error"):
        with pytest.raises(ConfigurationError) as caught:
            _parse_as_environment(language, given)
        assert str(caught.value) == message


def _parse_as_environment(language: str, given: str) -> None:
    if language == "json":
        parse_connection_config(given, source="REDIS_CONNECTION_CONFIG")
    else:
        parse_url(given, source="REDIS_URL")


def test_check_example_is_the_real_output(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The documented channels-ha check session is what the command prints."""
    for (_, given), (_, session) in _examples("check"):
        monkeypatch.setenv("REDIS_CONNECTION_CONFIG", given)
        command, _, output = session.partition("\n")
        assert command == "$ channels-ha check"
        assert main(["check"]) == 0
        assert capsys.readouterr().out == output + "\n"


def test_log_example_is_the_real_record(caplog: pytest.LogCaptureFixture) -> None:
    """The documented log line is what loading the issue's example beside REDIS_URL logs."""
    ((_, line),) = _examples("log")[0][:1]
    (_, example), *_ = _examples("check")[0]  # the example
    environ = {"REDIS_CONNECTION_CONFIG": example, "REDIS_URL": "redis://elsewhere"}
    with caplog.at_level(logging.INFO, logger="channels_ha.config"):
        load_config(environ=environ)
    assert [record.getMessage() for record in caplog.records] == [line]


def test_kubernetes_env_expands_to_the_documented_url() -> None:
    """The Deployment's REDIS_URL, with the password substituted, is the documented URL."""
    ((_, env),) = _examples("kubernetes-env")[0][:1]
    template = re.search(r'name: REDIS_URL\n\s+value: "(.*)"', env)
    assert template is not None
    expanded = template.group(1).replace("$(REDIS_PASSWORD)", "yourpassword")
    assert expanded in [body for (_, body), *_ in _examples("url")]
    assert '"master_name": "mymaster"' in json.dumps(parse_url(expanded).summary_dict())


def test_python_examples_run() -> None:
    """The settings.py examples run and build CHANNEL_LAYERS; a channels-ha layer built from
    the last setting of each takes its options (it connects to nothing until used)."""
    for (language, code), *_ in _examples("python"):
        assert language == "python"
        namespace: dict[str, Any] = {}
        exec(compile(code, str(DOC), "exec"), namespace)
        setting = namespace["CHANNEL_LAYERS"]["default"]
        if setting["BACKEND"] == "channels_ha.RedisChannelLayer":
            RedisChannelLayer(**setting["CONFIG"])


def test_the_layer_option_error_is_the_real_message() -> None:
    """The documented error of a bad layer option is exactly what building the layer raises."""
    ((_, message),) = _examples("layer-error")[0][:1]
    with pytest.raises(ConfigurationError) as caught:
        RedisChannelLayer(hosts=["redis://127.0.0.1:1"], replay_max_bytes=-1)
    assert str(caught.value) == message


def test_the_ignored_options_table_lists_what_is_ignored() -> None:
    """The table of ignored redis-py options is the one the parser uses."""
    section = DOC.read_text().split("### Options that are ignored")[1].split("\n#")[0]
    documented = set(re.findall(r"`([\w.]+)`", "".join(re.findall(r"^\| (.*?) \|", section, re.M))))
    ignored = {*IGNORED_KEYS, "sentinel_kwargs.socket_keepalive"}
    assert documented - {"Key"} == ignored
