"""The host's memory pressure, and the gate that holds large requests back before the kernel has to
choose a victim.

Two readings, each one small read of procfs, so both are taken every monitor sample:

  /proc/meminfo          MemAvailable and MemTotal: what the kernel could hand out without swapping
  /proc/pressure/memory  PSI (kernel >= 4.20, CONFIG_PSI, not booted with psi=0): `some avg10` is the
                         share of the last 10 s in which at least one task waited on memory (reclaim,
                         refaults, swap-in); `full avg10` the share in which every non-idle task did

A kernel without PSI gives no PSI series: absent, never zero. The gate then judges MemAvailable alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..series_names import MEM_AVAILABLE, MEM_TOTAL, PSI_FULL_AVG10, PSI_SOME_AVG10

MEMINFO = "/proc/meminfo"
PSI_MEMORY = "/proc/pressure/memory"
GIB = float(1 << 30)


@dataclass(frozen=True)
class MemoryReading:
    """One look at the host's memory; None where the kernel does not say."""

    available_bytes: float | None
    total_bytes: float | None
    some_avg10: float | None  # percent, 0-100
    full_avg10: float | None  # percent, 0-100

    def series(self) -> dict[str, float]:
        out = {}
        for name, value in ((MEM_AVAILABLE, self.available_bytes), (MEM_TOTAL, self.total_bytes),
                            (PSI_SOME_AVG10, self.some_avg10), (PSI_FULL_AVG10, self.full_avg10)):
            if value is not None:
                out[name] = value
        return out


def parse_meminfo(text: str) -> tuple[float | None, float | None]:
    """(MemAvailable, MemTotal) in bytes from /proc/meminfo's text ("MemAvailable:  24338676 kB")."""
    available = total = None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            available = _kib(line)
        elif line.startswith("MemTotal:"):
            total = _kib(line)
        if available is not None and total is not None:
            break
    return available, total


def _kib(line: str) -> float | None:
    parts = line.split()
    try:
        value = float(parts[1])
    except (IndexError, ValueError):
        return None
    return value * 1024 if len(parts) > 2 and parts[2] == "kB" else value


def parse_psi(text: str) -> dict[str, float]:
    """{"some_avg10": 1.5, "some_avg60": ..., "full_total": ...} from a /proc/pressure file's text:
    `some avg10=1.50 avg60=0.40 avg300=0.10 total=123456` and the same for `full` (total in us)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind not in ("some", "full"):
            continue
        for pair in rest.split():
            key, _, value = pair.partition("=")
            try:
                out[f"{kind}_{key}"] = float(value)
            except ValueError:
                continue
    return out


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:  # absent, or PSI compiled in but disabled (EOPNOTSUPP)
        return None


def read_memory(meminfo_path: str = MEMINFO, psi_path: str = PSI_MEMORY) -> MemoryReading:
    meminfo = _read(meminfo_path)
    available, total = parse_meminfo(meminfo) if meminfo is not None else (None, None)
    psi_text = _read(psi_path)
    psi = parse_psi(psi_text) if psi_text is not None else {}
    return MemoryReading(available, total, psi.get("some_avg10"), psi.get("full_avg10"))


@dataclass(frozen=True)
class GateSettings:
    """When the gate holds large requests back, and when it lets them go again.

    Hold when PSI some avg10 >= 10 %, or MemAvailable < the reserve. A healthy host reads 0-1 %
    (page-cache churn); 10 % means tasks spent a tenth of the last 10 s stalled in reclaim, the
    level at which reclaim is no longer keeping up but far below what the kernel's OOM killer or
    systemd-oomd (60 % over 30 s by default) act on: the engine backs off first.
    The reserve is max(5 % of MemTotal, 1 GiB): the kernel's own watermarks (min_free_kbytes and
    the low/high marks, under 1 % of a large host) leave no room for what is already in flight,
    and the largest request a run sends (the timeout scenario's 1 GiB input) needs about 1 GiB more
    on the server's side while the requests already let through finish.
    Release when PSI some avg10 < 2 % and MemAvailable > 1.5 x the reserve: avg10 decays with a
    10 s time constant, so falling from 10 % to 2 % takes at least ~16 s of calm, and the 0.5 x
    reserve band (>= 512 MiB) is wider than what one large request moves, so letting one through
    does not throw the gate straight back."""

    hold_psi_some: float = 10.0  # percent
    release_psi_some: float = 2.0  # percent
    reserve_fraction: float = 0.05  # of MemTotal
    reserve_min_bytes: float = GIB
    release_factor: float = 1.5  # of the reserve

    def reserve_bytes(self, total_bytes: float | None) -> float:
        return max(self.reserve_fraction * total_bytes, self.reserve_min_bytes) if total_bytes else \
            self.reserve_min_bytes


class PressureGate:
    """Hold (True) or let go (False), with hysteresis, from one reading after another. A reading
    that says nothing (no meminfo, no PSI) keeps the gate where it is."""

    def __init__(self, settings: GateSettings = GateSettings()) -> None:
        self.settings = settings
        self.holding = False
        self.reason = ""  # why it last changed state, for the monitor's event

    def update(self, reading: MemoryReading) -> bool:
        s = self.settings
        reserve = s.reserve_bytes(reading.total_bytes)
        avail, some = reading.available_bytes, reading.some_avg10
        if not self.holding:
            if some is not None and some >= s.hold_psi_some:
                self._change(True, f"PSI memory some avg10 {some:.1f} % >= {s.hold_psi_some:g} %", reading)
            elif avail is not None and avail < reserve:
                self._change(True, f"MemAvailable {avail / GIB:.2f} GiB < reserve {reserve / GIB:.2f} GiB", reading)
        elif (some is not None or avail is not None) and (some is None or some < s.release_psi_some) and (
                avail is None or avail > s.release_factor * reserve):
            self._change(False, f"PSI memory some avg10 below {s.release_psi_some:g} % and MemAvailable above "
                                f"{s.release_factor * reserve / GIB:.2f} GiB", reading)
        return self.holding

    def _change(self, hold: bool, why: str, reading: MemoryReading) -> None:
        self.holding = hold
        figures = []
        if reading.available_bytes is not None:
            figures.append(f"MemAvailable {reading.available_bytes / GIB:.2f} GiB")
        if reading.some_avg10 is not None:
            figures.append(f"PSI some avg10 {reading.some_avg10:.1f} %")
        self.reason = f"{'holding' if hold else 'releasing'} large requests: {why} ({', '.join(figures)})"
