"""One estimator shared by many threads (issue 12, finding 4): servers and video pipelines call
``predict`` from several threads; every backend gives the serial results, bit for bit."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import depthrt
from depthrt.backends import unavailable

THREADS, PREDICTS = 8, 20
SIZES = [(48, 64), (64, 48), (56, 56), (60, 70)]  # four input shapes after preprocessing
RESOLUTION = 196  # small model inputs (within every size range): 320 predicts stay quick


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


def _work(images, thread: int) -> list[int]:
    """Which image each of a thread's predicts uses: every thread mixes the sizes in its own order."""
    return [(thread + 3 * k) % len(images) for k in range(PREDICTS)]


@pytest.mark.parametrize("backend", ["ort-cpu", "openvino"])
def test_one_estimator_shared_by_8_threads_gives_the_serial_results(tiny_bundle, images, backend):
    if unavailable(backend):
        pytest.skip(unavailable(backend))
    est = depthrt.load(tiny_bundle("depth-anything-v2-small")[0], backend=backend)
    # OpenVINO runs a shape's first prediction through its any-shape model (within 1e-5 of the
    # per-shape one, by design); one warm-up per size, so that serial and threaded runs alike get
    # the per-shape models.
    for image in images:
        est.predict(image, processing_resolution=RESOLUTION)
    serial = [est.predict(image, processing_resolution=RESOLUTION).depth for image in images]

    def thread(t: int) -> list[tuple[int, np.ndarray]]:
        return [(i, est.predict(images[i], processing_resolution=RESOLUTION).depth) for i in _work(images, t)]

    with ThreadPoolExecutor(THREADS) as pool:
        results = [r for rs in pool.map(thread, range(THREADS)) for r in rs]
    assert len(results) == THREADS * PREDICTS
    for i, depth in results:
        assert depth.shape == images[i].shape[:2]
        assert np.array_equal(depth, serial[i]), f"image {i} differs from its serial result"
