"""The SSL context of one TLS hop, with errors that name the setting and the file.

Parsing never reads files, so a certificate path is first tried here, when the layer is built:
OpenSSL's own errors name neither the file nor the setting, and for an encrypted key it would
prompt for a pass phrase on the terminal, blocking the process that builds the layer.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, NoReturn

from ._config import _VERIFY_MODES
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from ._config import TLSConfig

__all__ = ["ssl_context"]


class _EncryptedKey(Exception):
    """Raised by the pass phrase callback: a key that needs one is refused, never prompted for."""


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
    try:
        context.load_cert_chain(tls.certfile, tls.keyfile, password=_refuse_pass_phrase)
    except _EncryptedKey:
        _fail(
            key_setting,
            tls.keyfile or tls.certfile,
            "holds an encrypted private key; channels-ha needs it unencrypted (decrypt it, "
            "e.g. openssl pkey -in encrypted.key -out plain.key, and keep it readable only "
            "by the application)",
        )
    except ssl.SSLError as err:
        settings, files = f"'{prefix}ssl_certfile'", repr(tls.certfile)
        if tls.keyfile:
            settings, files = f"{settings}/'{key_setting}'", f"{files} and {tls.keyfile!r}"
        raise ConfigurationError(
            f"Invalid TLS setting {settings}: {files} must hold a PEM client certificate and "
            f"its matching private key ({err})."
        ) from None


def _refuse_pass_phrase() -> NoReturn:
    raise _EncryptedKey


def _fail(setting: str, path: str | None, problem: str) -> NoReturn:
    raise ConfigurationError(f"Invalid TLS setting {setting!r}: {path!r} {problem}.") from None
