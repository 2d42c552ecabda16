"""The one place video code imports OpenCV: lazily, quietly, with an install hint when missing."""

from __future__ import annotations

import os

from ..errors import BackendError

_INSTALL = "pip install 'depthrt[video]' (or: pip install opencv-python-headless)"


def cv2():
    """Return the ``cv2`` module, or raise BackendError naming the extra to install."""
    # OpenCV's videoio prints WARN lines (e.g. "can't open camera by index") to stderr; every
    # failure is turned into one depthrt error instead, so keep its log quiet unless the user
    # asked for it.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_VIDEOIO_DEBUG", "0")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own lines ("moov atom not found")
    try:
        import cv2 as module
    except ImportError as exc:
        raise BackendError(f"depthrt video needs OpenCV, which is not installed ({exc}): {_INSTALL}") from None
    return module
