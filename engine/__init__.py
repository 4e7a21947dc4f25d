"""Endurance, stress and perf-regression engine for NVIDIA Triton Inference Server.

Library use: load a config, start (or attach to) a server, probe its models.

    from engine import load_config, resolve_config_path
    config = load_config(resolve_config_path("smoke"))
"""

from .config import Config, ConfigError, load_config, resolve_config_path
from .server import (
    AttachedServer,
    LaunchedServer,
    LaunchOptions,
    ServerEndpoints,
    ServerSetupError,
    attach_server,
    endpoints_from_urls,
    launch_server,
)

__all__ = [
    "AttachedServer",
    "Config",
    "ConfigError",
    "LaunchOptions",
    "LaunchedServer",
    "ServerEndpoints",
    "ServerSetupError",
    "attach_server",
    "endpoints_from_urls",
    "launch_server",
    "load_config",
    "resolve_config_path",
]
