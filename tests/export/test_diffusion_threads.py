"""One diffusion estimator shared by several threads (issue 12, finding 4): each thread's predict gives
the serial result bit for bit, and its progress callback hears only its own steps."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from diffusion_bundles import family_maker

pytest.importorskip("diffusers")

THREADS, PREDICTS = 8, 2
PRESET = "lotus-depth-g-v2-1-disparity"  # a noise draw per predict: seeds must not cross threads


@pytest.fixture(scope="module")
def lotus(tmp_path_factory):
    from depthrt_export.diffusion import lotus as lotus_export
    from depthrt_export.diffusion.tiny_lotus import write_tiny_lotus

    make = family_maker(tmp_path_factory.mktemp("lotus-threads"), lotus_export, write_tiny_lotus,
                        {PRESET: "lotus-depth-g"}, lambda ckpt, preset: None)
    return make(PRESET)[1]


def test_one_diffusion_estimator_shared_by_8_threads_gives_the_serial_results(lotus):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40 + 4 * i, 56 - 2 * i, 3), dtype=np.uint8) for i in range(4)]

    def predict(i: int, heard: list | None = None):
        progress = None if heard is None else (lambda done, total: heard.append((done, total)))
        return lotus.predict(images[i % len(images)], processing_resolution=64, seed=i, progress=progress).depth

    serial = {(t, k): predict(t * PREDICTS + k) for t in range(THREADS) for k in range(PREDICTS)}

    def thread(t: int):
        out = []
        for k in range(PREDICTS):
            heard: list = []
            out.append((t, k, predict(t * PREDICTS + k, heard), heard))
        return out

    with ThreadPoolExecutor(THREADS) as pool:
        results = [r for rs in pool.map(thread, range(THREADS)) for r in rs]
    assert len(results) == THREADS * PREDICTS
    for t, k, depth, heard in results:
        assert np.array_equal(depth, serial[t, k]), f"thread {t}, predict {k} differs from its serial result"
        assert heard == [(1, 1)], heard  # one image, one step: its own progress, once
