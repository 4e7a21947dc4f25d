"""Detectors: small units over series, each returning Verdicts with their evidence."""

from .drift import DriftDetector, DriftParams
from .leak import LeakDetector, LeakParams
from .trend import Trend, median_bins, robust_trend
from .verdict import Verdict

__all__ = ["DriftDetector", "DriftParams", "LeakDetector", "LeakParams", "Trend", "Verdict", "median_bins",
           "robust_trend"]
