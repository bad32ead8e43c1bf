"""TLS files are read when the layer is built: each problem names the setting and the file.

No server is needed for that: the files are read before any connection (the TLS topologies of
test_layer.py connect with contexts built the same way). An encrypted client key with its
``ssl_password`` is tried against a TLS sandbox that requires client certificates.
"""

from __future__ import annotations

import traceback
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
import trustme
from cryptography.hazmat.primitives import serialization
from redis.backoff import NoBackoff
from redis.retry import Retry

from channels_ha import (
    ConfigurationError,
    RedisChannelLayer,
    parse_connection_config,
    parse_url,
)
from channels_ha._probe import probe
from channels_ha._tls import _readable
from channels_ha.cache import RedisCache
from channels_ha.sandbox import TLSTopology, TopologyFactory
from tests import django_settings

PASSWORD = "data-pw-secret"
KEY_PASS_PHRASE = b"key-pass-secret"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA, a client certificate and key, the key encrypted, and files that are not PEM."""
    directory = tmp_path_factory.mktemp("tls")
    authority = trustme.CA()
    leaf = authority.issue_cert("client.localhost")
    paths = {name: directory / name for name in ("ca", "cert", "key", "enc", "both", "text")}
    authority.cert_pem.write_to_path(str(paths["ca"]))
    leaf.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    leaf.private_key_pem.write_to_path(str(paths["key"]))
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(KEY_PASS_PHRASE),
    )
    paths["enc"].write_bytes(encrypted)
    paths["both"].write_bytes(leaf.cert_chain_pems[0].bytes() + encrypted)
    paths["text"].write_text("not a certificate\n")
    named = {name: str(path) for name, path in paths.items()}
    return named | {"missing": "/nonexistent/x.pem", "dir": str(directory)}


CASES = {
    "missing-ca": ("ssl_ca_certs={missing}", "'ssl_ca_certs'", "missing", "cannot be read"),
    "ca-is-a-directory": ("ssl_ca_certs={dir}", "'ssl_ca_certs'", "dir", "cannot be read"),
    "ca-not-pem": ("ssl_ca_certs={text}", "'ssl_ca_certs'", "text", "holds no PEM CA"),
    "missing-cert": (
        "ssl_certfile={missing}&ssl_keyfile={key}",
        "'ssl_certfile'",
        "missing",
        "cannot be read",
    ),
    "missing-key": ("ssl_certfile={cert}&ssl_keyfile={missing}", "'ssl_keyfile'", "missing", ""),
    "cert-not-pem": ("ssl_certfile={text}&ssl_keyfile={key}", "'ssl_certfile'", "text", "PEM"),
    "key-mismatch": ("ssl_certfile={cert}&ssl_keyfile={ca}", "'ssl_keyfile'", "ca", "matching"),
    "encrypted-key": (
        "ssl_certfile={cert}&ssl_keyfile={enc}",
        "'ssl_keyfile'",
        "enc",
        "encrypted private key and 'ssl_password' is not set",
    ),
    "encrypted-key-in-certfile": (
        "ssl_certfile={both}",
        "'ssl_certfile'",
        "both",
        "encrypted private key",
    ),
}


@pytest.mark.parametrize(("query", "setting", "path", "problem"), CASES.values(), ids=list(CASES))
def test_file_problem_names_setting_and_path(
    files: dict[str, str], query: str, setting: str, path: str, problem: str
) -> None:
    """A ConfigurationError with the setting, the path and what is wrong; an encrypted key is
    refused without prompting for its pass phrase; the password is never shown."""
    url = f"rediss://:{PASSWORD}@127.0.0.1:1?{query.format(**files)}"
    with pytest.raises(ConfigurationError) as raised:
        RedisChannelLayer(hosts=[url])
    message = str(raised.value)
    assert message.startswith("Invalid TLS setting '")
    assert setting in message
    assert files[path] in message
    assert problem in message
    assert PASSWORD not in message


def test_sentinel_files_are_named_as_sentinel_kwargs(files: dict[str, str]) -> None:
    """A file only the sentinels use is named by its sentinel_kwargs key."""
    config = parse_connection_config(
        {
            "sentinels": [["127.0.0.1", 1]],
            "master_name": "mymaster",
            "ssl": True,
            "ssl_ca_certs": files["ca"],
            "sentinel_kwargs": {"ssl_ca_certs": files["missing"], "password": PASSWORD},
        }
    )
    with pytest.raises(ConfigurationError, match=r"'sentinel_kwargs\.ssl_ca_certs'") as raised:
        RedisChannelLayer(config=config)
    assert files["missing"] in str(raised.value)
    assert PASSWORD not in str(raised.value)


def test_readable_files_build_the_layer(files: dict[str, str]) -> None:
    """The checks refuse nothing that works: CA, certificate and unencrypted key."""
    query = f"ssl_ca_certs={files['ca']}&ssl_certfile={files['cert']}&ssl_keyfile={files['key']}"
    assert RedisChannelLayer(hosts=[f"rediss://127.0.0.1:1?{query}"]).configs


def test_the_cache_reads_the_files_of_a_configuration_once(files: dict[str, str]) -> None:
    """Seen: building the cache took 24 ms with TLS (the system's CA store) instead of
    0.2, and under ASGI Django builds one per request. A file that breaks later is the
    connection's error then, as for any file redis-py reads."""
    query = f"ssl_ca_certs={files['ca']}&ssl_certfile={files['cert']}&ssl_keyfile={files['key']}"
    url = f"rediss://127.0.0.1:1/0?{query}"
    RedisCache(url, {})
    read = _readable.cache_info().misses
    for _ in range(3):
        RedisCache(url, {})
    assert _readable.cache_info().misses == read


# -- an encrypted key and its ssl_password ---------------------------------------------------

SERVER_KEY_PASS_PHRASE = "key&pass@phrase/1"  # percent-encoded in URLs
WRONG_PASS_PHRASE = "wrong-pass-phrase-2"


def _encrypt(key_pem: bytes, pass_phrase: str) -> bytes:
    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(pass_phrase.encode()),
    )


@pytest.fixture
def mutual_tls(redis_sandbox_factory: TopologyFactory, tmp_path: Path) -> dict[str, Any]:
    """A TLS node that refuses clients without a certificate, and the options of one whose
    key is encrypted with SERVER_KEY_PASS_PHRASE (no ssl_password yet)."""
    topology = redis_sandbox_factory("tls")
    assert isinstance(topology, TLSTopology)
    assert topology.tls is not None
    files, node = topology.tls, topology.node
    admin = node.client()
    admin.config_set("tls-auth-clients", "yes")  # the sandbox's default is "optional"
    admin.close()
    without_certificate = node.client(retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.ConnectionError):  # the key must really be used
        without_certificate.ping()
    without_certificate.close()
    encrypted = tmp_path / "client-encrypted.key"
    encrypted.write_bytes(_encrypt(files.client_key.read_bytes(), SERVER_KEY_PASS_PHRASE))
    return {
        **topology.connection_config,
        "ssl_certfile": str(files.client_cert),
        "ssl_keyfile": str(encrypted),
    }


def _url(options: dict[str, Any], pass_phrase: str) -> str:
    """A rediss:// URL of the options' node and files, with this ssl_password percent-encoded."""
    query = "&".join(f"{key}={quote(options[key], safe='/')}" for key in options if "ssl_" in key)
    return (
        f"rediss://{options['host']}:{options['port']}"
        f"?{query}&ssl_password={quote(pass_phrase, safe='')}"
    )


async def test_layer_sends_and_receives_with_an_encrypted_key_and_its_ssl_password(
    mutual_tls: dict[str, Any],
) -> None:
    """ssl_password in a URL (percent-encoded) unlocks the key for the layer's own TLS
    context: a message goes through a server that requires client certificates."""
    layer = RedisChannelLayer(hosts=[_url(mutual_tls, SERVER_KEY_PASS_PHRASE)])
    try:
        channel = f"mtls-{uuid.uuid4().hex[:8]}"
        await layer.send(channel, {"type": "over.mutual.tls"})
        assert (await layer.receive(channel))["type"] == "over.mutual.tls"
    finally:
        await layer.close()


def test_cache_and_probe_use_an_encrypted_key_with_its_ssl_password(
    mutual_tls: dict[str, Any],
) -> None:
    """ssl_password in REDIS_CONNECTION_CONFIG reaches the redis-py clients the project
    builds: the Django cache stores and reads, the probe finds the master."""
    django_settings.setup()
    config = parse_connection_config({**mutual_tls, "ssl_password": SERVER_KEY_PASS_PHRASE})
    cache = RedisCache("", {"KEY_PREFIX": "mtls", "OPTIONS": {"config": config}})
    try:
        cache.set("key", "value")
        assert cache.get("key") == "value"
        cache.clear()
    finally:
        cache.disconnect()
    report = probe(config)
    assert report.ok, report.problems
    assert report.master is not None
    assert report.master.reachable


def _shown(error: BaseException) -> str:
    """All a traceback of the error shows: its message and every error chained to it."""
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


def _wrong_in_url(options: dict[str, Any]) -> None:
    RedisChannelLayer(hosts=[_url(options, WRONG_PASS_PHRASE)])


def _wrong_in_cache(options: dict[str, Any]) -> None:
    django_settings.setup()
    config = parse_connection_config({**options, "ssl_password": WRONG_PASS_PHRASE})
    # Built, as Django's own checks build every cache, and raising at its first call.
    RedisCache("", {"OPTIONS": {"config": config}}).get("key")


def _wrong_in_sentinel_kwargs(options: dict[str, Any]) -> None:
    tls = {key: options[key] for key in ("ssl_certfile", "ssl_keyfile", "ssl_ca_certs")}
    config = {
        "sentinels": [["127.0.0.1", 1]],
        "master_name": "mymaster",
        "ssl": True,
        "ssl_ca_certs": options["ssl_ca_certs"],
        "sentinel_kwargs": {**tls, "ssl_password": WRONG_PASS_PHRASE},
    }
    RedisChannelLayer(config=parse_connection_config(config))


WRONG_PASS_PHRASES = {
    "layer-url": (_wrong_in_url, "'ssl_password'"),
    "cache": (_wrong_in_cache, "'ssl_password'"),
    "sentinel-kwargs": (_wrong_in_sentinel_kwargs, "'sentinel_kwargs.ssl_password'"),
}


@pytest.mark.parametrize(
    ("build", "setting"), WRONG_PASS_PHRASES.values(), ids=list(WRONG_PASS_PHRASES)
)
def test_a_wrong_ssl_password_is_named_and_not_echoed(
    files: dict[str, str], build: Any, setting: str
) -> None:
    """A pass phrase that does not decrypt the key is a ConfigurationError when the layer is
    built (the cache: at its first call), naming the setting and the key file, showing
    neither pass phrase."""
    options = {"host": "127.0.0.1", "port": 1, "ssl": True, "ssl_ca_certs": files["ca"]}
    options |= {"ssl_certfile": files["cert"], "ssl_keyfile": files["enc"]}
    with pytest.raises(ConfigurationError) as raised:
        build(options)
    message = str(raised.value)
    assert message.startswith(f"Invalid TLS setting {setting}: it does not decrypt"), message
    assert files["enc"] in message
    shown = _shown(raised.value)
    assert WRONG_PASS_PHRASE not in shown
    assert KEY_PASS_PHRASE.decode() not in shown


def test_the_probe_reports_a_wrong_ssl_password_by_name(files: dict[str, str]) -> None:
    """channels-ha check --connect names ssl_password instead of redis-py's "PEM lib"
    connection error, and connects to nothing."""
    config = parse_url(
        f"rediss://127.0.0.1:1?ssl_certfile={files['cert']}&ssl_keyfile={files['enc']}"
        f"&ssl_password={WRONG_PASS_PHRASE}"
    )
    report = probe(config)
    assert report.master is None
    assert len(report.problems) == 1
    assert report.problems[0].startswith("Invalid TLS setting 'ssl_password': it does not")
    assert WRONG_PASS_PHRASE not in report.problems[0]


def test_ssl_password_is_redacted_in_the_url_and_the_summary(files: dict[str, str]) -> None:
    """ssl_password is a secret: ***  in a shown URL, absent from errors, reprs and summaries
    (which say only whether one is set)."""
    url = (
        f"rediss://:{PASSWORD}@127.0.0.1:1?ssl_certfile={files['cert']}"
        f"&ssl_keyfile={files['enc']}&ssl_password={KEY_PASS_PHRASE.decode()}"
    )
    config = parse_url(url)
    assert config.tls is not None
    assert config.tls.password is not None
    assert config.tls.password.get_secret_value() == KEY_PASS_PHRASE.decode()
    facts = config.summary_dict()
    assert facts["data_nodes"]["tls_options"]["key_password_set"] is True
    with pytest.raises(ConfigurationError) as raised:
        parse_url(f"{url}&socket_timeout=-1", source="REDIS_URL")
    assert "ssl_password=***" in str(raised.value)
    shown = [repr(config), str(config), config.summary(), str(facts), config.model_dump_json()]
    shown.append(_shown(raised.value))
    assert all(KEY_PASS_PHRASE.decode() not in text for text in shown)
    assert RedisChannelLayer(hosts=[url]).configs  # and it decrypts the key
