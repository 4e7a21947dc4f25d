"""A Config from what a caller has at hand: a Config, a TOML file (or a shipped config's name), or a
plain dict with the TOML's shape; and the same with some sections changed (`make_config`).

Every path goes through the engine's own reader, so a bad value is the same one-line ConfigError
the command line prints, naming the file (or "<config>" for a dict), the key, the value and what
is allowed.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

from engine.config import Config, ConfigError, config_from_dict, config_to_dict, load_config, resolve_config_path

# What `run`, `make_config` and the pytest fixtures accept as a config.
ConfigLike = Union[Config, str, "os.PathLike[str]", Mapping[str, Any]]


def as_config(config: ConfigLike) -> Config:
    """`config` validated into a Config. A str or path names a TOML file; a name with no such file
    here is a shipped config ("smoke", "long", ...). Raises ConfigError."""
    if isinstance(config, Config):
        return config
    if isinstance(config, Mapping):
        return config_from_dict(_plain(config))
    if isinstance(config, (str, os.PathLike)):
        return load_config(resolve_config_path(os.fspath(config)))
    raise TypeError(f"config: expected a Config, a TOML path or a dict, got {type(config).__name__}")


def make_config(base: ConfigLike | None = None, /, **sections: Mapping[str, Any]) -> Config:
    """`base` (default: every default) with the given sections merged in, as TOML tables merge:
    a table's keys replace the base's keys of the same name, the others stay; arrays replace.

        make_config("smoke", run={"duration": "30s"}, models={"models": ["identity_fp32"]})

    A TOML base keeps its file name in error messages and as the base of its relative paths."""
    source: Path | None = None
    if base is None:
        data: dict[str, Any] = {}
    elif isinstance(base, Config):
        source = base.source
        data = _config_data(base)
    elif isinstance(base, Mapping):
        data = _plain(base)
    elif isinstance(base, (str, os.PathLike)):
        source = resolve_config_path(os.fspath(base))
        data = _read_toml(source)
    else:
        raise TypeError(f"base: expected a Config, a TOML path or a dict, got {type(base).__name__}")
    for name, table in sections.items():
        if not isinstance(table, Mapping):
            where = str(source) if source else "<config>"
            raise ConfigError(f"{where}: [{name}] must be a table, got {type(table).__name__}")
    return config_from_dict(_merge(data, _plain(sections)), source=source)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None


def _config_data(config: Config) -> dict[str, Any]:
    """A resolved Config as the dict it reads back from: unset optional values are left out (the
    reader takes an absent key as its default, never a None), and `source` is not a section."""
    data = config_to_dict(config)
    data.pop("source", None)
    return _drop_none(data)


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """Mappings as dicts and tuples as lists, all the way down: what tomllib would have given
    (the caller's own objects are never changed)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
