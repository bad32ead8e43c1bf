"""TLS files are read when the layer is built: each problem names the setting and the file.

No server is needed: the files are read before any connection (the TLS topologies of
test_layer.py connect with contexts built the same way).
"""

from __future__ import annotations

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from channels_ha import ConfigurationError, RedisChannelLayer, parse_connection_config

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
        "encrypted private key; channels-ha needs it unencrypted",
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
