"""Video run statistics stay exact for short runs and bounded in memory for long ones (the soak)."""

from __future__ import annotations

import numpy as np

from depthrt.video.stats import RECENT, RunStats, Series


def test_short_runs_are_summarised_exactly():
    values = np.random.default_rng(1).gamma(2.0, 0.01, size=500)
    stats = RunStats()
    for v in values:
        stats.add_stage("inference", float(v))
    got = stats.summary()["latency_ms"]["inference"]
    ms = values * 1000
    assert got == {"median": round(float(np.median(ms)), 3), "p90": round(float(np.percentile(ms, 90)), 3),
                   "mean": round(float(ms.mean()), 3), "count": 500}


def test_a_long_run_keeps_bounded_memory_and_exact_counts():
    series = Series(keep=1000)
    values = np.random.default_rng(2).uniform(0.0, 1.0, size=200_000)
    for v in values:
        series.append(float(v))
    assert series.sample().size == 1000 and len(series.recent) == RECENT  # not 200,000 of each
    assert series.count == 200_000 and np.isclose(series.total, values.sum())
    assert list(series.recent) == list(values[-RECENT:])
    # a uniform sample of the whole run, not its first or last values: median of U(0,1) is 0.5
    assert abs(float(np.median(series.sample())) - 0.5) < 0.05


def test_fps_needs_only_the_latest_outputs():
    stats = RunStats()
    stats.begin()
    for _ in range(10 * RECENT):
        stats.add_output(captured_at=0.0)
    assert len(stats.out_times) == RECENT and stats.frames_out == 10 * RECENT
    assert stats.recent_fps() > 0 and stats.fps() > 0
