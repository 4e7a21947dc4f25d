"""CURVE keys of a run's telemetry: generated per run, handed to the senders, never written down.

Telemetry that stays on the host (ipc://, tcp:// on loopback) is left as it is. A socket that
listens beyond loopback (workers and monitors on other nodes) is a CURVE server: a sender must
know the server's public key (or the handshake fails) and present the run's client key (or the
aggregator's ZAP handler denies it), so nothing else can inject telemetry or read it on the wire.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass

import zmq
import zmq.auth.thread

from workers.sender import ClientKeys  # what a sender needs lives beside the sender (workers never import engine)


@dataclass(frozen=True)
class ServerKeys:
    """What the aggregator needs: its own keypair and the one client key it lets in."""

    public: bytes
    secret: bytes
    allowed_client: bytes

    def __repr__(self) -> str:
        return f"ServerKeys(public={self.public!r}, secret=..., allowed_client={self.allowed_client!r})"


@dataclass(frozen=True)
class RunKeys:
    server: ServerKeys
    client: ClientKeys


def generate_run_keys() -> RunKeys:
    """Fresh keys for one run (libzmq's own generator: 32 random bytes each, z85-encoded)."""
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    return RunKeys(ServerKeys(server_public, server_secret, client_public),
                   ClientKeys(server_public, client_public, client_secret))


def leaves_host(endpoint: str) -> bool:
    """True for an endpoint reachable from other hosts: tcp on anything but a loopback address."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return False
    host = urllib.parse.urlsplit(f"//{rest}").hostname or ""
    if host in ("localhost",):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name or "*": it may resolve to anything
        return True


class _OneKey:
    def __init__(self, allowed: bytes) -> None:
        self.allowed = allowed

    def callback(self, domain: str, key: bytes) -> bool:
        return key == self.allowed


def secure_server(socket: zmq.Socket, keys: ServerKeys, context: zmq.Context) -> zmq.auth.thread.ThreadAuthenticator:
    """Make `socket` a CURVE server that accepts only the run's client key (before bind). The
    returned authenticator (a ZAP thread of this process) must be stopped when the socket closes."""
    auth = zmq.auth.thread.ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve_callback("*", credentials_provider=_OneKey(keys.allowed_client))
    socket.curve_server = True
    socket.curve_publickey = keys.public
    socket.curve_secretkey = keys.secret
    return auth
