"""A disk that fills up while `depthrt build` writes a plan: one clear error, no plan (or half of one) left."""

from __future__ import annotations

import errno
import os

import pytest
from fakes import GPU_ENV, FakeResult, fake_builder, write_fake_bundle

from depthrt.backends.trt import ENGINES_DIR
from depthrt.errors import OutputError
from depthrt_engines import cache
from depthrt_engines.build import build_bundle
from depthrt_engines.config import BuildConfig

CONFIG = BuildConfig(precision="fp16", sizes={"min": (266, 266), "opt": (518, 518), "max": (1036, 1036)})


def build(bundle, builder=fake_builder):
    return build_bundle(bundle, CONFIG, builder, environment=GPU_ENV, progress=False, use_timing_cache=False)


def files_under(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def test_plan_larger_than_the_free_space_says_so_and_leaves_no_plan(small_filesystem):
    bundle = write_fake_bundle(small_filesystem(256) / "bundle")

    def big_plan(plan, onnx, timing_cache, progress):
        return FakeResult(b"PLAN:" + os.urandom(1024 * 1024))

    with pytest.raises(OutputError, match="no space left on device while writing the engine") as info:
        build(bundle, big_plan)
    assert "free space and rerun" in str(info.value) and "\n" not in str(info.value)
    assert files_under(bundle / ENGINES_DIR) == []


def test_disk_filling_at_the_plan_metadata_leaves_no_plan(tmp_path, monkeypatch):
    """Without root: the plan is written, then its metadata (the marker that it is complete) hits ENOSPC.
    A plan without its marker would never be used; none may be left behind."""
    bundle = write_fake_bundle(tmp_path / "bundle")
    real_write = cache.write_atomic

    def fill_up(path, data):
        if path.name.endswith(".plan.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data)

    monkeypatch.setattr(cache, "write_atomic", fill_up)
    with pytest.raises(OutputError, match="no space left on device while writing the engine"):
        build(bundle)
    assert files_under(bundle / ENGINES_DIR) == []
    monkeypatch.undo()  # space again: the next build writes both and the plan is used
    (built,) = build(bundle)
    assert not built.cached and built.path.is_file()
