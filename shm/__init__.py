"""System and CUDA shared memory for Triton inputs and outputs, usable on its own.

    import tritonclient.grpc as grpcclient
    from shm import ShmPool

    client = grpcclient.InferenceServerClient("127.0.0.1:8001")
    with ShmPool(client, run_id="20261124-223501-ab12", worker_id=0, mode="auto") as pool:
        x = pool.input_slot(data)                    # written into shared memory once
        y = pool.output_slot(x.byte_size)
        client.infer("identity_fp32", [pool.infer_input("INPUT0", x)],
                     outputs=[pool.requested_output("OUTPUT0", y)])
        answer = pool.read(y, data.dtype, data.shape)  # a zero-copy view (system memory)

Regions are named `tee_<run id>_w<worker>_<n>`: `worker_region_prefix`, `server_region_prefix` and
their like build every name the project gives a shared-memory object, `is_worker_region` and
`is_server_region` recognise them, and `cleanup(run_id, client)` removes a crashed run's leftovers
from the server and /dev/shm. Server errors about shared memory come back as
`ShmError` subclasses carrying the server's text (`classify_server_error` maps an infer error).
"""

from ._cleanup import CleanupReport, cleanup, cleanup_all_runs
from ._cuda import CudaRegion
from ._errors import (
    CudaError,
    CudaUnavailable,
    KeyAlreadyRegistered,
    RegionAlreadyRegistered,
    RegionBoundsError,
    RegionKeyError,
    RegionNotRegistered,
    RegistrationRefused,
    ShmError,
    classify_server_error,
)
from ._naming import (
    RegionName,
    belongs_to_run,
    host_region_name,
    is_server_region,
    is_worker_region,
    parse_region_name,
    region_name,
    run_region_prefixes,
    server_region_prefix,
    standalone_server_region_prefix,
    worker_region_prefix,
)
from ._pool import ShmPool, Slot, resolve_mode
from ._registration import (
    SYSTEM,
    RegisteredRegion,
    register_cuda,
    register_system,
    registered_regions,
    unregister,
)
from ._system import SystemRegion
from .gpu import gpu_count, gpu_unavailable_reason

__all__ = [
    "CleanupReport",
    "CudaError",
    "CudaRegion",
    "CudaUnavailable",
    "KeyAlreadyRegistered",
    "RegionAlreadyRegistered",
    "SYSTEM",
    "host_region_name",
    "RegionBoundsError",
    "RegionKeyError",
    "RegionName",
    "RegionNotRegistered",
    "RegisteredRegion",
    "RegistrationRefused",
    "ShmError",
    "ShmPool",
    "Slot",
    "SystemRegion",
    "belongs_to_run",
    "classify_server_error",
    "cleanup",
    "cleanup_all_runs",
    "gpu_count",
    "gpu_unavailable_reason",
    "is_server_region",
    "is_worker_region",
    "parse_region_name",
    "region_name",
    "register_cuda",
    "register_system",
    "registered_regions",
    "resolve_mode",
    "run_region_prefixes",
    "server_region_prefix",
    "standalone_server_region_prefix",
    "unregister",
    "worker_region_prefix",
]
