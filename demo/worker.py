"""One ASGI worker process: uvicorn serving ``demo.asgi`` on a socket the launcher bound.

The launcher binds one ``SO_REUSEPORT`` socket per worker on the same port, so the kernel
spreads new connections across the workers, and a worker that dies takes its socket with it
instead of leaving connections queued where nobody accepts them. The worker writes one line
to ``--ready-fd`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import os
import socket

import uvicorn

GRACEFUL_SHUTDOWN_S = 2
# uvicorn's default event loop ("auto": uvloop when installed); DEMO_ASGI_LOOP=asyncio picks
# the standard library's.
LOOP = os.environ.get("DEMO_ASGI_LOOP", "auto")


class _Server(uvicorn.Server):
    """A uvicorn server that tells the launcher when it is ready."""

    def __init__(self, config: uvicorn.Config, ready_fd: int) -> None:
        super().__init__(config)
        self._ready_fd = ready_fd

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            os.write(self._ready_fd, b"ready\n")
        os.close(self._ready_fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="the listening socket")
    parser.add_argument("--ready-fd", type=int, required=True, help="where to say 'ready'")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
    config = uvicorn.Config(
        "demo.asgi:application",
        loop=LOOP,
        lifespan="on",  # its shutdown closes the channel layer (demo/asgi.py)
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    _Server(config, args.ready_fd).run(sockets=[socket.socket(fileno=args.fd)])


if __name__ == "__main__":
    main()
