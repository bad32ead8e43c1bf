"""Reading raw Redis replies (RESP2, decoded) without trusting their shape."""

from __future__ import annotations

from typing import Any


def failed(reply: Any) -> bool:
    """Whether a call failed (the drivers hand failures over as exception instances)."""
    return isinstance(reply, BaseException)


def pairs(reply: Any) -> dict[str, str]:
    """A map reply (a dict, or a flat ``[key, value, ...]`` list) as a dict of strings."""
    if isinstance(reply, dict):
        return {str(key): str(value) for key, value in reply.items()}
    if isinstance(reply, list):
        return {str(key): str(value) for key, value in zip(reply[::2], reply[1::2], strict=False)}
    return {}


def records(reply: Any) -> list[dict[str, str]]:
    """A list of flat pair lists (``SENTINEL REPLICAS``) as a list of dicts."""
    return [pairs(item) for item in reply] if isinstance(reply, (list, tuple)) else []


def address(reply: Any) -> tuple[str, int] | None:
    """An ``[ip, port]`` reply (``GET-MASTER-ADDR-BY-NAME``) as a tuple, or ``None``."""
    if isinstance(reply, (list, tuple)) and len(reply) == 2:
        return str(reply[0]), int(reply[1])
    return None


def role(reply: Any) -> tuple[str, Any]:
    """``ROLE`` as ``(role, rest)``; ``("unreachable", error)`` for a failed call."""
    if isinstance(reply, (list, tuple)) and reply:
        return str(reply[0]), reply[1:]
    return "unreachable", reply
