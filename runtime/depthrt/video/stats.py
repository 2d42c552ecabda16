"""Frame counts and latencies of a video run, and the ``--stats`` JSON."""

from __future__ import annotations

import json
import threading
import time
from collections import deque

import numpy as np

STAGES = ("capture", "preprocess", "inference", "postprocess", "output")
RECENT = 64  # values kept in order, for the live overlay's FPS and latency


class Series:
    """The values of one latency over a run, in bounded memory (a stream runs for hours).

    The first ``keep`` values are all kept, so a summary is exact up to there; after that a uniform
    random sample of ``keep`` (reservoir sampling, fixed seed) stands for them, so medians and p90 are
    estimates from 8192 values while count and mean stay exact. The last ``RECENT`` values are kept
    in order. One writer per series (its stage's thread).
    """

    def __init__(self, keep: int = 8192):
        self.count, self.total = 0, 0.0
        self._sample = np.empty(keep, np.float64)
        self._rng = np.random.default_rng(0)
        self.recent: deque[float] = deque(maxlen=RECENT)

    def append(self, value: float) -> None:
        keep = self._sample.size
        if self.count < keep:
            self._sample[self.count] = value
        else:
            slot = int(self._rng.integers(0, self.count + 1))
            if slot < keep:
                self._sample[slot] = value
        self.count += 1
        self.total += value
        self.recent.append(value)

    def sample(self) -> np.ndarray:
        return self._sample[: min(self.count, self._sample.size)]


class RunStats:
    """Collects per-frame stage times (seconds) from the stage threads; summarises them."""

    def __init__(self):
        self.frames_in = 0
        self.frames_out = 0
        self.dropped = 0  # stale live frames replaced by newer ones
        self.stage_s: dict[str, Series] = {s: Series() for s in STAGES}
        self.end_to_end_s = Series()
        self.out_times: deque[float] = deque(maxlen=RECENT)  # perf_counter at the latest outputs, for FPS
        self.start: float | None = None
        self._lock = threading.Lock()

    def begin(self) -> None:
        self.start = time.perf_counter()

    def add_stage(self, stage: str, seconds: float) -> None:
        self.stage_s[stage].append(seconds)  # one writer per stage

    def add_drop(self, n: int = 1) -> None:
        with self._lock:
            self.dropped += n

    def add_output(self, captured_at: float) -> None:
        now = time.perf_counter()
        self.frames_out += 1
        self.out_times.append(now)
        self.end_to_end_s.append(now - captured_at)

    def elapsed(self) -> float:
        if self.start is None:
            return 0.0
        end = self.out_times[-1] if self.out_times else time.perf_counter()
        return max(end - self.start, 1e-9)

    def fps(self) -> float:
        return self.frames_out / self.elapsed() if self.frames_out else 0.0

    def recent_fps(self, window: int = 30) -> float:
        """Output rate over the last ``window`` frames (the live overlay's FPS)."""
        times = list(self.out_times)[-window:]
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / max(times[-1] - times[0], 1e-9)

    def summary(self, **extra) -> dict:
        def dist(values: Series) -> dict:
            if not values.count:
                return {"median": None, "p90": None, "mean": None, "count": 0}
            ms = values.sample() * 1000.0
            return {"median": round(float(np.median(ms)), 3), "p90": round(float(np.percentile(ms, 90)), 3),
                    "mean": round(values.total * 1000.0 / values.count, 3), "count": values.count}

        return {
            **extra,
            "frames": {"in": self.frames_in, "out": self.frames_out,
                       "dropped": max(self.frames_in - self.frames_out, 0), "dropped_stale": self.dropped},
            "fps": round(self.fps(), 3),
            "elapsed_s": round(self.elapsed(), 4),
            "latency_ms": {**{s: dist(v) for s, v in self.stage_s.items()}, "end_to_end": dist(self.end_to_end_s)},
        }


def to_json(summary: dict) -> str:
    return json.dumps(summary, indent=2) + "\n"
