"""Display range of a depth map per frame, optionally smoothed over time.

A relative depth model's output has an arbitrary scale and shift that change from frame to
frame, so normalising each frame by its own min and max makes the colours flicker. With
``alpha`` set, the range used for normalisation is an exponential moving average of each
frame's robust range (2nd and 98th percentiles): ``lo = alpha * lo_frame + (1 - alpha) * lo``,
likewise ``hi``. ``alpha`` is the weight of the newest frame: 1 follows every frame (no
smoothing), 0.1 averages over about ten frames. Off (``None``) by default: plain per-frame
min/max, as ``depthrt predict`` colours a single image.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

_LOW, _HIGH = 2.0, 98.0  # robust range: a few outlier pixels must not set the scale
_SAMPLES = 20_000  # percentiles of a strided subsample: stable, and ~20x cheaper than all pixels


def check_alpha(alpha: float | None) -> float | None:
    if alpha is not None and not 0.0 < alpha <= 1.0:
        raise InputError(f"--smooth {alpha}: choose a weight of the newest frame in (0, 1], e.g. 0.2")
    return alpha


class RangeSmoother:
    """``smoother(depth) -> (lo, hi)``: the values that map to the two ends of the colour map."""

    def __init__(self, alpha: float | None = None):
        self.alpha = check_alpha(alpha)
        self.lo: float | None = None
        self.hi: float | None = None

    def __call__(self, depth: np.ndarray) -> tuple[float, float]:
        flat = depth.reshape(-1)
        if self.alpha is None:
            finite = flat[np.isfinite(flat)] if not np.isfinite(flat).all() else flat
            if finite.size == 0:
                return 0.0, 0.0
            return float(finite.min()), float(finite.max())
        step = max(1, flat.size // _SAMPLES)
        sample = flat[::step]
        sample = sample[np.isfinite(sample)]
        if sample.size == 0:
            return (self.lo or 0.0), (self.hi or 0.0)
        lo, hi = (float(v) for v in np.percentile(sample, (_LOW, _HIGH)))
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            a = self.alpha
            self.lo = a * lo + (1.0 - a) * self.lo
            self.hi = a * hi + (1.0 - a) * self.hi
        return self.lo, self.hi
