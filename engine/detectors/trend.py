"""A robust trend with a confidence interval that does not believe autocorrelated noise.

Theil-Sen's slope is robust to outliers, but its interval assumes independent residuals; real
resource series are autocorrelated, which makes a naive interval far too narrow (DETECTION.md:
a naive rule flags every healthy run). The interval is widened by the AR(1) variance factor
sqrt((1 + phi) / (1 - phi)) of the residuals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

MAX_POINTS = 1500  # Theil-Sen is O(n^2): coarser medians beyond this


@dataclass(frozen=True)
class Trend:
    slope: float  # units of y per unit of x
    low: float  # lower bound of the slope (inflated for autocorrelation)
    high: float
    phi: float  # lag-1 autocorrelation of the residuals
    n: int


def median_bins(x: np.ndarray, y: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Medians of y (and of x) in bins of `width` along x: robust to spikes, fewer points."""
    if len(x) == 0:
        return x, y
    keys = np.floor((x - x[0]) / width).astype(np.int64)
    edges = np.flatnonzero(np.diff(keys)) + 1
    xs = np.array([np.median(part) for part in np.split(x, edges)])
    ys = np.array([np.median(part) for part in np.split(y, edges)])
    return xs, ys


def robust_trend(x: np.ndarray, y: np.ndarray, confidence: float = 0.99) -> Trend:
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(x) > MAX_POINTS:
        x, y = median_bins(x, y, (x[-1] - x[0]) / MAX_POINTS * 1.0001)
    slope, intercept, low, high = stats.theilslopes(y, x, alpha=confidence)
    residuals = y - (intercept + slope * x)
    phi = 0.0
    if len(residuals) > 3 and np.std(residuals) > 0:
        phi = float(np.clip(np.corrcoef(residuals[:-1], residuals[1:])[0, 1], 0.0, 0.95))
    inflation = np.sqrt((1 + phi) / (1 - phi))
    return Trend(float(slope), float(slope - (slope - low) * inflation), float(slope + (high - slope) * inflation),
                 phi, len(x))
