"""Deterministic synthetic RGB images: for parity checks, benchmarks and tests.

They are smooth scenes with edges and texture (a sky gradient, a ground plane, boxes, noise),
so resampling and model differences show up as they would on photos.
"""

from __future__ import annotations

import numpy as np


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """An HxWx3 uint8 RGB image, the same for the same arguments on every machine."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float64)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float64)[None, :]
    horizon = 0.35 + 0.1 * rng.random()
    sky = np.stack([0.45 + 0.3 * y + 0 * x, 0.6 + 0.25 * y + 0 * x, 0.95 - 0.1 * y + 0 * x], axis=-1)
    depth = np.clip((y - horizon) / (1 - horizon), 1e-3, 1)
    stripes = 0.5 + 0.5 * np.sin(12 * x / depth + 3 * rng.random())
    ground = np.stack([0.35 + 0.3 * stripes * depth, 0.3 + 0.25 * depth + 0 * x, 0.2 + 0.1 * stripes], axis=-1)
    img = np.where((y > horizon)[..., None], ground, sky)
    for _ in range(5):
        cx, cy, s = rng.random(), horizon + (1 - horizon) * rng.random(), 0.05 + 0.15 * rng.random()
        box = (np.abs(x - cx) < s * 0.6) & (y > cy - s) & (y < cy)
        img[box] = rng.random(3) * 0.8 + 0.1
    img += rng.normal(0.0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
