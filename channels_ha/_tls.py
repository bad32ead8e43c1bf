"""The SSL context of one TLS hop, with errors that name the setting and the file.

Parsing never reads files, so a certificate path is first tried here, when the layer is built:
OpenSSL's own errors name neither the file nor the setting, and for an encrypted key without
``ssl_password`` it would prompt for a pass phrase on the terminal, blocking the process that
builds the layer. A wrong ``ssl_password`` gives OpenSSL's "PEM lib", as an unreadable key
does; only whether the pass phrase was asked for tells the two apart.
"""

from __future__ import annotations

import functools
import ssl
from typing import TYPE_CHECKING, NoReturn

from ._config import _VERIFY_MODES, SentinelConfig
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from ._config import RedisConfig, TLSConfig

__all__ = ["read_tls_files", "ssl_context"]


class _EncryptedKey(Exception):
    """Raised by the pass phrase callback without ``ssl_password``: never prompted for."""


class _PassPhrase:
    """OpenSSL's pass phrase callback for one key; remembers whether the key asked."""

    def __init__(self, tls: TLSConfig) -> None:
        self._secret = tls.password
        self.asked = False

    def __call__(self) -> bytes:
        self.asked = True
        if self._secret is None:
            raise _EncryptedKey
        return self._secret.get_secret_value().encode()


def ssl_context(tls: TLSConfig, prefix: str = "") -> ssl.SSLContext:
    """A client context for ``tls``; ``prefix`` is how the hop's settings are spelt
    (``"sentinel_kwargs."`` for the sentinels' own files)."""
    for setting, path in _files(tls, prefix):
        _require_readable(setting, path)
    try:
        context = ssl.create_default_context(cafile=tls.ca_certs)
    except (ssl.SSLError, ValueError) as err:
        _fail(f"{prefix}ssl_ca_certs", tls.ca_certs, f"holds no PEM CA certificate ({err})")
    context.check_hostname = tls.verifies_hostname
    context.verify_mode = _VERIFY_MODES[tls.cert_reqs]
    if tls.certfile is not None:
        _load_client_certificate(context, tls, prefix)
    return context


def read_tls_files(config: RedisConfig) -> None:
    """Reads the TLS files of both hops now, for code that hands them to redis-py.

    redis-py reads them on each connection and reports a bad one (or a wrong
    ``ssl_password``) as a connection error, naming no setting; an encrypted key without
    ``ssl_password`` would make OpenSSL prompt on the terminal.
    """
    if config.tls is not None:
        _readable(config.tls, "")
    if isinstance(config, SentinelConfig) and config.sentinel_tls not in (None, config.tls):
        _readable(config.sentinel_tls, "sentinel_kwargs.")


@functools.lru_cache(maxsize=64)
def _readable(tls: TLSConfig, prefix: str) -> None:
    """Once per configuration and process (a failure is not remembered): under ASGI, Django
    builds a cache object per request, and a context costs ~25 ms (the system's CA store, a
    key to decrypt)."""
    ssl_context(tls, prefix)


def _files(tls: TLSConfig, prefix: str) -> list[tuple[str, str]]:
    named = [("ssl_ca_certs", tls.ca_certs), ("ssl_certfile", tls.certfile)]
    named.append(("ssl_keyfile", tls.keyfile))
    return [(prefix + setting, path) for setting, path in named if path is not None]


def _require_readable(setting: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        _fail(setting, path, f"cannot be read ({err.strerror or err})")


def _load_client_certificate(context: ssl.SSLContext, tls: TLSConfig, prefix: str) -> None:
    assert tls.certfile is not None
    key_setting = f"{prefix}ssl_keyfile" if tls.keyfile else f"{prefix}ssl_certfile"
    key_path = tls.keyfile or tls.certfile
    pass_phrase = _PassPhrase(tls)
    try:
        context.load_cert_chain(tls.certfile, tls.keyfile, password=pass_phrase)
    except _EncryptedKey:
        _fail(
            key_setting,
            key_path,
            f"holds an encrypted private key and '{prefix}ssl_password' is not set (set it to "
            "the key's pass phrase, or decrypt the key, e.g. openssl pkey -in encrypted.key "
            "-out plain.key, and keep it readable only by the application)",
        )
    except ssl.SSLError as err:
        if pass_phrase.asked and err.reason != "KEY_VALUES_MISMATCH":
            raise ConfigurationError(  # the pass phrase stays out: neither echoed nor chained
                f"Invalid TLS setting '{prefix}ssl_password': it does not decrypt the "
                f"private key in {key_path!r} (set it to that key's pass phrase)."
            ) from None
        settings, files = f"'{prefix}ssl_certfile'", repr(tls.certfile)
        if tls.keyfile:
            settings, files = f"{settings}/'{key_setting}'", f"{files} and {tls.keyfile!r}"
        raise ConfigurationError(
            f"Invalid TLS setting {settings}: {files} must hold a PEM client certificate and "
            f"its matching private key ({err})."
        ) from None


def _fail(setting: str, path: str | None, problem: str) -> NoReturn:
    raise ConfigurationError(f"Invalid TLS setting {setting!r}: {path!r} {problem}.") from None
