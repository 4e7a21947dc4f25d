"""Start the tritonserver bundled in nvidia-pytriton (or a given binary), or attach to a running one."""

from ._attach import AttachedServer, attach_server, endpoints_from_urls
from ._bundled import BundledTriton, ServerSetupError, locate_bundled
from ._handle import ServerEndpoints, StubProcess, find_stub_processes
from ._process import LaunchedServer, LaunchOptions, launch_server

__all__ = [
    "AttachedServer",
    "BundledTriton",
    "LaunchOptions",
    "LaunchedServer",
    "ServerEndpoints",
    "ServerSetupError",
    "StubProcess",
    "attach_server",
    "endpoints_from_urls",
    "find_stub_processes",
    "launch_server",
    "locate_bundled",
]
