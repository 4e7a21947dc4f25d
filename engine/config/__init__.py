"""The engine's configuration: TOML in, one frozen, validated `Config` out.

    config = load_config(resolve_config_path("long.toml"))

Errors are `ConfigError`, one line naming the file, the key, the value and what is allowed.
"""

from ._durations import format_duration, parse_duration
from ._load import config_from_dict, config_to_dict, load_config, resolve_config_path, shipped_configs
from ._reader import ConfigError
from ._sections import (
    DEFAULT_WEIGHTS,
    LONG_DURATION_S,
    REFERENCE_DURATION_S,
    SCENARIOS,
    ClusterSection,
    Config,
    DetectorsSection,
    EmailSection,
    InputSection,
    LoadSection,
    PerfSection,
    ReportSection,
    RunSection,
    ScenariosSection,
    ServerSection,
    TargetSection,
    WorkersSection,
)

__all__ = [
    "DEFAULT_WEIGHTS",
    "LONG_DURATION_S",
    "REFERENCE_DURATION_S",
    "SCENARIOS",
    "ClusterSection",
    "Config",
    "ConfigError",
    "DetectorsSection",
    "EmailSection",
    "InputSection",
    "LoadSection",
    "PerfSection",
    "ReportSection",
    "RunSection",
    "ScenariosSection",
    "ServerSection",
    "TargetSection",
    "WorkersSection",
    "config_from_dict",
    "config_to_dict",
    "format_duration",
    "load_config",
    "parse_duration",
    "resolve_config_path",
    "shipped_configs",
]
