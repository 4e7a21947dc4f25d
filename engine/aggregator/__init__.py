"""The aggregator: windows of request records, latency histograms, and the process that runs
the detectors and writes the run's store."""

from .histogram import LatencyHistogram
from .windows import WindowFolder, merge_windows

__all__ = ["LatencyHistogram", "WindowFolder", "merge_windows"]
