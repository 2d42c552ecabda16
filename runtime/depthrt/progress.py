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
