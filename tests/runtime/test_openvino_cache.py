"""OpenVINO's compiled-model cache: on by default in a user cache folder, bounded, optional, never fatal."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

pytest.importorskip("openvino")

from depthrt.backends import openvino as ov_backend  # noqa: E402


@pytest.fixture(scope="module")
def graph(tiny_bundle):
    bundle, manifest = tiny_bundle("depth-anything-v2-small")
    return bundle / manifest["graphs"][0]["file"]


def _run(graph, shape=(1, 3, 56, 70), dynamic_first=False):
    """One run in a new runner (a new OpenVINO core, as in a new process); by default straight to the
    per-shape model, the large entries the cache is for."""
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    runner = ov_backend.OpenVinoRunner(graph)
    runner.dynamic_first = dynamic_first
    return runner.run({"pixel_values": x})["predicted_depth"]


def _blobs(folder):
    """OpenVINO's entries (not our markers)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(ov_backend.MARKER_PREFIX))


def _markers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(ov_backend.MARKER_PREFIX))


def test_second_process_reuses_the_compiled_model(graph, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEPTHRT_OPENVINO_CACHE", str(cache))
    first = _run(graph)
    assert len(_blobs(cache)) == 1
    stamp = {name: (cache / name).stat().st_mtime_ns for name in _blobs(cache)}
    second = _run(graph)  # a new runner: a new OpenVINO core, as in a new process
    assert {name: (cache / name).stat().st_mtime_ns for name in _blobs(cache)} == stamp  # read, not rewritten
    np.testing.assert_array_equal(first, second)
    _run(graph, (1, 3, 42, 42))  # another shape: another entry
    assert len(_blobs(cache)) == 2
    _run(graph, (1, 3, 28, 28), dynamic_first=True)  # a new shape: the any-shape model, cached too
    assert len(_blobs(cache)) == 3
    _run(graph, (1, 3, 28, 42), dynamic_first=True)  # another new shape: the same any-shape entry
    assert len(_blobs(cache)) == 3


def test_default_folder_is_under_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv("DEPTHRT_OPENVINO_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ov_backend.cache_dir() == tmp_path / "xdg" / "depthrt" / "openvino"
    assert (tmp_path / "xdg" / "depthrt" / "openvino").is_dir()


def test_off_writes_nothing(graph, tmp_path, monkeypatch):
    monkeypatch.setenv("DEPTHRT_OPENVINO_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    _run(graph)
    assert not (tmp_path / "xdg").exists()


def test_unusable_folder_runs_without_a_cache(graph, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DEPTHRT_OPENVINO_CACHE", str(blocker / "cache"))
    assert ov_backend.cache_dir() is None
    assert np.isfinite(_run(graph)).all()


def test_damaged_entry_is_recompiled(graph, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEPTHRT_OPENVINO_CACHE", str(cache))
    good = _run(graph)
    for blob in cache.iterdir():
        blob.chmod(0o644)
        blob.write_bytes(os.urandom(1000))
    np.testing.assert_array_equal(_run(graph), good)


def test_prune_keeps_the_newest_within_the_limit(tmp_path):
    for i, size in enumerate([3, 2, 2, 1]):  # MiB, oldest first
        f = tmp_path / f"{i}.blob"
        f.write_bytes(b"\0" * (size << 20))
        os.utime(f, (time.time() - 100 + i, time.time() - 100 + i))
    removed = ov_backend.prune_cache(tmp_path, limit_mb=4)
    assert [p.name for p in removed] == ["0.blob", "1.blob"]
    assert _blobs(tmp_path) == ["2.blob", "3.blob"]
    assert ov_backend.prune_cache(tmp_path, limit_mb=0) == [tmp_path / "2.blob"]  # the newest always stays
    assert _blobs(tmp_path) == ["3.blob"]


def test_limit_comes_from_the_environment(graph, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEPTHRT_OPENVINO_CACHE", str(cache))
    monkeypatch.setenv("DEPTHRT_OPENVINO_CACHE_MB", "0")
    _run(graph)
    _run(graph, (1, 3, 42, 42))
    assert len(_blobs(cache)) == 1  # only the newest compiled shape is kept


def test_a_shape_compiled_before_loads_its_own_model_in_a_new_process(graph, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEPTHRT_OPENVINO_CACHE", str(cache))
    x = np.random.default_rng(0).random((1, 3, 56, 70), dtype=np.float32)
    first = ov_backend.OpenVinoRunner(graph)
    first.run({"pixel_values": x})
    assert first._dynamic is not None and not first._compiled and not _markers(cache)  # new: any-shape model
    first.run({"pixel_values": x})
    assert len(first._compiled) == 1 and len(_markers(cache)) == 1  # came again: its own model, marked
    later = ov_backend.OpenVinoRunner(graph)  # a new process
    later.run({"pixel_values": x})
    assert later._dynamic is None and len(later._compiled) == 1  # straight to the cached per-shape model
    other = ov_backend.OpenVinoRunner(graph)
    other.run({"pixel_values": x[..., :42]})  # a shape never compiled: the any-shape model
    assert other._dynamic is not None and not other._compiled


def test_markers_follow_the_graph_file(graph, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEPTHRT_OPENVINO_CACHE", str(cache))
    copy = tmp_path / "model.onnx"
    copy.write_bytes(graph.read_bytes())
    runner = ov_backend.OpenVinoRunner(copy)
    marker = runner._marker(((1, 3, 56, 70),))
    os.utime(copy, ns=(copy.stat().st_atime_ns, copy.stat().st_mtime_ns + 10**9))  # re-exported
    assert runner._marker(((1, 3, 56, 70),)) != marker


def test_prune_drops_markers_older_than_every_remaining_entry(tmp_path):
    now = time.time()
    plan = [("a.blob", 3, 0), (ov_backend.MARKER_PREFIX + "a", 0, 1), ("b.blob", 2, 2),
            (ov_backend.MARKER_PREFIX + "b", 0, 3)]
    for name, mib, age in plan:
        f = tmp_path / name
        f.write_bytes(b"\0" * (mib << 20))
        os.utime(f, (now - 100 + age, now - 100 + age))
    removed = ov_backend.prune_cache(tmp_path, limit_mb=2)
    assert sorted(p.name for p in removed) == sorted(["a.blob", ov_backend.MARKER_PREFIX + "a"])
    assert _blobs(tmp_path) == ["b.blob"] and _markers(tmp_path) == [ov_backend.MARKER_PREFIX + "b"]


def test_a_graph_that_will_not_compile_for_any_shape_goes_per_shape(graph, monkeypatch, tmp_path):
    # an empty cache: a shape another test compiled into the session's cache would skip the any-shape try
    monkeypatch.setenv(ov_backend.CACHE_ENV, str(tmp_path / "ov"))
    runner = ov_backend.OpenVinoRunner(graph)
    real = runner._compile

    def refuse_dynamic(model):
        if any(i.get_partial_shape().is_dynamic for i in model.inputs):
            raise RuntimeError("dynamic shapes are not supported for this graph")
        return real(model)

    monkeypatch.setattr(runner, "_compile", refuse_dynamic)
    x = np.random.default_rng(0).random((1, 3, 56, 70), dtype=np.float32)
    assert np.isfinite(runner.run({"pixel_values": x})["predicted_depth"]).all()
    assert runner.dynamic_first is False and len(runner._compiled) == 1
