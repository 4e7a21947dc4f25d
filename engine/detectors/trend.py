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

# Theil-Sen is O(n^2): coarser medians beyond this, so that a multi-day run's leak tests (medians of
# minutes over days) cost the same at every evaluation, however long the run has gone.
MAX_POINTS = 500


@dataclass(frozen=True)
class Trend:
    slope: float  # units of y per unit of x
    low: float  # lower bound of the slope (inflated for autocorrelation)
    high: float
    phi: float  # lag-1 autocorrelation of the residuals
    n: int


def median_bins(x: np.ndarray, y: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Medians of y (and of x) in bins of `width` along x: robust to spikes, fewer points. x is
    ascending. Vectorized (one sort per column): a multi-day series re-binned every 10 minutes
    must not cost a Python loop over its bins."""
    if len(x) == 0:
        return x, y
    keys = np.floor((x - x[0]) / width).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    counts = np.diff(np.r_[starts, len(keys)])
    low, high = starts + (counts - 1) // 2, starts + counts // 2
    sorted_y = y[np.lexsort((y, keys))]  # ascending within each bin; x is ascending already
    return (x[low] + x[high]) / 2.0, (sorted_y[low] + sorted_y[high]) / 2.0


def robust_trend(x: np.ndarray, y: np.ndarray, confidence: float = 0.99) -> Trend:
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(x) > MAX_POINTS:
        x, y = median_bins(x, y, (x[-1] - x[0]) / MAX_POINTS * 1.0001)
    slope, intercept, low, high = stats.theilslopes(y, x, alpha=confidence)
    residuals = y - (intercept + slope * x)
    phi = 0.0
    # Both halves must vary: a series flat but for its last point has a residual std above 0 and
    # a lag series of zero std, and corrcoef then divides by zero (a RuntimeWarning on the run's
    # console, and NaN).
    if len(residuals) > 3 and np.std(residuals[:-1]) > 0 and np.std(residuals[1:]) > 0:
        phi = float(np.clip(np.corrcoef(residuals[:-1], residuals[1:])[0, 1], 0.0, 0.95))
    inflation = np.sqrt((1 + phi) / (1 - phi))
    return Trend(float(slope), float(slope - (slope - low) * inflation), float(slope + (high - slope) * inflation),
                 phi, len(x))
