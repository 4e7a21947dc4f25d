"""The detector parameters a run uses: its profile's defaults (long or smoke, DETECTION.md §3)
with the config's overrides applied, resolved once, picklable for the aggregator process."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from . import drift, leak, stall
from .discrete import DiscreteParams
from .drift import DriftParams
from .leak import LeakParams
from .stall import StallParams


@dataclass(frozen=True)
class DetectorSettings:
    enabled: tuple[str, ...]
    fatal: tuple[str, ...]
    window_s: float
    sample_interval_s: float
    leak: LeakParams
    drift: DriftParams
    stall: StallParams
    drift_min_requests: int
    discrete: DiscreteParams = dataclasses.field(default_factory=DiscreteParams)

    def echo(self) -> dict[str, Any]:
        """Every value that applies, for the run's record and each verdict's context."""
        return dataclasses.asdict(self)


_PROFILES = {
    "long": {"window_s": 60.0, "sample_interval_s": 5.0, "leak": leak.LONG, "drift": drift.LONG, "stall": stall.LONG,
             "drift_min_requests": 100, "discrete": DiscreteParams()},
    "smoke": {"window_s": 10.0, "sample_interval_s": 1.0, "leak": leak.SMOKE, "drift": drift.SMOKE,
              "stall": stall.SMOKE, "drift_min_requests": 20, "discrete": DiscreteParams(bin_s=10.0, warmup_s=60.0)},
}


def resolve_settings(section: Any, sequence_deadline_s: float = 0.0) -> DetectorSettings:
    """`section`: the config's [detectors] (DetectorsSection)."""
    base = _PROFILES[section.profile]
    window = section.window or base["window_s"]
    interval = section.sample_interval or base["sample_interval_s"]
    leak_p: LeakParams = base["leak"]
    drift_p: DriftParams = base["drift"]
    stall_p: StallParams = dataclasses.replace(base["stall"], sequence_deadline_s=sequence_deadline_s)
    discrete_p: DiscreteParams = base["discrete"]
    if section.warmup is not None:
        discrete_p = dataclasses.replace(discrete_p, warmup_s=section.warmup)
        leak_p = dataclasses.replace(leak_p, warmup_s=section.warmup, warmup_fraction=0.0)
        drift_p = dataclasses.replace(drift_p, warmup_windows=math.ceil(section.warmup / window))
    if section.leak_gate is not None:
        leak_p = dataclasses.replace(leak_p, growth_gate_mib_h=section.leak_gate)
    if section.leak_min_data is not None:
        # At least 12 medians over the minimum data, each of at least two samples.
        leak_p = dataclasses.replace(leak_p, growth_min_data_s=section.leak_min_data,
                                     bin_s=max(2 * interval, min(leak_p.bin_s, section.leak_min_data / 12)))
    # Evaluate growth at least once per window, so a short window gives a quick alarm.
    leak_p = dataclasses.replace(leak_p, growth_every_s=min(leak_p.growth_every_s, window))
    if section.stall_floor is not None:
        stall_p = dataclasses.replace(stall_p, floor_s=section.stall_floor)
    return DetectorSettings(
        enabled=tuple(section.enabled), fatal=tuple(section.fatal), window_s=window, sample_interval_s=interval,
        leak=leak_p, drift=drift_p, stall=stall_p,
        drift_min_requests=section.drift_min_requests or base["drift_min_requests"], discrete=discrete_p,
    )
