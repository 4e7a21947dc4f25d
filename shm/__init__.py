"""System and CUDA shared memory for Triton inputs and outputs, usable on its own.

    with ShmPool(client, run_id, worker_id, mode="system") as pool:
        tensor, slot = pool.infer_input("INPUT0", data, "FP32")
        out = pool.allocate(data.nbytes)
        client.infer(model, [tensor], outputs=[pool.requested_output("OUTPUT0", out)])
        answer = pool.read(out, np.float32, data.shape)

Regions are named `tee_<run id>_w<worker>_<n>`; `cleanup(run_id, client)` removes a crashed
run's leftovers from the server and /dev/shm.
"""

from ._cleanup import CleanupReport, cleanup, cleanup_all_runs
from ._cuda import CudaRegion
from ._errors import (
    CudaError,
    CudaUnavailable,
    RegionAlreadyRegistered,
    RegionBoundsError,
    RegionKeyError,
    RegionNotRegistered,
    RegistrationRefused,
    ShmError,
    classify,
)
from ._naming import region_name
from ._pool import ShmPool, Slot, resolve_mode
from ._system import SystemRegion
from .gpu import gpu_count, gpu_unavailable_reason

__all__ = [
    "CleanupReport",
    "CudaError",
    "CudaRegion",
    "CudaUnavailable",
    "RegionAlreadyRegistered",
    "RegionBoundsError",
    "RegionKeyError",
    "RegionNotRegistered",
    "RegistrationRefused",
    "ShmError",
    "ShmPool",
    "Slot",
    "SystemRegion",
    "classify",
    "cleanup",
    "cleanup_all_runs",
    "gpu_count",
    "gpu_unavailable_reason",
    "region_name",
    "resolve_mode",
]
