"""Scale-out: where the run's workers and monitors run (this host, or Ray actors over a cluster),
the servers they drive (one, or a weighted fleet), placement beside a server, and the CURVE keys
that guard telemetry once it leaves the host.

Nothing here imports Ray: `engine.cluster.backend.make_backend` imports `ray_backend` only when
`[cluster] backend = "ray"`.
"""

from .keys import ClientKeys, RunKeys, ServerKeys, generate_run_keys, leaves_host
from .placement import NodeInfo, Placement, PlacementError, server_node, uses_shared_memory, worker_placement
from .targets import Target, TargetInfo, fleet, split_workers

__all__ = ["ClientKeys", "NodeInfo", "Placement", "PlacementError", "RunKeys", "ServerKeys", "Target", "TargetInfo",
           "fleet", "generate_run_keys", "leaves_host", "server_node", "split_workers", "uses_shared_memory",
           "worker_placement"]
