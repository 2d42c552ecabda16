"""Progress for long work (export, build, benchmark): one line per step on stderr.

On a terminal a ticker rewrites the line with the elapsed time while the step runs, so a
several-minute ONNX export never looks hung; in logs (not a TTY) only start and end are printed.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time


@contextlib.contextmanager
def step(message: str, stream=None, enabled: bool = True):
    stream = stream or sys.stderr
    if not enabled:
        yield
        return
    start = time.perf_counter()
    tty = hasattr(stream, "isatty") and stream.isatty()
    done = threading.Event()

    def tick():
        while not done.wait(1.0):
            stream.write(f"\r[depthrt] {message} ... {time.perf_counter() - start:.0f}s")
            stream.flush()

    stream.write(f"[depthrt] {message} ..." + ("" if tty else "\n"))
    stream.flush()
    ticker = threading.Thread(target=tick, daemon=True) if tty else None
    if ticker:
        ticker.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        done.set()
        if ticker:
            ticker.join()
        status = "done" if ok else "failed"
        prefix = "\r" if tty else ""
        stream.write(f"{prefix}[depthrt] {message} ... {status} in {time.perf_counter() - start:.1f}s\n")
        stream.flush()


class Counter:
    """Progress over many items (``depthrt batch``): count of total, failures, items/s and ETA.

    On a terminal the line is rewritten in place (at most twice a second); in logs a line is
    printed every ``every`` seconds, so a day-long job leaves a readable record.
    """

    def __init__(self, total: int, unit: str = "images", stream=None, enabled: bool = True, every: float = 30.0):
        self.total, self.unit, self.enabled, self.every = total, unit, enabled, every
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._last = 0.0

    def line(self, done: int, failed: int = 0) -> str:
        elapsed = time.perf_counter() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        left = self.total - done - failed
        eta = f"ETA {_clock(left / rate)}" if rate > 0 and left > 0 else "ETA --"
        fails = f", {failed} failed" if failed else ""
        return (f"[depthrt] {done + failed}/{self.total} {self.unit}{fails}  {rate:.2f} {self.unit}/s  "
                f"{eta}  elapsed {_clock(elapsed)}")

    def update(self, done: int, failed: int = 0, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < (0.5 if self.tty else self.every):
            return
        self._last = now
        if self.tty:
            self.stream.write("\r" + self.line(done, failed) + "  ")
        else:
            self.stream.write(self.line(done, failed) + "\n")
        self.stream.flush()

    def close(self, done: int, failed: int = 0) -> None:
        """The final line (on a terminal, ends the rewritten one)."""
        self.update(done, failed, force=True)
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
