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


def _run(graph, shape=(1, 3, 56, 70)):
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    return ov_backend.OpenVinoRunner(graph).run({"pixel_values": x})["predicted_depth"]


def _blobs(folder):
    return sorted(p.name for p in folder.iterdir())


def test_second_process_reuses_the_compiled_model(graph, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEPTHRT_OPENVINO_CACHE", str(cache))
    first = _run(graph)
    assert len(_blobs(cache)) == 1
    stamp = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    second = _run(graph)  # a new runner: a new OpenVINO core, as in a new process
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir()} == stamp  # read from the cache, not rewritten
    np.testing.assert_array_equal(first, second)
    _run(graph, (1, 3, 42, 42))  # another shape: another entry
    assert len(_blobs(cache)) == 2


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
