"""TLS material generated on the fly with ``trustme`` (the ``channels-ha[sandbox]`` extra).

One throwaway CA signs a server certificate valid for 127.0.0.1, localhost and ::1 (used by
every node, also as its client certificate for replication and cluster links) and a client
certificate for tests of mutual TLS.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..exceptions import SandboxError


@dataclass(frozen=True)
class TLSFiles:
    """Paths of the PEM files of one sandbox's TLS setup."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path) -> TLSFiles:
    """Write a fresh CA, server and client certificate under ``directory``."""
    ca = _trustme().CA(organization_name="channels-ha sandbox")
    directory.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(*(directory / name for name in _FILE_NAMES))
    ca.cert_pem.write_to_path(str(files.ca_cert))
    _write_leaf(ca.issue_cert("127.0.0.1", "localhost", "::1"), files.server_cert, files.server_key)
    _write_leaf(ca.issue_cert("client.localhost"), files.client_cert, files.client_key)
    return files


_FILE_NAMES = ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")


def _write_leaf(leaf: Any, cert_path: Path, key_path: Path) -> None:
    for index, blob in enumerate(leaf.cert_chain_pems):
        blob.write_to_path(str(cert_path), append=index > 0)
    leaf.private_key_pem.write_to_path(str(key_path))
    key_path.chmod(0o600)


def _trustme() -> Any:
    """Import trustme late: only TLS sandboxes need it, and it is an optional extra."""
    try:
        return importlib.import_module("trustme")
    except ImportError as err:
        raise SandboxError(
            "TLS sandboxes need the 'trustme' package: pip install 'channels-ha[sandbox]'"
        ) from err
