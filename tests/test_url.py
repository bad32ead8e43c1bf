"""REDIS_URL parsing: every scheme, query parameters, redaction, and every rejected form."""

from __future__ import annotations

import logging

import pytest

from channels_ha import _url
from channels_ha._config import (
    ClusterConfig,
    NodeAddress,
    SentinelConfig,
    SingleNodeConfig,
    TLSConfig,
)
from channels_ha._url import parse_url, redact_url
from channels_ha.exceptions import ConfigurationError

PASSWORD = "p@ss:w/rd?#"
QUOTED = "p%40ss%3Aw%2Frd%3F%23"


def _error(url: str) -> str:
    with pytest.raises(ConfigurationError) as caught:
        parse_url(url, source="REDIS_URL")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("Invalid Redis configuration in REDIS_URL (")
    return message


def test_plain_redis_url() -> None:
    """redis://host:port/db gives a single node with that address and database."""
    config = parse_url("redis://redis.example:6380/3")
    assert config == SingleNodeConfig(address=NodeAddress(host="redis.example", port=6380), db=3)


def test_redis_url_defaults() -> None:
    """A bare redis:// means localhost:6379, database 0, as in redis-py."""
    config = parse_url("redis://")
    assert isinstance(config, SingleNodeConfig)
    assert str(config.address) == "localhost:6379"
    assert config.db == 0


def test_credentials_are_percent_decoded() -> None:
    """Username and password in the userinfo are percent-decoded and kept secret."""
    config = parse_url(f"redis://alice:{QUOTED}@h/0")
    assert config.username == "alice"
    assert config.password is not None
    assert config.password.get_secret_value() == PASSWORD
    assert PASSWORD not in repr(config)


def test_password_without_username() -> None:
    """redis://:password@host sets only the password, as redis-py does."""
    config = parse_url("redis://:secret@h")
    assert config.username is None
    assert config.password is not None


def test_query_parameters() -> None:
    """Query parameters set timeouts, keepalive and the database, query db winning."""
    config = parse_url(
        "redis://h/1?db=2&socket_timeout=5&socket_connect_timeout=1.5"
        "&socket_keepalive=true&health_check_interval=10&failover_timeout=12"
    )
    assert (config.db, config.socket_timeout_s, config.socket_connect_timeout_s) == (2, 5.0, 1.5)
    assert config.socket_keepalive is True
    assert (config.health_check_interval_s, config.failover_timeout_s) == (10.0, 12.0)


def test_rediss_with_tls_query_parameters() -> None:
    """rediss:// turns TLS on and the ssl_* parameters configure it."""
    config = parse_url(
        "rediss://h:6380?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem"
        "&ssl_certfile=/c.pem&ssl_keyfile=/k.pem"
    )
    assert config.tls == TLSConfig(
        ca_certs="/ca.pem", certfile="/c.pem", keyfile="/k.pem", cert_reqs="none"
    )


def test_ssl_password_parameter_is_a_secret() -> None:
    """ssl_password, percent-decoded like a password, unlocks the key and stays hidden."""
    config = parse_url(f"rediss://h?ssl_certfile=/c.pem&ssl_keyfile=/k.pem&ssl_password={QUOTED}")
    assert config.tls is not None
    assert config.tls.password is not None
    assert config.tls.password.get_secret_value() == PASSWORD
    assert PASSWORD not in repr(config)


def test_rediss_defaults_to_full_verification() -> None:
    """A bare rediss:// verifies certificates and hostnames."""
    config = parse_url("rediss://h")
    assert config.tls == TLSConfig()
    assert config.tls.verifies_hostname


def test_ssl_check_hostname_parameter() -> None:
    """ssl_check_hostname=false turns hostname checking off while still verifying."""
    config = parse_url("rediss://h?ssl_check_hostname=false")
    assert config.tls is not None
    assert (config.tls.cert_reqs, config.tls.verifies_hostname) == ("required", False)


def test_unix_url() -> None:
    """unix:///path gives a unix socket config; the db comes from the query."""
    config = parse_url("unix://:pw@/run/redis%20x.sock?db=4")
    assert config == SingleNodeConfig(unix_socket_path="/run/redis x.sock", db=4, password="pw")


def test_ipv6_single_node() -> None:
    """A bracketed IPv6 host parses with or without a port."""
    assert str(parse_url("redis://[::1]:6390").summary_dict()["nodes"][0]) == "[::1]:6390"
    assert parse_url("redis://[fe80::1]").summary_dict()["nodes"] == ["[fe80::1]:6379"]


def test_sentinel_url() -> None:
    """redis+sentinel:// lists sentinels (default port 26379), the master and the db."""
    config = parse_url(f"redis+sentinel://app:{QUOTED}@s1,s2:26380,[::1]:26381/mymaster/2")
    assert isinstance(config, SentinelConfig)
    assert [str(node) for node in config.sentinels] == ["s1:26379", "s2:26380", "[::1]:26381"]
    assert (config.master_name, config.db, config.username) == ("mymaster", 2, "app")


def test_sentinel_url_credentials_belong_to_data_nodes() -> None:
    """Userinfo credentials are the data nodes'; sentinel auth comes only from its parameters."""
    config = parse_url("redis+sentinel://:datapw@s1/m")
    assert isinstance(config, SentinelConfig)
    assert config.password is not None
    assert (config.sentinel_username, config.sentinel_password) == (None, None)
    with_sentinel_auth = parse_url(
        "redis+sentinel://s1/m?sentinel_username=watcher&sentinel_password=sentpw"
    )
    assert isinstance(with_sentinel_auth, SentinelConfig)
    assert with_sentinel_auth.sentinel_username == "watcher"
    assert with_sentinel_auth.sentinel_password is not None
    assert with_sentinel_auth.password is None


def test_rediss_sentinel_applies_tls_to_sentinels_too() -> None:
    """rediss+sentinel:// encrypts both hops with the same TLS options."""
    config = parse_url("rediss+sentinel://s1/m?ssl_ca_certs=/ca.pem")
    assert isinstance(config, SentinelConfig)
    assert config.tls == config.sentinel_tls == TLSConfig(ca_certs="/ca.pem")


def test_plain_sentinel_url_has_no_tls() -> None:
    """redis+sentinel:// talks plain TCP to both hops."""
    config = parse_url("redis+sentinel://s1/m")
    assert isinstance(config, SentinelConfig)
    assert (config.tls, config.sentinel_tls) == (None, None)


def test_cluster_url() -> None:
    """redis+cluster:// lists startup nodes with the default port 6379."""
    config = parse_url("rediss+cluster://:pw@a:7000,b,[::1]:7002?socket_timeout=3")
    assert isinstance(config, ClusterConfig)
    assert [str(node) for node in config.startup_nodes] == ["a:7000", "b:6379", "[::1]:7002"]
    assert config.tls == TLSConfig()
    assert config.socket_timeout_s == 3.0


def test_cluster_url_accepts_db_zero() -> None:
    """An explicit /0 on a cluster URL is accepted."""
    assert parse_url("redis+cluster://a:7000/0").db == 0


def test_scheme_is_case_insensitive() -> None:
    """REDIS:// is read like redis://."""
    assert isinstance(parse_url("REDIS+SENTINEL://s/m"), SentinelConfig)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:hunter2@h", "redis://:***@h"),
        ("redis://user:hunter2@h:1/0", "redis://user:***@h:1/0"),
        ("redis://user@h", "redis://user@h"),
        ("redis://:hun/ter@2@h", "redis://:***@h"),
        ("s/m?sentinel_password=hunter2&db=1", "s/m?sentinel_password=***&db=1"),
        ("redis://h?password=hunter2", "redis://h?password=***"),
        (
            "rediss://h?ssl_keyfile=/k&ssl_password=hunter2&db=1",
            "rediss://h?ssl_keyfile=/k&ssl_password=***&db=1",
        ),
        ("u:hunter2@h", "u:***@h"),
        ("redis://h/0?db=1&socket_timeout=2&x=y", "redis://h/0?db=1&socket_timeout=2&x=***"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    """Passwords in userinfo, *password* parameters and the values of unknown parameters are
    replaced by ***; the known harmless ones stay, to help read the URL."""
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2?TAIL@redis.example.com:6379/0",  # '?' in the password
        "redis://:hunter2/TAIL@redis.example.com:6379/0",  # '/' in the password
        "redis+sentinel://:pw@s1:26379/m?sentinel_password=hunter2&TAIL",  # '&' in it
        "redis+sentinel://s1:26379/m?sentinel_password=hunter2&TAIL=x",  # '&' and '='
        "redis+sentinel://s1:26379/m?sentinel_passw%6Frd=TAIL&socket_timeout=-1",
        "redis://h?TAIL",
        "redis+sentinel://s1:26379/m?sentinel_password=se&cr&et=TAIL",  # '&' twice
        "redis+sentinel://s1:26379/m?sentinel_password=se&cr=et&ta=TAIL",
        "rediss://h?ssl_certfile=/c&ssl_password=hunter2&TAIL",  # '&' in the key's pass phrase
        "rediss://h?ssl_certfile=/c&ssl_password=hunter2&TAIL=x",
        "rediss://h?ssl_certfile=/c&ssl_pasword=TAIL",  # a misspelt name: its value is secret
        "redis+sentinel://s1:26379/m?sentinel_pasword=TAIL",
        "redis://h/0?auth=TAIL&db=1",  # a name the parser cannot know to be harmless
    ],
)
def test_a_password_that_breaks_the_url_is_not_echoed(url: str) -> None:
    """Seen: an unescaped '?' or '&' cut a password in two, and the error named its tail as
    an "unknown query parameter" (also in /healthz, which shows configuration errors)."""
    with pytest.raises(ConfigurationError) as caught:
        parse_url(url, source="REDIS_URL")
    assert "TAIL" not in str(caught.value)
    assert "TAIL" not in redact_url(url)


def test_a_unix_socket_path_may_hold_an_at_sign() -> None:
    """As redis-py reads it: only a host part may not be followed by an '@'."""
    config = parse_url("unix:///run/redis@6379.sock?db=1")
    assert isinstance(config, SingleNodeConfig)
    assert config.unix_socket_path == "/run/redis@6379.sock"


def test_an_at_sign_inside_a_query_value_is_kept() -> None:
    """An '@' in a parameter's value is legal and reaches the option."""
    config = parse_url("redis+sentinel://s1:26379/m?sentinel_password=p@ss&db=1")
    assert isinstance(config, SentinelConfig)
    assert config.sentinel_password is not None
    assert config.sentinel_password.get_secret_value() == "p@ss"


def test_unknown_scheme_lists_the_known_ones() -> None:
    """An unknown scheme names itself and lists every supported scheme."""
    message = _error("http://:hunter2@h")
    assert "unknown URL scheme 'http'" in message
    assert "redis+sentinel://, rediss+sentinel://, redis+cluster://" in message
    assert "hunter2" not in message
    assert "http://:***@h" in message


def test_missing_scheme_is_rejected() -> None:
    """A bare host:port is not a URL."""
    assert "unknown URL scheme 'localhost:6379'" in _error("localhost:6379")


def test_sentinel_url_without_master_name() -> None:
    """A sentinel URL with no path names master_name as what is missing."""
    message = _error("redis+sentinel://:hunter2@s1:26379/?sentinel_password=hunter3")
    assert "'master_name': expected the master name as the URL path" in message
    assert "hunter2" not in message
    assert "hunter3" not in message


def test_sentinel_url_without_sentinels() -> None:
    """A sentinel URL with no hosts says at least one sentinel is expected."""
    assert "'sentinels': expected at least one sentinel" in _error("redis+sentinel:///m")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("redis://:hunter2@h:99999", "'address.port': expected a port number from 1 to 65535"),
        ("redis://:hunter2@h:0", "'address.port': expected a port number from 1 to 65535"),
        ("redis://:hunter2@h:abc", "'address.port': expected an integer"),
        ("redis+sentinel://:hunter2@s1,s2:70000/m", "'sentinels[1].port': expected a port"),
        ("redis+cluster://:hunter2@a:1,b:0", "'startup_nodes[1].port': expected a port"),
    ],
)
def test_ports_out_of_range(url: str, fragment: str) -> None:
    """A bad port names its position; the password never appears."""
    message = _error(url)
    assert fragment in message
    assert "hunter2" not in message


def test_cluster_url_with_nonzero_db() -> None:
    """Cluster mode has only database 0."""
    message = _error("redis+cluster://:hunter2@a:7000/3")
    assert "'db': expected 0 (Redis Cluster has only database 0)" in message
    assert "hunter2" not in message


def test_unknown_query_parameter_suggests_the_closest() -> None:
    """A misspelt parameter gets a did-you-mean suggestion."""
    message = _error("redis://:hunter2@h?socket_timout=3")
    assert "'socket_timout': unknown query parameter (did you mean 'socket_timeout'?)" in message
    assert "hunter2" not in message


def test_sentinel_parameters_only_on_sentinel_urls() -> None:
    """sentinel_password on a plain redis:// URL is unknown, and its value is redacted."""
    message = _error("redis://h?sentinel_password=hunter2")
    assert "'sentinel_password': unknown query parameter" in message
    assert "hunter2" not in message


def test_negative_timeout() -> None:
    """A negative timeout is rejected with the expected range."""
    message = _error("redis://h?socket_connect_timeout=-1")
    assert "'socket_connect_timeout': expected a duration in seconds > 0 (leave it" in message


def test_bad_db_path() -> None:
    """A non-numeric database in the path is an error, not silently ignored."""
    assert "'db': expected an integer" in _error("redis://h/zero")


def test_tls_options_without_tls() -> None:
    """ssl_* parameters on redis:// are an error: they would silently do nothing."""
    message = _error("redis://h?ssl_cert_reqs=none")
    assert "'ssl_cert_reqs': expected TLS to be on for this option" in message


def test_several_hosts_need_sentinel_or_cluster() -> None:
    """A host list on redis:// points at the sentinel and cluster schemes."""
    assert "use redis+sentinel:// or redis+cluster://" in _error("redis://a,b")


def test_unbracketed_ipv6_is_rejected() -> None:
    """A bare IPv6 address is ambiguous with a port and must be bracketed."""
    message = _error("redis+sentinel://::1:26379/m")
    assert "IPv6 host in brackets" in message


def test_bad_boolean_parameter() -> None:
    """A boolean parameter accepts true/false forms only."""
    assert "'socket_keepalive': expected true or false" in _error("redis://h?socket_keepalive=2")


def test_unix_url_with_host() -> None:
    """unix:// takes a path, not a host."""
    assert "'unix_socket_path': expected no host" in _error("unix://localhost/run/r.sock")


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("redis://h/0?db=1&db=2", "db"),
        ("redis://h?socket_timeout=1&socket_timeout=5", "socket_timeout"),
        ("redis://h?db=1&d%62=2", "db"),  # names are compared decoded, as they are read
        (
            "redis+sentinel://:hunter2@s/m?sentinel_password=hunter3&sentinel_password=hunter4",
            "sentinel_password",
        ),
        ("rediss://h?ssl_cert_reqs=none&max_connections=5&ssl_cert_reqs=required", "ssl_cert_reqs"),
    ],
)
def test_a_repeated_query_parameter_is_refused(url: str, name: str) -> None:
    """Seen: ?db=1&db=2 meant database 2 here and 1 in redis-py's from_url (which takes the
    first), so a URL shared with a Django cache or Celery meant two databases. A repeated
    parameter is an error naming it, its values (passwords) not shown."""
    message = _error(url)
    assert f"'{name}': query parameter given twice" in message
    for secret in ("hunter2", "hunter3", "hunter4"):
        assert secret not in message


def test_a_plus_in_a_query_password_is_read_as_a_space_and_warned_about(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a query value '+' means a space (as in redis-py's from_url), in the userinfo it stays
    a '+': a base64 password put in both places worked for the data nodes and failed on the
    sentinels. The space is kept, and logged once as a warning naming the parameter (never
    its value); %2B is a '+' and not warned about."""
    monkeypatch.setattr(_url, "_plus_noted", set())
    url = "redis+sentinel://:ab+cd@s/m?sentinel_password=ab+cd"
    with caplog.at_level(logging.WARNING, logger="channels_ha.config"):
        config = parse_url(url)
        parse_url(url)
    assert isinstance(config, SentinelConfig)
    assert config.password is not None
    assert config.sentinel_password is not None
    assert config.password.get_secret_value() == "ab+cd"
    assert config.sentinel_password.get_secret_value() == "ab cd"
    (record,) = [r for r in caplog.records if "sentinel_password" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "%2B" in record.getMessage()
    assert "ab+cd" not in record.getMessage()
    assert "ab cd" not in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="channels_ha.config"):
        encoded = parse_url("redis+sentinel://:ab+cd@s/m?sentinel_password=ab%2Bcd&db=1")
    assert isinstance(encoded, SentinelConfig)
    assert encoded.sentinel_password is not None
    assert encoded.sentinel_password.get_secret_value() == "ab+cd"
    assert caplog.records == []


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("redis://:%E9t%E9@h", "password"),
        ("redis://us%E9r:pw@h", "username"),
        ("redis+sentinel://:pw@s1/mymaster?sentinel_password=%E9t%E9", "sentinel_password"),
        ("redis+sentinel://:pw@s1/mymaster?sentinel_username=%E9", "sentinel_username"),
        ("redis://h%E9st", "address"),
        ("redis+sentinel://s%E9/mymaster", "sentinels"),
        ("redis+cluster://n%E9", "startup_nodes"),
        ("redis+sentinel://s1/my%FFmaster", "master_name"),
        ("unix:///run/r%E9dis.sock", "unix_socket_path"),
        ("rediss://h?ssl_ca_certs=/c%E9.pem", "ssl_ca_certs"),
    ],
)
def test_a_percent_escape_that_is_not_utf8_is_an_error_naming_the_key(url: str, key: str) -> None:
    """Seen: ``parse_url('redis://:%E9t%E9@h').password`` was '\\ufffdt\\ufffd' (the
    escapes decoded with replacement), a password nobody set, where configuration.md says a
    non-UTF-8 byte in a user name or password is an error naming the key. Never the value."""
    message = _error(url)
    assert f"'{key}': expected %-escapes of UTF-8 text" in message
    assert "\\xe9" not in message.lower()
    assert "\ufffd" not in message
    assert "%E9t%E9" not in message.replace(redact_url(url), "")


def test_an_undecodable_query_name_is_not_shown() -> None:
    """A query name that is not UTF-8 may be a password's tail: refused, not shown."""
    message = _error("redis://h?db=0&p%E9ss=1")
    assert "a query parameter name that is not UTF-8 (not shown)" in message
    assert "p%E9ss" not in message.replace(redact_url("redis://h?db=0&p%E9ss=1"), "")


def test_utf8_escapes_and_plus_still_decode() -> None:
    """UTF-8 escapes decode everywhere, and '+' is a space in a query value only."""
    config = parse_url("redis+sentinel://m%C3%A4x:p+%C3%A9@s1/mymaster?sentinel_password=a+%C3%A9")
    assert isinstance(config, SentinelConfig)
    assert config.username == "mäx"
    assert config.password is not None
    assert config.password.get_secret_value() == "p+é"
    assert config.sentinel_password is not None
    assert config.sentinel_password.get_secret_value() == "a é"
