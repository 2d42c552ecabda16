"""The output video: checked before any work, written to a temporary file, published when closed.

The file appears under its name only once it is finalised (complete and playable), by a hard link
that fails if the name was taken meanwhile, so an existing file is never replaced without
``--force``. A run that stops early (Ctrl-C, a stream that drops, an error in a later frame)
still closes and publishes what was written.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

import numpy as np

from ..errors import OutputError
from .opencv import cv2

# Container by suffix -> a FourCC that the FFmpeg inside opencv-python can always encode.
CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}


def check_output(path: str, force: bool, what: str = "--out", suffixes=tuple(CODECS)) -> Path:
    """Refuse a path that cannot be written, before the model is loaded."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{what} '{path}' is a directory; give a file name")
    if suffixes and p.suffix.lower() not in suffixes:
        raise OutputError(f"{what} '{path}': unsupported file type '{p.suffix}'; "
                          f"use one of {', '.join(suffixes)}")
    if p.exists() and not force:
        raise OutputError(f"refusing to overwrite existing file '{path}'; pass --force or choose another {what}")
    directory = p.absolute().parent
    if not directory.is_dir():
        raise OutputError(f"cannot write '{path}': directory '{directory}' does not exist; "
                          f"create it or choose another {what}")
    try:  # os.access alone is wrong for root and read-only mounts: create and remove a probe
        probe = directory / f".depthrt-probe.{secrets.token_hex(6)}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write '{path}': directory '{directory}' is not writable "
                          f"({exc.strerror or exc}); choose another {what}") from None
    return p


def publish(tmp: Path, dest: Path, force: bool) -> None:
    """Move a finished temporary file to ``dest``; never replace a file without ``force``."""
    if force:
        os.replace(tmp, dest)
        return
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise OutputError(f"refusing to overwrite '{dest}', which appeared during the run; "
                          f"the result is kept as '{tmp}'") from None
    except OSError:  # a filesystem without hard links
        if dest.exists():
            raise OutputError(f"refusing to overwrite '{dest}', which appeared during the run; "
                              f"the result is kept as '{tmp}'") from None
        os.replace(tmp, dest)
        return
    tmp.unlink()


class VideoWriter:
    """Writes BGR uint8 frames; opens on the first frame (its size fixes the video's size)."""

    def __init__(self, path: str | os.PathLike, fps: float, force: bool = False):
        self.path = Path(path)
        self.fps = float(fps)
        self.force = force
        self.frames = 0
        self._writer = None
        self._size: tuple[int, int] | None = None
        self._tmp = self.path.absolute().parent / f".{self.path.stem[:100]}.{secrets.token_hex(6)}.tmp{self.path.suffix}"

    def write(self, frame: np.ndarray) -> None:
        cv = cv2()
        h, w = frame.shape[:2]
        if self._writer is None:
            fourcc = cv.VideoWriter_fourcc(*CODECS[self.path.suffix.lower()])
            self._writer = cv.VideoWriter(str(self._tmp), fourcc, self.fps, (w, h))
            if not self._writer.isOpened():
                self._writer = None
                self._discard()
                raise OutputError(f"cannot write video '{self.path}': OpenCV could not open an encoder for "
                                  f"{w}x{h} {self.path.suffix} at {self.fps:g} fps; try another suffix (.avi)")
            self._size = (w, h)
        if (w, h) != self._size:
            raise OutputError(f"frame size changed from {self._size[0]}x{self._size[1]} to {w}x{h} mid-way; "
                              "a video file has one size")
        self._writer.write(np.ascontiguousarray(frame))
        self.frames += 1

    def close(self) -> Path | None:
        """Finalise the file (playable) and give it its name; None when no frame was written."""
        if self._writer is None:
            self._discard()
            return None
        self._writer.release()
        self._writer = None
        if not self._tmp.exists() or self._tmp.stat().st_size == 0:
            self._discard()
            raise OutputError(f"writing '{self.path}' failed: the encoder produced no data "
                              "(disk full or the directory vanished?)")
        publish(self._tmp, self.path, self.force)
        return self.path

    def _discard(self) -> None:
        with contextlib.suppress(OSError):
            self._tmp.unlink()
