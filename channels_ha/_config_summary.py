"""The configuration's summary as text for a terminal (``channels-ha check``).

The facts come from ``summary_dict()`` (also printed as JSON): passwords are never in them,
only whether one is set.
"""

from __future__ import annotations

from typing import Any


def _hop_text(facts: dict[str, Any]) -> str:
    """``TLS yes (verify required, hostname checked); auth yes (user alice, password)``."""
    tls = "no"
    if facts["tls_options"] is not None:
        options = facts["tls_options"]
        hostname = "hostname checked" if options["check_hostname"] else "hostname not checked"
        tls = f"yes (verify {options['verify']}, {hostname})"
    auth = "no"
    if facts["auth"]:
        user = f"user {facts['username']}" if facts["username"] else "default user"
        auth = f"yes ({user}, {'password set' if facts['password_set'] else 'no password'})"
    return f"TLS {tls}; auth {auth}"


def _seconds_text(facts: dict[str, Any], name: str) -> str:
    default = " (default)" if name in facts["timeouts_defaulted"] else ""
    return f"{facts['timeouts_s'][name]:g} s{default}"


def summary_text(facts: dict[str, Any]) -> str:
    """``summary_dict()`` rendered for a terminal."""
    lines = [f"mode: {facts['mode']}", f"nodes: {', '.join(facts['nodes'])}"]
    if facts["master_name"] is not None:
        lines.append(f"master name: {facts['master_name']}")
    lines += [f"db: {facts['db']}", f"data nodes: {_hop_text(facts['data_nodes'])}"]
    if facts["sentinels"] is not None:
        lines.append(f"sentinels: {_hop_text(facts['sentinels'])}")
    lines.append(
        f"timeouts: socket {_seconds_text(facts, 'socket')}, "
        f"connect {_seconds_text(facts, 'socket_connect')}, "
        f"failover {_seconds_text(facts, 'failover')}"
    )
    return "\n".join(lines)
