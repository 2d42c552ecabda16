"""The engine cache: build once, reuse, lock concurrent builds, never use a half-written plan."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time

import pytest
from fakes import GPU_ENV, FakeResult, fake_builder, fake_bundle  # noqa: F401  (fake_bundle is a fixture)

from depthrt.backends.trt import find_engine
from depthrt.errors import BackendError
from depthrt.manifest import read_manifest
from depthrt_engines.build import build_bundle
from depthrt_engines.config import BuildConfig

CONFIG = BuildConfig(precision="fp16", sizes={"min": (266, 266), "opt": (518, 518), "max": (1036, 1036)})


def _build(bundle, builder=fake_builder, **kw):
    return build_bundle(bundle, CONFIG, builder, environment=GPU_ENV, progress=False, use_timing_cache=False, **kw)


def _find(bundle):
    graph = read_manifest(bundle)["graphs"][0]
    return find_engine(bundle, graph, "trt", "fp16", GPU_ENV.tensorrt_version,
                       (GPU_ENV.gpu_name, GPU_ENV.compute_capability))


def test_build_writes_plan_and_metadata_then_reuses_them(fake_bundle):
    calls = []

    def counting(plan, onnx, cache, progress):
        calls.append(plan.key)
        return fake_builder(plan, onnx, cache, progress)

    (first,) = _build(fake_bundle, counting)
    assert not first.cached and first.path.is_file()
    meta = json.loads(first.path.with_name("model.plan.json").read_text())
    assert meta["plan"]["profiles"]["pixel_values"]["opt"] == [1, 3, 518, 518]
    assert meta["build_args"][:2] == ["--precision", "fp16"]
    (second,) = _build(fake_bundle, counting)
    assert second.cached and len(calls) == 1
    assert _find(fake_bundle)[0] == first.path
    _build(fake_bundle, counting, force=True)
    assert len(calls) == 2


def test_a_replaced_plan_is_rebuilt_not_trusted(fake_bundle):
    (built,) = _build(fake_bundle)
    built.path.write_bytes(b"x" * built.path.stat().st_size)  # same size, other bytes
    (again,) = _build(fake_bundle)
    assert not again.cached and again.path.read_bytes().startswith(b"PLAN:")


def _slow_builder(plan, onnx, cache, progress):
    with open(os.environ["DEPTHRT_TEST_COUNTER"], "a") as fh:
        fh.write("built\n")
    time.sleep(1.0)  # long enough that the other process is waiting on the lock
    return FakeResult(b"PLAN:" + plan.key.encode())


def _build_in_process(bundle, out):
    (built,) = _build(bundle, _slow_builder)
    out.put((str(built.path), built.cached))


@pytest.mark.skipif(sys.platform != "linux", reason="uses fork to start the two builds")
def test_two_concurrent_builds_of_one_key_build_once(fake_bundle, tmp_path, monkeypatch):
    counter = tmp_path / "counter"
    monkeypatch.setenv("DEPTHRT_TEST_COUNTER", str(counter))
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_build_in_process, args=(fake_bundle, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert counter.read_text().count("built") == 1
    assert results[0][0] == results[1][0]
    assert sorted(cached for _, cached in results) == [False, True]


def test_an_interrupted_build_leaves_no_plan_that_would_be_used(fake_bundle):
    def interrupted(plan, onnx, cache, progress):
        raise KeyboardInterrupt  # Ctrl-C in the middle of TensorRT's build

    with pytest.raises(KeyboardInterrupt):
        _build(fake_bundle, interrupted)
    with pytest.raises(BackendError, match="no trt engine .* build one: depthrt build"):
        _find(fake_bundle)


def test_a_killed_build_mid_write_is_ignored_and_cleaned(fake_bundle):
    (built,) = _build(fake_bundle)
    folder = built.path.parent
    # What `kill -9` during the next write can leave: a temporary file, and a plan without metadata.
    (folder / "model.plan.json").unlink()
    (folder / ".model.plan.abc123.tmp").write_bytes(b"half a pl")
    with pytest.raises(BackendError, match="no trt engine"):
        _find(fake_bundle)
    (rebuilt,) = _build(fake_bundle)
    assert not rebuilt.cached and not list(folder.glob(".*.tmp"))
    assert _find(fake_bundle)[0] == rebuilt.path
