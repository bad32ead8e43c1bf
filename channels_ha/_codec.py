"""How a message travels: the serialized body, optionally encrypted, inside an envelope.

The envelope names the sender and its sequence number (so receivers can drop the duplicate a
retry may create) and the local channels the body is for (so one copy per process serves a
whole group). It starts with the expiry time as 13 ASCII digits (ms), which the PUSH script
reads: the layer refuses an ``expiry`` that would overflow them (see MAX_EXPIRY_S).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol

import msgpack

from .exceptions import ConfigurationError, MalformedElement

_EXPIRY_DIGITS = 13


class _Crypter(Protocol):
    def encrypt(self, data: bytes) -> bytes: ...

    def decrypt(self, token: bytes, ttl: int | None = None) -> bytes: ...


class Envelope(NamedTuple):
    """A decoded element: who sent it, its sequence number, where it goes, what it carries.

    A named tuple, not a frozen dataclass: one is made per delivered message, and a frozen
    dataclass's ``__init__`` (five ``object.__setattr__`` calls) cost ~1 µs of it."""

    expires_ms: int
    sender: str
    seq: int
    targets: str | list[str]
    body: bytes


class MessageCodec:
    """Serializes message dicts (msgpack or JSON), optionally with Fernet encryption."""

    def __init__(
        self,
        serializer_format: str,
        symmetric_encryption_keys: Iterable[str | bytes | bytearray] | None,
        expiry_s: float,
    ) -> None:
        if serializer_format not in ("msgpack", "json"):
            raise ConfigurationError(
                "Channel layer option 'serializer_format' must be 'msgpack' or 'json' "
                f"(got {serializer_format!r})."
            )
        self._json = serializer_format == "json"
        self._crypter = _make_crypter(symmetric_encryption_keys)
        self._decrypt_ttl_s = int(expiry_s) + 10

    def dumps(self, message: dict[str, Any]) -> bytes:
        data: bytes
        if self._json:
            data = json.dumps(message).encode()
        else:
            data = msgpack.packb(message, use_bin_type=True)
        return self._crypter.encrypt(data) if self._crypter else data

    def dumper(self) -> Callable[[dict[str, Any]], bytes]:
        """:meth:`dumps` for one event loop's sends. msgpack without encryption packs with a
        Packer of its own, reused: ``msgpack.packb`` builds a Packer per call, about half of
        what it costs. A Packer must not be shared between threads (an event loop runs in
        one), and it keeps the buffer of the largest message it packed."""
        if self._json or self._crypter:
            return self.dumps
        pack: Callable[[dict[str, Any]], bytes] = msgpack.Packer(use_bin_type=True).pack
        return pack

    def loader(self) -> Callable[[bytes], dict[str, Any]]:
        """:meth:`loads` for receive(): msgpack without encryption is ``msgpack.unpackb``
        itself, a C function (no Python frame per delivery)."""
        if self._json or self._crypter:
            return self.loads
        unpack: Callable[[bytes], dict[str, Any]] = msgpack.unpackb
        return unpack

    def loads(self, data: bytes) -> dict[str, Any]:
        if self._crypter:
            data = self._crypter.decrypt(data, self._decrypt_ttl_s)
        message: dict[str, Any] = json.loads(data) if self._json else msgpack.unpackb(data)
        return message


def _make_crypter(keys: Iterable[str | bytes | bytearray] | None) -> _Crypter | None:
    """A MultiFernet over the keys: the first encrypts, any decrypts (for key rotation).
    Any iterable will do, a generator included (read once, here), and a key may be str,
    bytes or bytearray, as channels_redis takes them."""
    if not keys:
        return None
    if isinstance(keys, str | bytes | bytearray):
        raise ConfigurationError(
            "Channel layer option 'symmetric_encryption_keys' must be a list of keys, "
            "not a single string."
        )
    keys = list(keys)
    if not keys:  # a generator, say, that yielded nothing: channels_redis raises there too
        raise ConfigurationError(
            "Channel layer option 'symmetric_encryption_keys' yielded no key; expected at "
            "least one key, or an empty list (or None) for no encryption."
        )
    try:
        from cryptography.fernet import Fernet, MultiFernet
    except ImportError as err:
        raise ConfigurationError(
            "Channel layer option 'symmetric_encryption_keys' needs the 'cryptography' "
            "package: pip install 'channels-ha[cryptography]'."
        ) from err
    for index, key in enumerate(keys):
        if not isinstance(key, str | bytes | bytearray):
            raise ConfigurationError(
                f"Channel layer option 'symmetric_encryption_keys[{index}]' must be a string "
                f"or bytes (got {type(key).__name__})."
            )
    fernets = [Fernet(_fernet_key(key)) for key in keys]
    crypter: _Crypter = MultiFernet(fernets)
    return crypter


def _fernet_key(key: str | bytes | bytearray) -> bytes:
    raw = key.encode() if isinstance(key, str) else bytes(key)
    return base64.urlsafe_b64encode(hashlib.sha256(raw).digest())


def encode_element(
    expires_ms: int, sender: str, seq: int, targets: str | list[str], body: bytes
) -> bytes:
    """One list element, as the PUSH script stores it."""
    packed: bytes = msgpack.packb((sender, seq, targets, body), use_bin_type=True)
    return b"%013d" % expires_ms + packed


ElementEncoder = Callable[[int, str, int, "str | list[str]", bytes], bytes]


def element_encoder() -> ElementEncoder:
    """:func:`encode_element` with a Packer of its own, for one event loop (see
    :meth:`MessageCodec.dumper`)."""
    pack = msgpack.Packer(use_bin_type=True).pack

    def encode(
        expires_ms: int, sender: str, seq: int, targets: str | list[str], body: bytes
    ) -> bytes:
        packed: bytes = pack((sender, seq, targets, body))
        return b"%013d" % expires_ms + packed

    return encode


def expires_of(element: bytes) -> int:
    """When an element of ours expires (ms), without decoding the rest."""
    return int(element[:_EXPIRY_DIGITS])


def decode_element(element: bytes) -> Envelope:
    """The inverse of :func:`encode_element`.

    Raises MalformedElement for anything else: the layer's lists are plain Redis keys, which an
    operator, a script or another program can write to, and such an element must not stop
    the reader that popped it.
    """
    try:
        expires_ms = int(element[:_EXPIRY_DIGITS])
        sender, seq, targets, body = msgpack.unpackb(memoryview(element)[_EXPIRY_DIGITS:])
    except (ValueError, TypeError, msgpack.UnpackException) as err:
        # The cause's text would quote the element, which may hold anybody's data.
        raise MalformedElement(f"not a channels-ha list element ({type(err).__name__})") from None
    if not (
        isinstance(sender, str)
        and isinstance(seq, int)
        and isinstance(body, bytes)
        and (isinstance(targets, str) or _all_str(targets))
    ):
        raise MalformedElement("not a channels-ha list element: unexpected field types")
    return Envelope(expires_ms, sender, seq, targets, body)


def _all_str(values: object) -> bool:
    # A list comprehension rather than all(generator): this runs for every popped element,
    # whose targets are up to one per channel of the process.
    return isinstance(values, list) and not [v for v in values if type(v) is not str]
