"""Video sources: a file (every frame, in order), a camera or a network stream (live: newest frame wins).

``open_source`` checks the source before any model is loaded, so a wrong index or a file that is
not a video fails at once with one line that says what to do.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from .opencv import cv2

log = logging.getLogger("depthrt")

_URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DEFAULT_FPS = 30.0
STALL_S = 2.0  # a live source that delivers nothing for this long has dropped


@dataclass
class Source:
    """An opened OpenCV capture. ``read()`` returns the next BGR frame, or None at the end."""

    cap: object
    name: str
    live: bool
    width: int
    height: int
    fps: float
    frame_count: int | None = None
    frames_read: int = 0
    failure: str | None = None  # why a live source stopped (set when it drops mid-way)
    warning: str | None = None  # e.g. a file that ended early
    _pending: list = field(default_factory=list)

    def read(self) -> np.ndarray | None:
        if self._pending:
            self.frames_read += 1
            return self._pending.pop()
        ok, frame = self.cap.read()
        if ok and frame is not None:
            self.frames_read += 1
            return frame
        if not self.live:
            if self.frame_count and self.frames_read < 0.9 * self.frame_count:
                self.warning = (f"{self.label} ended after {self.frames_read} of its {self.frame_count} frames "
                                "(the file is truncated or damaged); the frames before that were processed")
            return None
        # Live: cameras and streams drop a frame now and then; give up after STALL_S of nothing.
        deadline = time.monotonic() + STALL_S
        while time.monotonic() < deadline:
            ok, frame = self.cap.read()
            if ok and frame is not None:
                self.frames_read += 1
                return frame
            time.sleep(0.05)
        self.failure = (f"{self.label} stopped delivering frames after {self.frames_read} frame(s) "
                        f"(nothing for {STALL_S:.0f} s); check the connection")
        return None

    @property
    def label(self) -> str:
        """The name as messages quote it: 'clip.mp4', camera 0, stream 'rtsp://...'."""
        return self.name if self.name.startswith("camera ") else (
            f"stream '{self.name}'" if self.live else f"'{self.name}'")

    def close(self) -> None:
        try:
            self.cap.release()
        except Exception:  # releasing a dead device must not hide the real outcome
            pass


def _fps(cap, cv) -> float:
    fps = cap.get(cv.CAP_PROP_FPS)
    return float(fps) if fps and math.isfinite(fps) and 1.0 <= fps <= 1000.0 else DEFAULT_FPS


def _first_frame(cap, what: str, hint: str) -> np.ndarray:
    ok, frame = cap.read()
    if not ok or frame is None:
        cap.release()
        raise InputError(f"{what} opened but gave no frame; {hint}")
    if frame.ndim == 2:  # some cameras deliver greyscale
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    return frame


def _finish(cap, cv, name: str, live: bool, frame: np.ndarray, count: int | None) -> Source:
    h, w = frame.shape[:2]
    src = Source(cap=cap, name=name, live=live, width=int(w), height=int(h), fps=_fps(cap, cv),
                 frame_count=count)
    src._pending.append(frame)
    return src


def _opened(cap, message: str):
    """``cap`` if OpenCV opened it; otherwise released, and ``message`` raised as the user's error."""
    if not cap.isOpened():
        cap.release()
        raise InputError(message)
    return cap


def open_camera(index: int) -> Source:
    """Open camera ``index`` (0 is the first). Raises InputError when there is none."""
    if index < 0:
        raise InputError(f"--camera {index}: camera indices start at 0")
    if sys.platform.startswith("linux") and not os.path.exists(f"/dev/video{index}"):
        found = sorted(glob.glob("/dev/video*"))
        have = f"cameras here: {', '.join(found)}" if found else "this machine has no camera devices (/dev/video*)"
        raise InputError(f"no camera at index {index} (/dev/video{index} does not exist; {have}); "
                         "pass --camera N for an existing one, or --input FILE")
    cv = cv2()
    cap = _opened(cv.VideoCapture(index), f"cannot open camera {index}: no such camera, or another program is "
                  "using it; pass --camera N for another one, or --input FILE")
    frame = _first_frame(cap, f"camera {index}", "check that it is not in use and is connected")
    return _finish(cap, cv, f"camera {index}", True, frame, None)


def open_input(path: str) -> Source:
    """Open a video file (processed frame by frame) or a stream URL (live)."""
    cv = cv2()
    if path.lower().startswith(_URL_SCHEMES):
        cap = _opened(cv.VideoCapture(path, cv.CAP_FFMPEG), f"cannot open stream '{path}': unreachable, or not a "
                      "stream OpenCV can read; check the URL")
        frame = _first_frame(cap, f"stream '{path}'", "check that it is sending video")
        return _finish(cap, cv, path, True, frame, None)
    if os.path.isdir(path):
        raise InputError(f"cannot read video '{path}': it is a directory; pass a video file")
    if not os.path.exists(path):
        raise InputError(f"cannot read video '{path}': file not found; check the path")
    if os.path.getsize(path) == 0:
        raise InputError(f"cannot read video '{path}': the file is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise InputError(f"cannot read video '{path}': permission denied")
    if path.lower().endswith(_IMAGE_SUFFIXES):
        raise InputError(f"'{path}' is an image, not a video; use `depthrt predict BUNDLE {path}`")
    cap = _opened(cv.VideoCapture(path, cv.CAP_FFMPEG), f"cannot read video '{path}': not a video file OpenCV can "
                  "decode (corrupt, or an unsupported container/codec); convert it, e.g. to H.264 MP4")
    frame = _first_frame(cap, f"video '{path}'", "the file is damaged or holds no video stream")
    count = int(cap.get(cv.CAP_PROP_FRAME_COUNT) or 0)
    return _finish(cap, cv, path, False, frame, count if count > 0 else None)
