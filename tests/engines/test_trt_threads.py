"""One TrtRunner shared by 8 threads (issue 12, finding 4), through the fake CUDA and TensorRT runtimes:
every run gives the serial result, bit for bit (the runner's context, staging buffers and captured graphs
are shared, so runs take turns)."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fake_cuda import PLAN_MAGIC, FakeCudart, FakeTensorRT

from depthrt.backends import trt as trt_backend

META = {"plan": {"profiles": {"pixel_values": {"min": [1, 3, 14, 14], "opt": [1, 3, 28, 28],
                                                "max": [4, 3, 70, 70]}}}}
SHAPES = [(1, 3, 28, 42), (1, 3, 14, 56), (2, 3, 28, 28), (1, 3, 42, 14)]


@pytest.fixture
def runner(monkeypatch, tmp_path):
    cuda = FakeCudart()
    trt = FakeTensorRT(cuda)
    monkeypatch.setattr(trt_backend, "_cudart", lambda: cuda)
    monkeypatch.setattr(trt_backend, "load_runtime", lambda name: trt)
    plan = tmp_path / "model.plan"
    plan.write_bytes(PLAN_MAGIC + b"engine")
    return trt_backend.TrtRunner(plan, META, "trt", "depthrt build B")


def test_one_trt_runner_shared_by_8_threads_gives_the_serial_results(runner):
    rng = np.random.default_rng(0)
    # 8 threads x 20 runs, each on its own input (a stale buffer would hold another run's numbers)
    work = [[rng.standard_normal(SHAPES[(t + k) % len(SHAPES)]).astype(np.float32) for k in range(20)]
            for t in range(8)]

    inside, most = [0], [0]  # runs inside the runner at the same moment: the contract is one
    real = runner._run_locked

    def counted(feeds):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0)  # give the other threads the GIL right here: without the lock, one would come in
        try:
            return real(feeds)
        finally:
            inside[0] -= 1

    runner._run_locked = counted

    def thread(t: int):
        return [runner.run({"pixel_values": x})["predicted_depth"] for x in work[t]]

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: a shared buffer used without the lock shows
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(thread, range(8)))
    finally:
        sys.setswitchinterval(interval)
    assert most[0] == 1
    # the serial results after (first runs of each shape, before their graphs are captured, are the racy ones)
    serial = [[runner.run({"pixel_values": x})["predicted_depth"] for x in xs] for xs in work]
    for t in range(8):
        for k in range(20):
            assert np.array_equal(results[t][k], serial[t][k]), f"thread {t}, run {k} differs from its serial result"
