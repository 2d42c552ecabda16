"""NumPy re-implementation of OpenCV's ``cv2.resize`` for 8-bit images, INTER_AREA and INTER_CUBIC.

Upstream Depth Anything 3 resizes its input with OpenCV; this module reproduces what OpenCV's
CPU code does for ``uint8`` images so that the reference pipeline does not need OpenCV.

* INTER_AREA (shrinking): OpenCV's float32 area tables accumulated in OpenCV's order, and its
  integer-ratio shortcut (block sums; ratio 2 rounds halves up, other ratios half-to-even).
  Bit-exact against opencv-python-headless 4.14 and 5.0 on the cases in the tests.
* INTER_CUBIC: see the note above ``_cubic_coeffs``; off by one on ~1e-5 of the pixels.

Written from the algorithm's description; none of OpenCV's code is reused.
"""

from __future__ import annotations

import math

import numpy as np


def resize(img: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """``cv2.resize(img, size, interpolation=...)`` for a uint8 (H, W) or (H, W, C) array.

    ``size`` is (width, height), as in OpenCV; ``interpolation`` is "area" or "cubic".
    """
    if img.dtype != np.uint8:
        raise TypeError(f"only uint8 images are supported, got {img.dtype}")
    squeeze = img.ndim == 2
    src = img[:, :, None] if squeeze else img
    sh, sw = src.shape[:2]
    dw, dh = int(size[0]), int(size[1])
    if (dw, dh) == (sw, sh):
        out = src.copy()
    elif interpolation == "cubic":
        out = _resize_cubic(src, dw, dh)
    elif interpolation == "area":
        sx = 1.0 / (dw / sw)
        sy = 1.0 / (dh / sh)
        if sx < 1 or sy < 1:
            raise ValueError("area resampling is only implemented for shrinking")
        if _is_int(sx) and _is_int(sy):
            out = _resize_area_int(src, int(round(sx)), int(round(sy)), dw, dh)
        else:
            out = _resize_area(src, dw, dh, sx, sy)
    else:
        raise ValueError(f"unknown interpolation {interpolation!r}")
    return out[:, :, 0] if squeeze else out


def _is_int(x: float) -> bool:
    return abs(x - int(round(x))) < np.finfo(np.float64).eps


def _round_half_even(x: np.ndarray) -> np.ndarray:
    return np.rint(x)


# ---------------------------------------------------------------------------------- cubic
#
# OpenCV 4.14 and 5.0 agree with a cubic convolution (A = -0.75) whose source coordinates, taps and
# sums are all carried in double precision and rounded half-to-even at the end, except for about
# one pixel in 10^5 whose exact value lies within ~1e-3 of a half (OpenCV's own arithmetic rounds
# those differently); the 11-bit fixed-point scheme of older OpenCV releases is off on ~3 % of
# pixels and is not what current wheels do.


def _cubic_coeffs(t: np.ndarray) -> np.ndarray:
    a = -0.75
    t1 = t + 1.0
    u = 1.0 - t
    c0 = ((a * t1 - 5.0 * a) * t1 + 8.0 * a) * t1 - 4.0 * a
    c1 = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    c2 = ((a + 2.0) * u - (a + 3.0)) * u * u + 1.0
    c3 = 1.0 - c0 - c1 - c2
    return np.stack([c0, c1, c2, c3], axis=-1)


def _cubic_taps(ssize: int, dsize: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (dsize, 4), clamped to the border (replicate), and weights (dsize, 4)."""
    scale = 1.0 / (dsize / ssize)
    pos = (np.arange(dsize, dtype=np.float64) + 0.5) * scale - 0.5
    base = np.floor(pos)
    weights = _cubic_coeffs(pos - base)
    idx = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :], 0, ssize - 1)
    return idx, weights


def _resize_cubic(src: np.ndarray, dw: int, dh: int) -> np.ndarray:
    sh, sw, _ = src.shape
    xi, xw = _cubic_taps(sw, dw)
    yi, yw = _cubic_taps(sh, dh)
    s = src.astype(np.float64)
    rows = sum(s[:, xi[:, k], :] * xw[None, :, k, None] for k in range(4))  # (sh, dw, cn)
    out = sum(rows[yi[:, k]] * yw[:, k, None, None] for k in range(4))  # (dh, dw, cn)
    return np.clip(_round_half_even(out), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------- area


def _area_table(ssize: int, dsize: int, scale: float) -> list[list[tuple[int, float]]]:
    """For each output index, its (source index, float32 weight) taps in OpenCV's order."""
    table = []
    for d in range(dsize):
        f1 = d * scale
        f2 = f1 + scale
        cell = min(scale, ssize - f1)
        s1 = math.ceil(f1)
        s2 = math.floor(f2)
        s2 = min(s2, ssize - 1)
        s1 = min(s1, s2)
        taps = []
        if s1 - f1 > 1e-3:
            taps.append((s1 - 1, float(np.float32((s1 - f1) / cell))))
        for s in range(s1, s2):
            taps.append((s, float(np.float32(1.0 / cell))))
        if f2 - s2 > 1e-3:
            taps.append((s2, float(np.float32(min(min(f2 - s2, 1.0), cell) / cell))))
        table.append(taps)
    return table


def _apply_taps_h(rows: np.ndarray, table: list[list[tuple[int, float]]]) -> np.ndarray:
    """float32 horizontal sums, accumulated tap by tap in table order: (h, dw, cn)."""
    dw = len(table)
    n = max(len(t) for t in table)
    out = np.zeros((rows.shape[0], dw, rows.shape[2]), dtype=np.float32)
    for k in range(n):
        cols = np.array([t[k][0] if k < len(t) else 0 for t in table])
        w = np.array([t[k][1] if k < len(t) else 0.0 for t in table], dtype=np.float32)
        has = np.array([k < len(t) for t in table])
        term = (rows[:, cols, :].astype(np.float32) * w[None, :, None]).astype(np.float32)
        out = np.where(has[None, :, None], out + term, out).astype(np.float32)
    return out


def _resize_area(src: np.ndarray, dw: int, dh: int, sx: float, sy: float) -> np.ndarray:
    sh, sw, cn = src.shape
    xtab = _area_table(sw, dw, sx)
    ytab = _area_table(sh, dh, sy)
    needed = sorted({s for taps in ytab for s, _ in taps})
    hsum = np.zeros((sh, dw, cn), dtype=np.float32)
    hsum[needed] = _apply_taps_h(src[needed], xtab)
    out = np.empty((dh, dw, cn), dtype=np.uint8)
    for y, taps in enumerate(ytab):
        acc = None
        for s, beta in taps:
            term = (np.float32(beta) * hsum[s]).astype(np.float32)
            acc = term if acc is None else (acc + term).astype(np.float32)
        out[y] = np.clip(_round_half_even(acc), 0, 255).astype(np.uint8)
    return out


def _resize_area_int(src: np.ndarray, fx: int, fy: int, dw: int, dh: int) -> np.ndarray:
    """OpenCV's integer-ratio area path: block means."""
    cn = src.shape[2]
    blocks = src[: dh * fy, : dw * fx].astype(np.int64).reshape(dh, fy, dw, fx, cn)
    total = blocks.sum(axis=(1, 3))
    if fx == 2 and fy == 2:
        return ((total + 2) >> 2).astype(np.uint8)  # rounds halves up
    mean = total.astype(np.float32) * np.float32(1.0 / (fx * fy))
    return np.clip(_round_half_even(mean), 0, 255).astype(np.uint8)
