"""The pipelined run: capture -> preprocess -> inference -> depth + colour -> output, one thread each.

Stages hand frames on through small bounded channels, so every stage works on a different frame
at the same time and memory stays bounded. A file is processed completely and in order (a full
channel makes the stage before it wait). A live source (camera, stream) never waits: its channel
keeps only the newest frame, and preprocessing takes a frame only when inference is ready for
the next one, so the frame that is processed is always the newest one captured.

Ctrl-C (SIGINT) once: stop capturing and let the frames in flight finish; twice: stop at once.
Either way the output file is finalised (playable) and the statistics are kept.
"""

from __future__ import annotations

import collections
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import DepthrtError
from .overlay import bgr_lut, colorize, compose, draw_text
from .opencv import cv2
from .smoothing import RangeSmoother
from .stats import RunStats

_END = object()  # end of the stream, passed down the channels


@dataclass
class VideoOptions:
    view: str = "depth"
    cmap: str = "turbo"
    smooth: float | None = None
    headless: bool = True
    max_frames: int | None = None
    window: str = "depthrt video"
    label: str = ""  # backend and precision, for the overlay
    progress: bool = True


@dataclass
class RunResult:
    stats: RunStats
    stopped_by: str  # "end of stream", "interrupt", "window", "max frames", "error"
    output: object = None  # the published output path, or None
    error: BaseException | None = None
    warnings: list = field(default_factory=list)


class _Frame:
    __slots__ = ("index", "bgr", "captured_at", "tensor", "meta", "out", "image")

    def __init__(self, index: int, bgr: np.ndarray, captured_at: float):
        self.index, self.bgr, self.captured_at = index, bgr, captured_at
        self.tensor = self.meta = self.out = self.image = None


class Channel:
    """A bounded hand-off between two stages.

    ``drop_stale``: a put never waits; when full the oldest waiting frame is discarded (counted).
    Otherwise a put waits for room. ``halt`` (abort) wakes everyone: gets return the end marker.
    """

    def __init__(self, size: int, halt: threading.Event, drop_stale: bool = False, on_drop=None):
        self.size, self.halt, self.drop_stale, self.on_drop = size, halt, drop_stale, on_drop
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()

    def put(self, item) -> bool:
        with self._cond:
            if self.drop_stale or item is _END:
                while item is not _END and len(self._items) >= self.size:
                    self._items.popleft()
                    if self.on_drop:
                        self.on_drop()
            else:
                while len(self._items) >= self.size and not self.halt.is_set():
                    self._cond.wait(0.1)
                if self.halt.is_set():
                    return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self):
        with self._cond:
            while not self._items and not self.halt.is_set():
                self._cond.wait(0.1)  # a timeout, so the main thread still sees Ctrl-C
            if self.halt.is_set() or not self._items:
                return _END
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def wait_space(self) -> None:
        """Wait until a put would not block (the next stage has taken what it was given)."""
        with self._cond:
            while len(self._items) >= self.size and not self.halt.is_set():
                self._cond.wait(0.1)


class Pipeline:
    """One run of a source through a :class:`~depthrt.video.stages.FrameModel` to a writer and/or window."""

    def __init__(self, model, source, writer=None, options: VideoOptions | None = None):
        self.model, self.source, self.writer = model, source, writer
        self.opt = options or VideoOptions()
        self.stats = RunStats()
        self.stopping = threading.Event()  # graceful: capture no more, finish frames in flight
        self.halt = threading.Event()  # abort: drop frames in flight
        self.errors: list[BaseException] = []
        self.stopped_by = "end of stream"
        live = source.live
        self.ch_pre = Channel(1 if live else 2, self.halt, drop_stale=live, on_drop=self.stats.add_drop)
        self.ch_infer = Channel(1 if live else 2, self.halt)
        self.ch_post = Channel(2, self.halt)
        self.ch_out = Channel(2, self.halt)
        self._lut = bgr_lut(self.opt.cmap)
        self._smoother = RangeSmoother(self.opt.smooth)

    # ------------------------------------------------------------------ stage bodies
    def _capture(self) -> None:
        index = 0
        try:
            while not self.stopping.is_set() and not self.halt.is_set():
                start = time.perf_counter()
                frame = self.source.read()
                if frame is None:
                    break
                now = time.perf_counter()
                self.stats.add_stage("capture", now - start)
                self.stats.frames_in += 1
                if not self.ch_pre.put(_Frame(index, frame, now)):
                    break
                index += 1
                if self.opt.max_frames and index >= self.opt.max_frames:
                    self.stopped_by = "max frames"
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._fail(exc)
        finally:
            self.ch_pre.put(_END)

    def _preprocess(self, f: _Frame) -> _Frame:
        bgr = f.bgr if f.bgr.ndim == 3 else cv2().cvtColor(f.bgr, cv2().COLOR_GRAY2BGR)
        f.bgr = bgr
        f.tensor, f.meta = self.model.preprocess(cv2().cvtColor(bgr, cv2().COLOR_BGR2RGB))
        return f

    def _infer(self, f: _Frame) -> _Frame:
        f.out = self.model.infer(f.tensor[None])[0]
        f.tensor = None
        return f

    def _postprocess(self, f: _Frame) -> _Frame:
        lo, hi = self._smoother(f.out)  # range from the model-size map: same values, fewer pixels
        depth = self.model.to_depth(f.out, f.meta, f.bgr.shape[:2])
        colour = colorize(depth, lo, hi, self.model.kind, self._lut)
        f.image = compose(self.opt.view, f.bgr, colour)
        f.bgr = f.out = None
        return f

    def _stage(self, name: str, body, inp: Channel, out: Channel, demand: bool = False) -> None:
        try:
            while not self.halt.is_set():
                if demand:  # take a frame only once the next stage is ready: it is then the newest
                    out.wait_space()
                item = inp.get()
                if item is _END:
                    break
                start = time.perf_counter()
                item = body(item)
                self.stats.add_stage(name, time.perf_counter() - start)
                if not out.put(item):
                    break
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)
        finally:
            out.put(_END)

    def _fail(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self.stopped_by = "error"
        self.halt.set()

    # ------------------------------------------------------------------ the run
    def run(self) -> RunResult:
        threads = [
            threading.Thread(target=self._capture, name="capture", daemon=True),
            threading.Thread(target=self._stage, args=("preprocess", self._preprocess, self.ch_pre, self.ch_infer,
                                                      self.source.live), name="preprocess", daemon=True),
            threading.Thread(target=self._stage, args=("inference", self._infer, self.ch_infer, self.ch_post),
                             name="inference", daemon=True),
            threading.Thread(target=self._stage, args=("postprocess", self._postprocess, self.ch_post,
                                                       self.ch_out), name="postprocess", daemon=True),
        ]
        restore = self._install_sigint()
        window = None
        published = None
        try:
            self.stats.begin()
            for t in threads:
                t.start()
            try:
                window = self._sink()
            except KeyboardInterrupt:  # SIGINT handler not installed (not the main thread)
                self.stopped_by = "interrupt"
                self.halt.set()
            except BaseException as exc:  # noqa: BLE001 - e.g. the writer failed
                self._fail(exc)
        finally:
            self.halt.set()  # every stage exits now (they are done already on a normal end)
            for t in threads:
                t.join(timeout=10)
            restore()
            if window is not None:
                try:
                    cv2().destroyWindow(window)
                except Exception:  # noqa: BLE001 - closing a window the user already closed
                    pass
            self.source.close()
            if self._progress_shown:
                sys.stderr.write("\n")
            if self.writer is not None:
                try:
                    published = self.writer.close()  # finalised and named even after an error
                except DepthrtError as exc:
                    self.errors.append(exc)
        warnings = [w for w in (self.source.warning,) if w]
        error = self.errors[0] if self.errors else None
        if error is None and self.source.failure:
            self.stopped_by = "stream failure"
        return RunResult(self.stats, self.stopped_by, published, error, warnings)

    _progress_shown = False

    def _sink(self):
        """Main thread: write and/or show each finished frame in order."""
        cv = cv2()
        window = None
        if not self.opt.headless:
            window = self.opt.window
            cv.namedWindow(window, cv.WINDOW_NORMAL)
        tty = self.opt.progress and sys.stderr.isatty()
        last_progress = 0.0
        while True:
            f = self.ch_out.get()
            if f is _END:
                return window
            start = time.perf_counter()
            if self.writer is not None:
                self.writer.write(f.image)
            if window is not None:
                shown = draw_text(f.image.copy() if self.writer is not None else f.image, self._hud())
                cv.imshow(window, shown)
                key = cv.waitKey(1) & 0xFF
                closed = cv.getWindowProperty(window, cv.WND_PROP_VISIBLE) < 1
                if key in (ord("q"), 27) or closed:  # q or Esc, or the window was closed
                    self.stopped_by = "window"
                    self.stopping.set()
            self.stats.add_stage("output", time.perf_counter() - start)
            self.stats.add_output(f.captured_at)
            if tty and start - last_progress > 0.5:
                last_progress = start
                total = f"/{self.source.frame_count}" if self.source.frame_count else ""
                sys.stderr.write(f"\r[depthrt] frame {self.stats.frames_out}{total}  "
                                 f"{self.stats.recent_fps():.1f} FPS  ")
                sys.stderr.flush()
                self._progress_shown = True

    def _hud(self) -> list[str]:
        e2e = list(self.stats.end_to_end_s.recent)[-30:]
        latency = float(np.median(e2e)) * 1000 if e2e else 0.0
        lines = [f"{self.stats.recent_fps():.1f} FPS   latency {latency:.0f} ms", self.opt.label]
        if self.stats.dropped:
            lines.append(f"dropped {self.stats.dropped} stale frame(s)")
        return [line for line in lines if line]

    def _install_sigint(self):
        """Ctrl-C once: finish gracefully; twice: abort. Returns a function that restores the old handler."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def on_sigint(signum, frame):
            self.stopped_by = "interrupt"
            if self.stopping.is_set():
                self.halt.set()
            elif self.opt.progress:
                sys.stderr.write("\n[depthrt] stopping: finishing the frames in flight "
                                 "(Ctrl-C again to stop at once)\n")
            self.stopping.set()

        previous = signal.signal(signal.SIGINT, on_sigint)
        return lambda: signal.signal(signal.SIGINT, previous)
