"""Normal maps from depth maps: the MiDaS normal-map preprocessor ControlNet users know, in numpy.

Depth-only models (MiDaS / DPT, Depth Anything, ZoeDepth, DA3, and the depth variants of Marigold,
Lotus and LBM) get a normal map the way ControlNet's MiDaS annotator makes one (``MidasDetector`` in
lllyasviel's ControlNet, ``MiDaS-NormalMapPreprocessor`` in comfyui_controlnet_aux):

1. ``v``: the depth as "larger = nearer" values in the model's own units: the raw prediction for
   relative inverse depth (MiDaS, Depth Anything: exactly what the annotator differentiates),
   ``1 / d`` for metric depth (disparity, as :func:`depthrt.imageio.to_controlnet` uses), ``-d`` for
   relative depth (larger = farther: Marigold, Lotus, LBM depth).
2. ``x``, ``y``: 3x3 Sobel derivatives of ``v`` along the image's columns and rows (OpenCV's
   ``Sobel(ksize=3)`` with its default mirrored border), ``z = a`` everywhere.
3. Background: where ``v`` min-max normalised to [0, 1] is below ``bg_threshold`` (far pixels),
   ``x = y = 0``, so the background is flat (facing the camera).
4. ``(x, y, z)`` normalised to unit length.

``a`` sets how strongly slopes show: the gradients are in the model's units per pixel at the input's
size, so a larger ``a`` gives a flatter map. The annotator's defaults are ``a = 2 * pi`` and
``bg_threshold`` 0.4 (ControlNet 1.0's normal demo; comfyui_controlnet_aux uses 0.1). Like the
annotator, x grows where the scene comes nearer to the right and y where it comes nearer downwards.
Encode the result as depthrt writes normal maps: :func:`depthrt.imageio.normals_to_rgb`.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InputError

DEFAULT_A = 2.0 * math.pi
DEFAULT_BG_THRESHOLD = 0.4


def _near_is_larger(depth: np.ndarray, kind: str) -> np.ndarray:
    from .imageio import DEPTH_KINDS

    if kind not in DEPTH_KINDS:
        raise InputError(f"normals from depth need a depth map; this output is '{kind}' "
                         f"(expected one of {', '.join(DEPTH_KINDS)})")
    v = depth.astype(np.float64)
    if kind == "metric_depth":
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.where(v > 0, 1.0 / v, 0.0)  # +inf depth -> 0 disparity, invalid -> far
    elif kind == "relative_depth":
        v = -v
    return np.where(np.isfinite(v), v, 0.0)


def sobel(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3x3 Sobel derivatives (d/dx along columns, d/dy along rows) of a 2-D map, with OpenCV's default
    border (mirrored without repeating the edge pixel, numpy's ``reflect``)."""
    if min(values.shape) < 2:  # a 1-pixel side has nothing to mirror: no slope along it
        values = np.pad(values, [(0, 2 - n) if n < 2 else (0, 0) for n in values.shape], mode="edge")
    p = np.pad(values, 1, mode="reflect")
    h, w = values.shape
    rows = p[:-2] + 2.0 * p[1:-1] + p[2:]  # smoothing down the rows, for d/dx
    cols = p[:, :-2] + 2.0 * p[:, 1:-1] + p[:, 2:]  # smoothing along the columns, for d/dy
    return rows[:, 2:] - rows[:, :-2], cols[2:] - cols[:-2]


def normals_from_depth(depth, kind: str, a: float = DEFAULT_A,
                       bg_threshold: float = DEFAULT_BG_THRESHOLD) -> np.ndarray:
    """(H, W, 3) float32 unit normals from an (H, W) depth map of ``kind`` (see the module docstring)."""
    if not (math.isfinite(a) and a > 0):
        raise InputError(f"a must be a positive number (the annotator's default is 2*pi), not {a!r}")
    if not (math.isfinite(bg_threshold) and 0.0 <= bg_threshold <= 1.0):
        raise InputError(f"bg_threshold must be between 0 and 1, not {bg_threshold!r}")
    d = np.asarray(depth)
    if d.ndim != 2 or d.size == 0:
        raise InputError(f"depth map must be 2-D (H, W), got shape {d.shape}")
    v = _near_is_larger(d, kind)
    x, y = sobel(v)
    x, y = x[: d.shape[0], : d.shape[1]], y[: d.shape[0], : d.shape[1]]
    lo, hi = v.min(), v.max()
    scaled = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    background = scaled < bg_threshold
    x[background] = 0.0
    y[background] = 0.0
    normal = np.stack([x, y, np.full_like(x, a)], axis=-1)
    normal /= np.sqrt(np.sum(normal * normal, axis=-1, keepdims=True))
    return normal.astype(np.float32)
