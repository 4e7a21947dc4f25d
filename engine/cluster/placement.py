"""Where a worker or a monitor may run. Pure rules over a list of nodes, so they are tested
without a cluster; ray_backend turns a Placement into Ray scheduling options.

A worker that passes tensors through system or CUDA shared memory must run on the node of the
server it targets (the server maps the same /dev/shm object or CUDA IPC handle). So must the
monitor of a server (it reads /proc of the server and its stubs). A network-only worker runs
anywhere. The server's node is found by a custom resource named after its host (the way to
mark nodes on KubeRay: `rayStartParams: resources: '{"triton-host:10.0.0.5": 1}'`), else by a
node whose address is the server's host.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from engine.server import ServerSetupError

from .targets import TargetInfo

# Asked of a node's custom resource: any positive amount pins the actor, and so small an amount
# never limits how many actors share the node.
PIN_AMOUNT = 0.001


class PlacementError(ServerSetupError):
    """No node of the cluster can host what must run beside a server (a set-up error: exit 2)."""


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    address: str
    resources: Mapping[str, float] = field(default_factory=dict)
    alive: bool = True


@dataclass(frozen=True)
class Placement:
    resource: str = ""  # the node must offer this custom resource
    node_id: str = ""  # or: this very node
    why: str = "network only: any node"

    @property
    def pinned(self) -> bool:
        return bool(self.resource or self.node_id)


def uses_shared_memory(shm_mode: str, load_shm_modes: Iterable[str] = ()) -> bool:
    """True when a worker's tensors (its own, or a [[load]] entry's) travel in shared memory
    ("auto" is CUDA or system: shared memory either way)."""
    return any(mode not in ("", "none") for mode in (shm_mode, *load_shm_modes))


def _addresses(host: str) -> set[str]:
    try:
        return {host, *(info[4][0] for info in socket.getaddrinfo(host, None))}
    except OSError:
        return {host}


def server_node(target: TargetInfo, nodes: Iterable[NodeInfo], resource_prefix: str) -> Placement:
    """The placement that puts an actor on `target`'s node; PlacementError when none is known."""
    nodes = [n for n in nodes if n.alive]
    resource = f"{resource_prefix}{target.host}"
    if any(resource in n.resources for n in nodes):
        return Placement(resource=resource, why=f"beside server {target.name or target.endpoints.http} "
                                                f"(node resource {resource})")
    addresses = _addresses(target.host)
    same = [n for n in nodes if n.address in addresses]
    if len(same) == 1:
        return Placement(node_id=same[0].node_id, why=f"beside server {target.name or target.endpoints.http} "
                                                      f"(node {same[0].address})")
    if len(same) > 1:
        raise PlacementError(f"{len(same)} Ray nodes have address {target.host}: mark the server's node with the "
                             f"custom resource {resource!r} so that shared-memory workers find it")
    raise PlacementError(f"no Ray node runs server {target.name or target.endpoints.http}: none has the custom "
                         f"resource {resource!r} nor the address {target.host}")


def worker_placement(target: TargetInfo, shared_memory: bool, nodes: Iterable[NodeInfo],
                     resource_prefix: str) -> Placement:
    if not shared_memory:
        return Placement()
    return server_node(target, nodes, resource_prefix)
