"""REDIS_CONNECTION_CONFIG and code values: every key, precedence, logging, every bad input."""

from __future__ import annotations

import json
import logging
import re
import ssl
import traceback
from typing import Any

import pytest

from channels_ha import _options, _sources
from channels_ha._config import (
    ClusterConfig,
    NodeAddress,
    SentinelConfig,
    SingleNodeConfig,
    TLSConfig,
)
from channels_ha._sources import (
    load_config,
    parse_connection_config,
    parse_hosts_entry,
    select_source,
)
from channels_ha._url import parse_url
from channels_ha.exceptions import ConfigurationError

EXAMPLE = (
    '{"sentinels": [["sentinel1", 26379], ["sentinel2", 26379], ["sentinel3", 26379]], '
    '"master_name": "mymaster", "socket_timeout": 10, "db": 0, "password": "yourpassword"}'
)
SECRET = "hunter2"
SENTINELS = {"sentinels": ["s1:26379"], "master_name": "m"}


@pytest.fixture(autouse=True)
def _fresh_announcements(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the "logged once" memory empty."""
    monkeypatch.setattr(_sources, "_announced", set())


def _error(value: str | dict[str, Any]) -> str:
    with pytest.raises(ConfigurationError) as caught:
        parse_connection_config(value, source="REDIS_CONNECTION_CONFIG")
    message = str(caught.value)
    assert message.startswith("Invalid Redis configuration in REDIS_CONNECTION_CONFIG")
    assert "\n" not in message
    assert SECRET not in message
    return message


def test_the_documented_example() -> None:
    """The issue's exact REDIS_CONNECTION_CONFIG example parses to a Sentinel config."""
    config = parse_connection_config(EXAMPLE)
    assert config == SentinelConfig(
        sentinels=(("sentinel1", 26379), ("sentinel2", 26379), ("sentinel3", 26379)),
        master_name="mymaster",
        socket_timeout_s=10,
        db=0,
        password="yourpassword",
    )
    assert "yourpassword" not in repr(config) + config.summary()


def test_mapping_and_json_text_are_equivalent() -> None:
    """A mapping passed in code parses exactly like the same JSON text."""
    assert parse_connection_config(json.loads(EXAMPLE)) == parse_connection_config(EXAMPLE)


def test_sentinel_items_in_every_form() -> None:
    """Sentinels may be [host, port] pairs, "host:port" strings or objects; port defaults."""
    config = parse_connection_config(
        {
            "sentinels": [["a", 1], "b:2", "c", {"host": "d", "port": 4}, "[::1]:5"],
            "master_name": "m",
        }
    )
    assert isinstance(config, SentinelConfig)
    assert [str(n) for n in config.sentinels] == ["a:1", "b:2", "c:26379", "d:4", "[::1]:5"]


def test_every_common_key() -> None:
    """Every shared key lands in its unit-suffixed field."""
    config = parse_connection_config(
        {
            "address": "h:1",
            "username": "u",
            "password": SECRET,
            "db": 5,
            "socket_timeout": 1.5,
            "socket_connect_timeout": 2,
            "socket_keepalive": True,
            "health_check_interval": 15,
            "failover_timeout": 45,
        }
    )
    assert config == SingleNodeConfig(
        address=NodeAddress(host="h", port=1),
        username="u",
        password=SECRET,
        db=5,
        socket_timeout_s=1.5,
        socket_connect_timeout_s=2.0,
        socket_keepalive=True,
        health_check_interval_s=15.0,
        failover_timeout_s=45.0,
    )


def test_failover_timeout_defaults_to_30_seconds() -> None:
    """Without failover_timeout the layer waits 30 s for a new master."""
    assert parse_connection_config({}).failover_timeout_s == 30.0


def test_empty_object_is_the_local_default() -> None:
    """{} means a single node on localhost:6379."""
    assert parse_connection_config("{}") == SingleNodeConfig(address="localhost:6379")


def test_host_and_port_keys() -> None:
    """host and port (default 6379) locate a single node."""
    config = parse_connection_config({"host": "redis.local"})
    assert isinstance(config, SingleNodeConfig)
    assert str(config.address) == "redis.local:6379"


def test_unix_socket_path_key() -> None:
    """unix_socket_path selects a unix socket."""
    config = parse_connection_config({"unix_socket_path": "/run/r.sock", "db": 1})
    assert config == SingleNodeConfig(unix_socket_path="/run/r.sock", db=1)


def test_address_as_url_merges_its_parts() -> None:
    """An address URL contributes its credentials, TLS and db alongside the other keys."""
    config = parse_connection_config(
        {"address": f"rediss://u:{SECRET}@h:6380/2", "ssl_ca_certs": "/ca.pem"}
    )
    assert config == SingleNodeConfig(
        address="h:6380", username="u", password=SECRET, db=2, tls=TLSConfig(ca_certs="/ca.pem")
    )


def test_tls_keys() -> None:
    """ssl: true plus ssl_* keys configure TLS for the data nodes."""
    config = parse_connection_config(
        {
            "ssl": True,
            "ssl_ca_certs": "/ca.pem",
            "ssl_certfile": "/c.pem",
            "ssl_keyfile": "/k.pem",
            "ssl_cert_reqs": "optional",
            "ssl_check_hostname": False,
        }
    )
    assert config.tls == TLSConfig(
        ca_certs="/ca.pem",
        certfile="/c.pem",
        keyfile="/k.pem",
        cert_reqs="optional",
        check_hostname=False,
    )


def test_ssl_false_means_no_tls() -> None:
    """ssl: false leaves TLS off."""
    assert parse_connection_config({"ssl": False}).tls is None


def test_sentinel_tls_follows_data_tls() -> None:
    """With ssl: true the sentinels get the same TLS options as the data nodes."""
    config = parse_connection_config({**SENTINELS, "ssl": True, "ssl_ca_certs": "/ca.pem"})
    assert isinstance(config, SentinelConfig)
    assert config.sentinel_tls == config.tls == TLSConfig(ca_certs="/ca.pem")


def test_sentinel_kwargs_override_tls() -> None:
    """sentinel_kwargs can switch sentinel TLS off, on, or change its options."""
    plain = parse_connection_config({**SENTINELS, "ssl": True, "sentinel_kwargs": {"ssl": False}})
    assert isinstance(plain, SentinelConfig)
    assert (plain.tls, plain.sentinel_tls) == (TLSConfig(), None)
    only = parse_connection_config({**SENTINELS, "sentinel_kwargs": {"ssl": True}})
    assert isinstance(only, SentinelConfig)
    assert (only.tls, only.sentinel_tls) == (None, TLSConfig())
    mixed = parse_connection_config(
        {
            **SENTINELS,
            "ssl": True,
            "ssl_ca_certs": "/ca.pem",
            "sentinel_kwargs": {"ssl_cert_reqs": "none"},
        }
    )
    assert isinstance(mixed, SentinelConfig)
    assert mixed.sentinel_tls == TLSConfig(ca_certs="/ca.pem", cert_reqs="none")


def test_sentinel_auth_from_sentinel_kwargs() -> None:
    """sentinel_kwargs username, password and timeouts become the sentinel fields."""
    config = parse_connection_config(
        {
            **SENTINELS,
            "password": "data",
            "sentinel_kwargs": {
                "username": "watcher",
                "password": SECRET,
                "socket_timeout": 0.5,
                "socket_connect_timeout": 0.25,
            },
        }
    )
    assert isinstance(config, SentinelConfig)
    assert config.sentinel_username == "watcher"
    assert config.sentinel_password is not None
    assert config.sentinel_password.get_secret_value() == SECRET
    assert (config.sentinel_socket_timeout_s, config.sentinel_socket_connect_timeout_s) == (
        0.5,
        0.25,
    )


def test_sentinel_auth_from_top_level_keys() -> None:
    """sentinel_username and sentinel_password may also be given at the top level."""
    config = parse_connection_config(
        {**SENTINELS, "sentinel_username": "w", "sentinel_password": SECRET}
    )
    assert isinstance(config, SentinelConfig)
    assert config.sentinel_username == "w"
    assert config.password is None


def test_data_password_is_not_sent_to_sentinels() -> None:
    """The data password never doubles as the sentinel password."""
    config = parse_connection_config({**SENTINELS, "password": SECRET})
    assert isinstance(config, SentinelConfig)
    assert config.sentinel_password is None


def test_cluster_keys() -> None:
    """startup_nodes selects cluster mode, accepting the same item forms as sentinels."""
    config = parse_connection_config({"startup_nodes": [["a", 7000], "b:7001", "c"]})
    assert isinstance(config, ClusterConfig)
    assert [str(n) for n in config.startup_nodes] == ["a:7000", "b:7001", "c:6379"]


@pytest.mark.parametrize(
    ("mode", "options", "kind"),
    [
        ("single", {"address": "h:1"}, SingleNodeConfig),
        ("sentinel", SENTINELS, SentinelConfig),
        ("cluster", {"startup_nodes": ["a:1"]}, ClusterConfig),
    ],
)
def test_explicit_mode(mode: str, options: dict[str, Any], kind: type[Any]) -> None:
    """An explicit mode agreeing with the keys is accepted."""
    assert isinstance(parse_connection_config({"mode": mode, **options}), kind)


# -- every bad input -----------------------------------------------------------------------


def test_malformed_json_gives_line_and_column() -> None:
    """Invalid JSON reports the parser's position and never the text (it may hold a secret)."""
    message = _error('{\n  "password": "hunter2",\n  "db": 0,,\n}')
    assert "not valid JSON (Expecting property name enclosed in double quotes" in message
    assert "at line 3, column 11" in message


@pytest.mark.parametrize("text", ['{"db": ' + "9" * 5000 + "}", "[" * 100_000])
def test_json_python_cannot_read_is_a_configuration_error(text: str) -> None:
    """Seen: a 5,000-digit number escaped as a raw ValueError from `manage.py check`."""
    assert "JSON that Python cannot read" in _error(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"host": "h", "port": 1e400}', "'port': expected a finite number"),
        ('{"host": "h", "db": "' + "9" * 5000 + '"}', "'db': expected an integer of sensible"),
    ],
)
def test_numbers_out_of_reach_are_explained(text: str, expected: str) -> None:
    """Seen: "expected Input should be a finite number", pydantic's words pasted in ours."""
    assert expected in _error(text)


@pytest.mark.parametrize(
    ("text", "kind"),
    [("[1, 2]", "array"), ('"hunter2"', "string"), ("3", "number"), ("null", "null")],
)
def test_json_that_is_not_an_object(text: str, kind: str) -> None:
    """JSON of another type names that type and asks for an object."""
    assert f"expected a JSON object {{...}}, got a JSON {kind}" in _error(text)


def test_unknown_key_suggests_the_closest() -> None:
    """A misspelt key gets a did-you-mean suggestion and the list of known keys."""
    message = _error({"sentinal": ["a"], "master_name": "m", "password": SECRET})
    assert "'sentinal': unknown key (did you mean 'sentinels'?); expected one of mode," in message


def test_unknown_sentinel_kwargs_key() -> None:
    """sentinel_kwargs accepts only sentinel connection options."""
    message = _error({**SENTINELS, "sentinel_kwargs": {"db": 1, "password": SECRET}})
    assert "'sentinel_kwargs.db': unknown key; expected one of ssl, username," in message


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"db": "zero"}, "'db': expected an integer, got \"zero\""),
        ({"db": -1}, "'db': expected a database number >= 0, got -1"),
        ({"port": 70000}, "'port': expected a port number from 1 to 65535, got 70000"),
        ({"socket_timeout": "soon"}, "'socket_timeout': expected a number"),
        ({"socket_keepalive": "sometimes"}, "'socket_keepalive': expected true or false"),
        ({"ssl": "yes please"}, "'ssl': expected true or false"),
        ({"username": 5}, "'username': expected a string, got 5"),
        ({"password": 12345}, "'password': expected a string"),
        ({"sentinels": "a:1", "master_name": "m"}, "'sentinels': expected a list"),
        ({"sentinels": [["a", 1, 2]], "master_name": "m"}, "'sentinels[0]': expected a [host"),
        ({"sentinels": [7], "master_name": "m"}, "'sentinels[0]': expected a \"host:port\""),
        ({"sentinels": ["a b"], "master_name": "m"}, "'sentinels[0].host': expected a host"),
        ({"sentinels": ["a"], "master_name": 3}, "'master_name': expected a string"),
        ({"sentinels": ["a"], "master_name": "m", "sentinel_kwargs": []}, "an object"),
        ({"mode": "replicated"}, "'mode': expected one of 'single', 'sentinel', 'cluster'"),
        ({"ssl": True, "ssl_cert_reqs": "maybe"}, "expected one of 'required', 'optional'"),
    ],
)
def test_wrong_types(options: dict[str, Any], fragment: str) -> None:
    """A value of the wrong type names its key, what was expected, and (if harmless) the value."""
    assert fragment in _error(
        {**options, "sentinel_password": SECRET} if "sentinels" in options else options
    )


def test_password_of_wrong_type_is_not_echoed() -> None:
    """Even a password of the wrong type stays out of the message."""
    message = _error({"password": 987654321})
    assert "987654321" not in message


def test_port_out_of_range_in_a_pair() -> None:
    """A bad port inside a sentinel pair names the item and the port."""
    message = _error({"sentinels": [["s1", 26379], ["s2", 0]], "master_name": "m"})
    assert "'sentinels[1].port': expected a port number from 1 to 65535, got 0" in message


def test_empty_sentinels() -> None:
    """An empty sentinel list asks for at least one sentinel."""
    message = _error({"sentinels": [], "master_name": "m", "password": SECRET})
    assert "'sentinels': expected at least one sentinel" in message


def test_sentinels_without_master_name() -> None:
    """sentinels alone asks for master_name."""
    message = _error({"sentinels": ["s1"], "password": SECRET})
    assert "'master_name': expected the name of the master" in message
    assert "('sentinels' needs 'master_name')" in message


def test_master_name_without_sentinels() -> None:
    """master_name alone asks for sentinels."""
    message = _error({"master_name": "m", "password": SECRET})
    assert "'sentinels': expected a list of sentinels ('master_name' needs 'sentinels')" in message


def test_cluster_db_must_be_zero() -> None:
    """db other than 0 in cluster mode is rejected."""
    message = _error({"startup_nodes": ["a:7000"], "db": 1})
    assert "'db': expected 0 (Redis Cluster has only database 0), got 1" in message


def test_cluster_without_nodes() -> None:
    """An explicit cluster mode without startup_nodes asks for them."""
    assert "'startup_nodes': expected a list of cluster nodes" in _error({"mode": "cluster"})


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (
            {"sentinels": ["a"], "master_name": "m", "startup_nodes": ["b"]},
            "(cluster mode: startup_nodes; sentinel mode: sentinels, master_name)",
        ),
        (
            {"address": "h:1", "sentinels": ["a"]},
            "(sentinel mode: sentinels; single mode: address)",
        ),
        ({"mode": "cluster", "host": "h"}, "(cluster mode: mode; single mode: host)"),
    ],
)
def test_mixed_modes(options: dict[str, Any], fragment: str) -> None:
    """Keys of two modes together are rejected, naming each mode's keys."""
    message = _error({**options, "password": SECRET})
    assert f"keys of more than one mode are mixed {fragment}" in message
    assert "expected the keys of one mode only" in message


def test_two_ways_to_locate_a_single_node() -> None:
    """address together with host/port or unix_socket_path is ambiguous."""
    assert "address and host/port are both given" in _error({"address": "h:1", "port": 2})
    message = _error({"unix_socket_path": "/s", "host": "h"})
    assert "unix_socket_path and host/port are both given" in message


@pytest.mark.parametrize(
    ("key", "expectation"),
    [
        ("socket_timeout", "> 0 (leave it out for the default, 5 s)"),
        ("socket_connect_timeout", "> 0 (leave it out for the default, 2 s)"),
        ("health_check_interval", ">= 0"),
    ],
)
def test_negative_timeouts(key: str, expectation: str) -> None:
    """Negative durations are rejected with the expected range."""
    assert f"'{key}': expected a duration in seconds {expectation}, got -1" in _error({key: -1})


def test_failover_timeout_must_be_positive() -> None:
    """A zero failover timeout would never wait for a new master."""
    message = _error({"failover_timeout": 0})
    assert "'failover_timeout': expected a duration in seconds > 0, got 0" in message


def test_tls_keys_without_tls() -> None:
    """ssl_* keys without ssl: true would silently do nothing, so they are rejected."""
    message = _error({"ssl_ca_certs": "/ca.pem"})
    assert "'ssl_ca_certs': expected TLS to be on for this option" in message
    message = _error({**SENTINELS, "sentinel_kwargs": {"ssl_ca_certs": "/ca.pem"}})
    assert "'sentinel_kwargs.ssl_ca_certs': expected TLS to be on" in message


def test_tls_conflict_is_reported_without_the_value() -> None:
    """A hostname check without certificate verification names the key, not the value."""
    message = _error({"ssl": True, "ssl_cert_reqs": "none", "ssl_check_hostname": True})
    assert "'ssl_check_hostname': expected false or unset when certificates" in message


def test_tls_over_unix_socket() -> None:
    """TLS cannot be used over a unix socket."""
    message = _error({"unix_socket_path": "/s", "ssl": True})
    assert "'unix_socket_path': expected no TLS with a unix socket" in message


def test_sentinel_password_given_twice() -> None:
    """A sentinel password both top-level and in sentinel_kwargs is ambiguous."""
    message = _error(
        {**SENTINELS, "sentinel_password": SECRET, "sentinel_kwargs": {"password": SECRET}}
    )
    assert "'sentinel_password' and 'sentinel_kwargs.password' are both given" in message


def test_address_url_key_given_twice() -> None:
    """A key both inside the address URL and beside it, with another value, is ambiguous."""
    message = _error({"address": f"redis://:{SECRET}@h/0", "password": "other"})
    assert "'password' is given in the 'address' URL and as a key, with different" in message
    message = _error({"address": "redis://h/0", "db": 1})
    assert "'db' is given in the 'address' URL and as a key, with different" in message
    message = _error({"address": f"redis://:{SECRET}@h/0", "password": SECRET.upper()})
    assert "'password' is given in the 'address' URL and as a key, with different" in message


def test_address_url_key_repeated_with_the_same_value() -> None:
    """channels_redis configurations often repeat the URL's database or password as a key."""
    entry = {"address": f"redis://:{SECRET}@h:6380/0", "db": 0, "password": SECRET}
    assert parse_hosts_entry(entry) == SingleNodeConfig(address="h:6380", db=0, password=SECRET)


def test_a_channels_redis_hosts_entry_may_carry_ssl_password() -> None:
    """redis-py's ssl_password in a hosts dict, beside or in its address URL, is the TLS
    key's pass phrase; given twice it must match exactly, and the built entry gives it back."""
    tls = {"ssl_certfile": "/c.pem", "ssl_keyfile": "/k.pem"}
    entry = {"address": f"rediss://h:6380/0?ssl_password={SECRET}", **tls, "ssl_password": SECRET}
    config = parse_hosts_entry(entry)
    assert config.tls == TLSConfig(certfile="/c.pem", keyfile="/k.pem", password=SECRET)
    assert config.to_channels_redis_host()["ssl_password"] == SECRET
    rebuilt = parse_hosts_entry(config.to_channels_redis_host()).tls
    assert rebuilt is not None
    assert rebuilt.password == config.tls.password
    message = _error({**entry, "ssl_password": SECRET.upper()})
    assert "'ssl_password' is given in the 'address' URL and as a key, with different" in message
    assert SECRET not in message
    assert SECRET.upper() not in message


def test_address_url_must_be_single_node() -> None:
    """address takes a redis://, rediss:// or unix:// URL only."""
    message = _error({"address": f"redis+sentinel://:{SECRET}@s/m"})
    assert "'address': expected a redis://, rediss:// or unix:// URL" in message


def test_bad_address_url_is_shown_redacted() -> None:
    """An error inside the address URL shows that URL masked and echoes none of its values."""
    message = _error({"address": f"redis://:{SECRET}@h:0"})
    assert "in REDIS_CONNECTION_CONFIG (address redis://:***@h:0): 'address.port'" in message
    assert "got" not in message


def test_several_problems_in_one_paragraph() -> None:
    """All problems found in one pass are reported together on one line."""
    message = _error({"socket_timeout": -1, "db": "x"})
    assert "'db': expected an integer" in message
    assert "'socket_timeout': expected a duration" in message


def test_mapping_of_wrong_type_from_code() -> None:
    """A non-mapping passed in code is named by its type."""
    with pytest.raises(ConfigurationError, match="expected an object \\(a mapping\\), got list"):
        parse_connection_config(["a"])  # type: ignore[arg-type]


# -- precedence and logging ----------------------------------------------------------------


def test_neither_variable_gives_the_default() -> None:
    """With neither variable set the default redis://localhost:6379/0 applies."""
    assert load_config(environ={}) == SingleNodeConfig(address="localhost:6379", db=0)


def test_blank_variables_count_as_unset() -> None:
    """Empty or blank variables (common in compose files) are treated as unset."""
    environ = {"REDIS_URL": "  ", "REDIS_CONNECTION_CONFIG": ""}
    assert select_source(environ=environ).name == "the default redis://localhost:6379/0"


def test_url_variable_alone() -> None:
    """REDIS_URL alone is used."""
    config = load_config(environ={"REDIS_URL": "redis://h:1/2"})
    assert config == SingleNodeConfig(address="h:1", db=2)


def test_connection_config_wins_over_url() -> None:
    """When both variables are set, REDIS_CONNECTION_CONFIG wins and REDIS_URL is noted."""
    environ = {"REDIS_URL": "redis://ignored", "REDIS_CONNECTION_CONFIG": EXAMPLE}
    source = select_source(environ=environ)
    assert (source.name, source.ignored) == ("REDIS_CONNECTION_CONFIG", ("REDIS_URL",))
    assert isinstance(load_config(environ=environ), SentinelConfig)


@pytest.mark.parametrize("leftover", ["{}", '{"db": 2, "password": "hunter2"}'])
def test_a_connection_config_naming_no_redis_does_not_override_a_url(leftover: str) -> None:
    """Seen: REDIS_CONNECTION_CONFIG='{}' (an empty template) beside a sound REDIS_URL meant
    localhost:6379, the URL ignored, said only by an INFO line. With a URL it would override,
    a configuration that names no Redis is an error naming both, showing no password; alone,
    {} is still the local default (see test_empty_object_is_the_local_default)."""
    environ = {
        "REDIS_URL": "redis://:s3cret@redis.example:6379/0",
        "REDIS_CONNECTION_CONFIG": leftover,
    }
    with pytest.raises(ConfigurationError) as raised:
        load_config(environ=environ)
    message = str(raised.value)
    assert message.startswith(
        "Invalid Redis configuration in REDIS_CONNECTION_CONFIG: names no Redis"
    )
    assert "while REDIS_URL is set and would be ignored" in message
    assert "s3cret" not in message
    assert "hunter2" not in message
    with pytest.raises(ConfigurationError, match="argument url is set"):
        load_config(url="redis://a:1", connection_config={})
    assert load_config(environ={**environ, "REDIS_CONNECTION_CONFIG": '{"host": "b"}'}) == (
        SingleNodeConfig(address="b:6379")
    )


def test_code_values_replace_the_environment() -> None:
    """Values passed in code are used even when the variables are set."""
    environ = {"REDIS_URL": "redis://env", "REDIS_CONNECTION_CONFIG": EXAMPLE}
    config = load_config(url="redis://code:1", environ=environ)
    assert config == SingleNodeConfig(address="code:1")


def test_code_connection_config_wins_over_code_url() -> None:
    """Between two code values the connection config wins, as in the environment."""
    source = select_source(url="redis://a", connection_config={"address": "b:1"})
    assert (source.name, source.ignored) == ("argument connection_config", ("argument url",))


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without environ= the process environment is read."""
    monkeypatch.setenv("REDIS_URL", "redis://from-env:7/1")
    monkeypatch.delenv("REDIS_CONNECTION_CONFIG", raising=False)
    assert load_config() == SingleNodeConfig(address="from-env:7", db=1)


def test_errors_name_the_environment_variable() -> None:
    """A bad variable is named in the error."""
    with pytest.raises(ConfigurationError, match=r"^Invalid Redis configuration in REDIS_URL \("):
        load_config(environ={"REDIS_URL": "nope://x"})
    with pytest.raises(ConfigurationError, match="in REDIS_CONNECTION_CONFIG: not valid JSON"):
        load_config(environ={"REDIS_CONNECTION_CONFIG": "{"})


def test_errors_name_the_argument() -> None:
    """A bad code value is named as an argument."""
    with pytest.raises(ConfigurationError, match="in argument url \\(nope://x\\)"):
        load_config(url="nope://x")
    with pytest.raises(ConfigurationError, match="in argument connection_config: 'db'"):
        load_config(connection_config={"db": -1})


def test_choice_is_logged_once_and_redacted(caplog: pytest.LogCaptureFixture) -> None:
    """The chosen source is logged once at INFO on channels_ha.config, without secrets."""
    environ = {
        "REDIS_URL": f"redis://:{SECRET}@other",
        "REDIS_CONNECTION_CONFIG": EXAMPLE.replace("yourpassword", SECRET),
    }
    with caplog.at_level(logging.INFO, logger="channels_ha.config"):
        load_config(environ=environ)
        load_config(environ=environ)
    assert len(caplog.records) == 1
    record = caplog.records[0]
    assert (record.name, record.levelno) == ("channels_ha.config", logging.INFO)
    assert record.getMessage() == (
        "Redis configuration from REDIS_CONNECTION_CONFIG: sentinel via sentinel1:26379, "
        "sentinel2:26379, sentinel3:26379, db 0; REDIS_URL is also set and ignored"
    )
    assert record.__dict__["config_source"] == "REDIS_CONNECTION_CONFIG"
    assert SECRET not in caplog.text


def test_a_different_choice_is_logged_again(caplog: pytest.LogCaptureFixture) -> None:
    """A later load with another source is logged too."""
    with caplog.at_level(logging.INFO, logger="channels_ha.config"):
        load_config(environ={})
        load_config(environ={"REDIS_URL": "redis://h"})
    assert [r.getMessage() for r in caplog.records] == [
        "Redis configuration from the default redis://localhost:6379/0: single via "
        "localhost:6379, db 0",
        "Redis configuration from REDIS_URL: single via h:6379, db 0",
    ]


# -- channels_redis hosts entries ----------------------------------------------------------


def test_hosts_entry_url() -> None:
    """A URL entry, including our sentinel scheme, parses like REDIS_URL."""
    assert parse_hosts_entry("redis://h:1/2") == SingleNodeConfig(address="h:1", db=2)
    assert isinstance(parse_hosts_entry("redis+sentinel://s/m"), SentinelConfig)


def test_hosts_entry_pair() -> None:
    """A (host, port) pair is a single node."""
    assert parse_hosts_entry(("h", 6380)) == SingleNodeConfig(address="h:6380")


def test_hosts_entry_channels_redis_dicts() -> None:
    """channels_redis's dict forms (address + kwargs, or sentinels) parse."""
    entry = {"address": "rediss://h:6380", "password": SECRET, "ssl_cert_reqs": "none"}
    single = parse_hosts_entry(entry)
    assert single.tls == TLSConfig(cert_reqs="none")
    sentinel = parse_hosts_entry(
        {
            "sentinels": [("s1", 26379)],
            "master_name": "m",
            "sentinel_kwargs": {"password": SECRET},
            "db": 1,
        }
    )
    assert isinstance(sentinel, SentinelConfig)
    assert sentinel.sentinel_password is not None


@pytest.mark.parametrize(
    ("cert_reqs", "expected"),
    [
        (None, "none"),
        (ssl.CERT_NONE, "none"),
        (ssl.CERT_OPTIONAL, "optional"),
        (ssl.CERT_REQUIRED, "required"),
    ],
)
def test_cert_reqs_as_redis_py_takes_them(cert_reqs: object, expected: str) -> None:
    """channels_redis's Heroku example passes ``"ssl_cert_reqs": None``: no verification."""
    entry = {"address": "rediss://:pw@h:6380", "ssl_cert_reqs": cert_reqs}
    tls = parse_hosts_entry(entry).tls
    assert tls == TLSConfig(cert_reqs=expected)
    assert tls.verifies_hostname is (expected != "none")


def test_null_cert_reqs_is_an_error_outside_hosts_entries() -> None:
    """In REDIS_CONNECTION_CONFIG a JSON null must not silently turn verification off."""
    message = _error('{"address": "rediss://h:6380", "ssl_cert_reqs": null}')
    assert "'ssl_cert_reqs': expected one of 'required', 'optional' or 'none'" in message


def test_redis_py_pool_options_are_accepted_and_ignored(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Options of redis-py's pools and codecs change nothing here; a typo still fails."""
    monkeypatch.setattr(_options, "_ignored_noted", set())
    plain = {"address": "redis://h:6380/0"}
    entry = {**plain, "max_connections": 50, "retry_on_timeout": True, "encoding": "utf-8"}
    with caplog.at_level(logging.INFO, logger="channels_ha.config"):
        assert parse_hosts_entry(entry) == parse_hosts_entry(plain)
        url = "redis://h:6380/0?max_connections=20&protocol=3&client_name=web"
        assert parse_url(url) == parse_hosts_entry(plain)
        sentinel = {**SENTINELS, "sentinel_kwargs": {"socket_keepalive": True}}
        assert parse_connection_config(sentinel) == parse_connection_config(SENTINELS)
        parse_hosts_entry(entry)
    logged = [record.getMessage() for record in caplog.records]
    assert len(logged) == 6, logged  # once per option and process
    assert "Redis option 'max_connections' is accepted and ignored" in logged[0]
    assert any("'sentinel_kwargs.socket_keepalive'" in line for line in logged)
    with pytest.raises(ConfigurationError, match="'max_connection': unknown key"):
        parse_hosts_entry({**plain, "max_connection": 50})


def test_hosts_entry_errors_name_the_entry() -> None:
    """Errors in a hosts entry say so; an entry of the wrong shape is named by type."""
    with pytest.raises(ConfigurationError, match="in hosts entry: 'connection_class': unknown"):
        parse_hosts_entry({"address": "redis://h", "connection_class": object})
    with pytest.raises(ConfigurationError, match="expected a URL string, a \\(host, port\\)"):
        parse_hosts_entry(42)


@pytest.mark.parametrize(
    "value",
    [
        {"password": 987654321, "db": "x"},
        '{"password": "hunter2",,}',
        {"unix_socket_path": "/s", "address": "h:1", "password": SECRET},
        {"address": f"redis://:{SECRET}@h:0"},
        {"sentinels": ["s"], "master_name": "m", "sentinel_kwargs": {"password": 987654321}},
    ],
)
def test_full_traceback_hides_secrets(value: str | dict[str, Any]) -> None:
    """Not even the chained pydantic or JSON error in a traceback shows the password."""
    with pytest.raises(ConfigurationError) as caught:
        parse_connection_config(value)
    text = "".join(traceback.format_exception(caught.value))
    assert SECRET not in text
    assert "987654321" not in text


NOT_UTF8 = "Geheimnis-\udce4-PW"  # a Latin-1 byte in an environment variable


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"password": NOT_UTF8}, "password"),
        ({"username": NOT_UTF8, "password": SECRET}, "username"),
        ({"password": "s3cr3t\ud800"}, "password"),  # a lone JSON "\ud800" escape
        ({**SENTINELS, "sentinel_password": NOT_UTF8}, "sentinel_password"),
        ({**SENTINELS, "sentinel_username": NOT_UTF8}, "sentinel_username"),
        ({**SENTINELS, "sentinel_kwargs": {"password": NOT_UTF8}}, "sentinel_kwargs.password"),
    ],
)
def test_credentials_that_are_not_utf8(options: dict[str, Any], key: str) -> None:
    """Redis gets credentials as UTF-8: one that cannot be encoded is named, not echoed."""
    with pytest.raises(ConfigurationError) as caught:
        parse_connection_config(options, source="REDIS_CONNECTION_CONFIG")
    assert f"'{key}': expected text that can be encoded as UTF-8" in str(caught.value)
    text = "".join(traceback.format_exception(caught.value))
    assert "Geheimnis" not in text
    assert "s3cr3t" not in text


def test_url_password_that_is_not_utf8() -> None:
    """REDIS_URL read from a Latin-1 environment: the password holds a surrogate."""
    with pytest.raises(ConfigurationError, match="'password': expected text") as caught:
        parse_url(f"redis://:{NOT_UTF8}@h:6379/0", source="REDIS_URL")
    assert "Geheimnis" not in "".join(traceback.format_exception(caught.value))


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("redis://a..b:6379/0", "address.host"),
        ("redis://.", "address.host"),
        ("redis://" + "x" * 64 + ".invalid", "address.host"),
        ("redis://" + "a." * 127 + "bc", "address.host"),  # 256 characters
        ("redis://h%00ost", "address.host"),
        ("redis://h%0Aost", "address.host"),
        ("redis://h%25ost", "address.host"),
        ("redis+sentinel://s1,a..b/m", "sentinels[1].host"),
        ("redis+cluster://a:7000,b%01:7001", "startup_nodes[1].host"),
    ],
)
def test_hosts_the_resolver_would_reject(url: str, key: str) -> None:
    """Empty or over-long labels and control characters are no host name (getaddrinfo fails
    on them with UnicodeError or ValueError)."""
    with pytest.raises(ConfigurationError, match=f"'{re.escape(key)}': expected a host name"):
        parse_url(url)


def test_unix_socket_path_with_nul() -> None:
    """A NUL cannot be in a file path."""
    with pytest.raises(
        ConfigurationError, match="'unix_socket_path': expected a file path the system"
    ):
        parse_url("unix:///tmp/re%00dis.sock")


@pytest.mark.parametrize(
    "host",
    [
        "redis.example.com.",  # fully qualified
        "redis_master",  # docker compose service names
        "bücher.example",  # internationalized
        "x" * 63 + ".example",
        "fe80::1%eth0",  # IPv6 with a scope
        "10.0.0.1",
    ],
)
def test_unusual_but_valid_hosts(host: str) -> None:
    """What the resolver takes stays accepted."""
    config = parse_connection_config({"host": host})
    assert isinstance(config, SingleNodeConfig)
    assert config.address is not None
    assert config.address.host == host
