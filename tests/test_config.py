"""The config models: immutability, redaction, validation of direct construction, summaries."""

from __future__ import annotations

import ssl
from pathlib import Path

import pydantic
import pytest
import trustme

from channels_ha._config import (
    ClusterConfig,
    NodeAddress,
    SentinelConfig,
    SingleNodeConfig,
    TLSConfig,
)
from channels_ha._redis_kwargs import sentinel_kwargs
from channels_ha._sources import parse_connection_config
from channels_ha._url import parse_url
from channels_ha.exceptions import ConfigurationError

PASSWORD = "s3cret-Pa55"


def _sentinel_config() -> SentinelConfig:
    return SentinelConfig(
        sentinels=(("s1", 26379), "s2:26380", "[::1]"),
        master_name="mymaster",
        username="app",
        password=PASSWORD,
        sentinel_password=PASSWORD + "-sentinel",
        tls=TLSConfig(ca_certs="/etc/ca.pem"),
        sentinel_tls=TLSConfig(ca_certs="/etc/ca.pem", cert_reqs="optional"),
    )


def test_models_are_frozen() -> None:
    """Assigning to a parsed config raises instead of silently changing it."""
    config = _sentinel_config()
    with pytest.raises(pydantic.ValidationError):
        config.master_name = "other"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        config.sentinels[0].port = 1  # type: ignore[misc]


def test_models_are_hashable_and_comparable() -> None:
    """Equal configs compare and hash equal, so they can key caches of pools."""
    assert _sentinel_config() == _sentinel_config()
    assert hash(_sentinel_config()) == hash(_sentinel_config())


def test_extra_fields_are_forbidden() -> None:
    """A misspelt field on direct construction is rejected, not ignored."""
    with pytest.raises(pydantic.ValidationError):
        SingleNodeConfig(address="h:1", sockettimeout_s=3)  # type: ignore[call-arg]


def test_repr_and_str_hide_passwords() -> None:
    """Neither repr nor str nor a JSON dump of the model shows a password."""
    config = _sentinel_config()
    for text in (repr(config), str(config), config.model_dump_json(), str(config.model_dump())):
        assert PASSWORD not in text
    assert config.password is not None
    assert config.password.get_secret_value() == PASSWORD


def test_summary_text_shows_both_hops_without_secrets() -> None:
    """The summary names mode, nodes, master, db and the TLS and auth of each hop."""
    assert _sentinel_config().summary() == (
        "mode: sentinel\n"
        "nodes: s1:26379, s2:26380, [::1]:26379\n"
        "master name: mymaster\n"
        "db: 0\n"
        "data nodes: TLS yes (verify required, hostname checked); "
        "auth yes (user app, password set)\n"
        "sentinels: TLS yes (verify optional, hostname checked); "
        "auth yes (default user, password set)\n"
        "timeouts: socket 5 s (default), connect 2 s (default), failover 30 s"
    )


def test_summary_dict_is_json_facts_without_secrets() -> None:
    """summary_dict reports auth as booleans and the username, never the password."""
    facts = _sentinel_config().summary_dict()
    assert facts["mode"] == "sentinel"
    assert facts["nodes"] == ["s1:26379", "s2:26380", "[::1]:26379"]
    assert facts["data_nodes"] == {
        "tls": True,
        "tls_options": {
            "verify": "required",
            "check_hostname": True,
            "ca_certs": "/etc/ca.pem",
            "client_cert": False,
            "key_password_set": False,
        },
        "auth": True,
        "username": "app",
        "password_set": True,
    }
    assert facts["sentinels"]["auth"] is True
    assert facts["sentinels"]["username"] is None
    assert PASSWORD not in str(facts)


def test_summary_of_unix_socket_and_cluster() -> None:
    """A unix socket shows as unix:<path>, a cluster lists its startup nodes and no sentinels."""
    unix = SingleNodeConfig(unix_socket_path="/run/redis.sock", db=2)
    assert unix.summary_dict()["nodes"] == ["unix:/run/redis.sock"]
    cluster = ClusterConfig(startup_nodes=["a:7000", ("b", 7001)], socket_timeout_s=2.5)
    assert cluster.summary_dict()["sentinels"] is None
    assert "nodes: a:7000, b:7001" in cluster.summary()
    assert "timeouts: socket 2.5 s" in cluster.summary()


def test_node_address_formats_ipv6_in_brackets() -> None:
    """An IPv6 host prints bracketed so host:port stays unambiguous."""
    assert str(NodeAddress(host="::1", port=26379)) == "[::1]:26379"
    assert str(NodeAddress(host="redis.local", port=6379)) == "redis.local:6379"


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_node_address_rejects_ports_out_of_range(port: int) -> None:
    """Ports outside 1-65535 are rejected on direct construction too."""
    with pytest.raises(pydantic.ValidationError, match="a port number from 1 to 65535"):
        NodeAddress(host="h", port=port)


def test_direct_construction_validates_cross_field_rules() -> None:
    """The models themselves enforce the rules, not only the parsers."""
    with pytest.raises(pydantic.ValidationError, match="exactly one of address"):
        SingleNodeConfig()
    with pytest.raises(pydantic.ValidationError, match="Redis Cluster has only database 0"):
        ClusterConfig(startup_nodes=["a:1"], db=1)
    with pytest.raises(pydantic.ValidationError, match="at least one sentinel"):
        SentinelConfig(sentinels=(), master_name="m")
    with pytest.raises(pydantic.ValidationError, match="no key file without a certificate"):
        TLSConfig(keyfile="/k.pem")


def test_tls_hostname_check_follows_verification() -> None:
    """Hostname checking defaults on, and off when certificates are not verified."""
    assert TLSConfig().verifies_hostname is True
    assert TLSConfig(cert_reqs="none").verifies_hostname is False
    assert TLSConfig(check_hostname=False).verifies_hostname is False
    with pytest.raises(pydantic.ValidationError, match="false or unset"):
        TLSConfig(cert_reqs="none", check_hostname=True)


def test_tls_redis_kwargs() -> None:
    """TLSConfig gives redis-py's ssl_* keyword arguments, leaving unset files out."""
    tls = TLSConfig(ca_certs="/ca.pem", certfile="/c.pem", keyfile="/k.pem", cert_reqs="optional")
    assert tls.redis_kwargs() == {
        "ssl_ca_certs": "/ca.pem",
        "ssl_certfile": "/c.pem",
        "ssl_keyfile": "/k.pem",
        "ssl_cert_reqs": "optional",
        "ssl_check_hostname": True,
    }


KEY_PASS_PHRASE = "k3y-Pass-phrase"


def test_ssl_password_is_a_secret_that_reaches_redis_py() -> None:
    """The key's pass phrase is hidden in reprs, dumps and summaries (only whether it is
    set shows) and given in clear text to redis-py, the sentinels and channels_redis alone."""
    tls = TLSConfig(certfile="/c.pem", keyfile="/k.pem", password=KEY_PASS_PHRASE)
    config = SentinelConfig(sentinels=["s"], master_name="m", tls=tls, sentinel_tls=tls)
    facts = config.summary_dict()
    assert facts["data_nodes"]["tls_options"]["key_password_set"] is True
    shown = [repr(config), str(config), config.model_dump_json(), config.summary(), str(facts)]
    assert all(KEY_PASS_PHRASE not in text for text in shown)
    assert tls.redis_kwargs()["ssl_password"] == KEY_PASS_PHRASE
    assert sentinel_kwargs(config)["ssl_password"] == KEY_PASS_PHRASE
    assert config.to_channels_redis_host()["ssl_password"] == KEY_PASS_PHRASE
    assert "ssl_password" not in TLSConfig(certfile="/c.pem").redis_kwargs()
    assert TLSConfig(certfile="/c.pem", password="").password is None  # as for password


@pytest.mark.parametrize(
    ("options", "expectation"),
    [
        ({"ssl_password": KEY_PASS_PHRASE}, "no key pass phrase without a client certificate"),
        ({"ssl_certfile": "/c.pem", "ssl_password": "x" * 1025 + KEY_PASS_PHRASE}, "at most 1024"),
        ({"ssl_certfile": "/c.pem", "ssl_password": KEY_PASS_PHRASE + "\udce4"}, "UTF-8"),
    ],
    ids=["without-certificate", "too-long", "not-utf8"],
)
def test_a_bad_ssl_password_is_named_not_echoed(options: dict[str, str], expectation: str) -> None:
    """An ssl_password that cannot work is refused when parsed, naming it, never showing it."""
    with pytest.raises(ConfigurationError) as caught:
        parse_connection_config({"host": "h", "ssl": True, **options})
    message = str(caught.value)
    assert "'ssl_password': expected" in message
    assert expectation in message
    assert KEY_PASS_PHRASE not in message


def test_tls_ssl_context_loads_files(tmp_path: Path) -> None:
    """ssl_context() builds a verifying client context from the CA and client certificate."""
    authority = trustme.CA()
    ca_path, cert_path = tmp_path / "ca.pem", tmp_path / "client.pem"
    authority.cert_pem.write_to_path(str(ca_path))
    authority.issue_cert("client").private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    context = TLSConfig(ca_certs=str(ca_path), certfile=str(cert_path)).ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert len(context.get_ca_certs()) == 1


def test_tls_ssl_context_without_verification() -> None:
    """cert_reqs "none" yields a context that neither verifies nor checks the hostname."""
    context = TLSConfig(cert_reqs="none").ssl_context()
    assert context.verify_mode == ssl.CERT_NONE
    assert context.check_hostname is False


def test_parsing_reads_no_files() -> None:
    """Parsing accepts certificate paths that do not exist: files are read only on connect."""
    config = parse_connection_config({"ssl": True, "ssl_ca_certs": "/does/not/exist.pem"})
    assert config.tls is not None
    assert config.tls.ca_certs == "/does/not/exist.pem"


def test_direct_construction_rejects_credentials_that_are_not_utf8() -> None:
    """The models refuse what AUTH could not send, and keep it out of the message."""
    for fields in (
        {"password": "s3cret-\udce4"},
        {"username": "s3cret-\udce4", "password": PASSWORD},
    ):
        with pytest.raises(pydantic.ValidationError, match="encoded as UTF-8") as caught:
            SingleNodeConfig(address="h:1", **fields)
        assert "s3cret-" not in str(caught.value)
    with pytest.raises(pydantic.ValidationError, match="encoded as UTF-8") as caught:
        SentinelConfig(sentinels=["s"], master_name="m", sentinel_password="s3cret-\ud800")
    assert "s3cret-" not in str(caught.value)


def test_node_address_rejects_what_is_no_host_name() -> None:
    """Empty and over-long labels, control characters: the resolver would fail on them."""
    for host in ("a..b", "x" * 64, "h\x00ost", "a:b"):
        with pytest.raises(pydantic.ValidationError, match="a host name"):
            NodeAddress(host=host, port=1)


def test_the_summary_gives_the_timeouts_the_layer_and_the_cache_use() -> None:
    """Seen: check printed "socket not set, connect not set" (and configuration.md said
    redis-py then waits indefinitely) while the layer and the cache use 5 s and 2 s. The
    summary gives the values they use, set or default, and says which are defaults."""
    from channels_ha._specs import _settings
    from channels_ha.cache import RedisCacheClient

    for options, socket_s, connect_s, text in [
        ({}, 5.0, 2.0, "timeouts: socket 5 s (default), connect 2 s (default), failover 30 s"),
        (
            {"socket_timeout": 0.5, "socket_connect_timeout": 0.25},
            0.5,
            0.25,
            "timeouts: socket 0.5 s, connect 0.25 s, failover 30 s",
        ),
    ]:
        config = parse_connection_config({"address": "h:6379", **options})
        layer = _settings(config, "name")
        cache = RedisCacheClient(config, "*")._config
        assert (layer.reply_timeout_s, layer.connect_timeout_s) == (socket_s, connect_s)
        assert (cache.socket_timeout_s, cache.socket_connect_timeout_s) == (socket_s, connect_s)
        timeouts = config.summary_dict()["timeouts_s"]
        assert (timeouts["socket"], timeouts["socket_connect"]) == (socket_s, connect_s)
        assert text in config.summary()


SENTINEL = {"sentinels": ["s:26379"], "master_name": "m"}


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"socket_timeout": 0}, "socket_timeout"),
        ({"socket_connect_timeout": 0.0}, "socket_connect_timeout"),
        ({"socket_timeout": -1}, "socket_timeout"),
        ({**SENTINEL, "sentinel_kwargs": {"socket_timeout": 0}}, "sentinel_kwargs.socket_timeout"),
        (
            {**SENTINEL, "sentinel_kwargs": {"socket_connect_timeout": 0}},
            "sentinel_kwargs.socket_connect_timeout",
        ),
    ],
)
def test_a_socket_timeout_of_zero_is_refused(options: dict[str, object], key: str) -> None:
    """Seen: socket_timeout=0 was taken, printed "socket 0 s", and became 5 s in the layer
    (``or`` the default) while redis-py, in the cache, would time out every read at once. A
    timeout is > 0, or left out for the default."""
    with pytest.raises(ConfigurationError) as caught:
        parse_connection_config(options, source="REDIS_CONNECTION_CONFIG")
    assert f"'{key}': expected a duration in seconds > 0 (leave it out for " in str(caught.value)


def test_master_name_must_be_printable_utf8() -> None:
    """A control character, or a URL %-escape of bytes that are not UTF-8 (decoded to U+FFFD),
    names a master no sentinel monitors: refused when read, not waited out at the first send."""
    for url in (
        "redis+sentinel://127.0.0.1:26379/my%FFmaster",
        "redis+sentinel://127.0.0.1:26379/my%00master",
        "redis+sentinel://127.0.0.1:26379/my%0Amaster",
    ):
        expected = "'master_name': expected (a master name|%-escapes of UTF-8)"  # (_url's)
        with pytest.raises(ConfigurationError, match=expected):
            parse_url(url)
    for name in ("my\tmaster", "my\x7fmaster", "my\ufffdmaster"):
        with pytest.raises(pydantic.ValidationError, match="printable UTF-8"):
            SentinelConfig(sentinels=["s"], master_name=name)
    assert parse_url("redis+sentinel://127.0.0.1:26379/my%20m%C3%A4ster").master_name == "my mäster"
