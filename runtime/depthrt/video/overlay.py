"""What a frame looks like on screen or in the output file: colour-mapped depth, views, the live text."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..imageio import DEPTH_KINDS, colormap_lut
from .opencv import cv2

VIEWS = ("depth", "side-by-side", "overlay")
_OVERLAY_WEIGHT = 0.6  # share of the depth colours when blended over the frame


def check_view(view: str) -> str:
    if view not in VIEWS:
        raise InputError(f"--view {view!r}: choose one of {', '.join(VIEWS)}")
    return view


def bgr_lut(cmap: str) -> np.ndarray:
    """The colour map as an OpenCV LUT: (256, 1, 3) uint8 in BGR order."""
    return np.ascontiguousarray(colormap_lut(cmap)[:, ::-1].reshape(256, 1, 3))


def colorize(depth: np.ndarray, lo: float, hi: float, kind: str, lut: np.ndarray) -> np.ndarray:
    """float depth (H, W) -> BGR uint8 (H, W, 3); near is the warm end whatever ``kind`` says."""
    if kind not in DEPTH_KINDS:
        raise InputError(f"unknown depth kind '{kind}'; expected one of {', '.join(DEPTH_KINDS)}")
    cv = cv2()
    span = hi - lo
    scale = 255.0 / span if span > 0 else 0.0
    # Clamp the far end first (convertScaleAbs takes |x|, so out-of-range values would come back
    # bright); the near end saturates at 255. NaN becomes 0, the cold end.
    if kind == "relative_inverse_depth":  # larger = nearer: low values at the cold end
        grey = cv.convertScaleAbs(cv.max(depth, float(lo)), alpha=scale, beta=-lo * scale)
    else:  # larger = farther: flip so near is warm
        grey = cv.convertScaleAbs(cv.min(depth, float(hi)), alpha=-scale, beta=hi * scale)
    return cv.LUT(cv.merge((grey, grey, grey)), lut)


def compose(view: str, frame: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """The picture for ``view`` from the BGR frame and its colour depth (same size)."""
    if view == "depth":
        return colour
    if view == "side-by-side":
        return np.hstack((frame, colour))
    return cv2().addWeighted(frame, 1.0 - _OVERLAY_WEIGHT, colour, _OVERLAY_WEIGHT, 0.0)


def draw_text(image: np.ndarray, lines: list[str]) -> np.ndarray:
    """Lines of text at the top left on a dark box (the window's live overlay); draws in place."""
    cv = cv2()
    font, scale, thick = cv.FONT_HERSHEY_SIMPLEX, 0.5, 1
    sizes = [cv.getTextSize(line, font, scale, thick)[0] for line in lines]
    width = max(w for w, _ in sizes) + 12
    height = sum(h + 8 for _, h in sizes) + 6
    box = image[:height, :width]
    box[:] = (box * 0.35).astype(np.uint8)
    y = 4
    for line, (_, h) in zip(lines, sizes):
        y += h + 8
        cv.putText(image, line, (6, y - 4), font, scale, (255, 255, 255), thick, cv.LINE_AA)
    return image
