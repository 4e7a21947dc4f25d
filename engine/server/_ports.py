"""Free loopback ports for a server the engine launches."""

from __future__ import annotations

import socket
from contextlib import ExitStack


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that were free a moment ago (the caller retries if one is taken since)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))  # held open until all are picked, so the kernel hands out distinct ports
            ports.append(sock.getsockname()[1])
        return ports
