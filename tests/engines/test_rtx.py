"""TensorRT for RTX builds a plan for every preset family's tiny graph, with its dynamic profile, on the CPU.

This is our proof on machines without a GPU that TensorRT's ONNX parser and builder accept what
we export. CI installs the wheels: pip install tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs
"""

from __future__ import annotations

import pytest

from depthrt.backends.trt import find_engine, load_tensorrt
from depthrt_engines.build import build_bundle
from depthrt_engines.config import BuildConfig

RTX = load_tensorrt("trt-rtx")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(RTX is None, reason="TensorRT for RTX is not installed: "
                                           "pip install tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs"),
]

# One preset per exportable family and backbone (dpt-vit, dpt-hybrid, dpt-beit, zoedepth, DA-V2, DA-V2 metric).
FAMILY_PRESETS = ("dpt-large", "dpt-hybrid-midas", "dpt-beit-large-512", "zoedepth-nyu-kitti",
                  "depth-anything-v2-small", "depth-anything-v2-metric-indoor-small")


@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_trt_rtx_builds_each_family_with_its_dynamic_profile(preset, tiny_bundle, tmp_path, copy_bundle):
    bundle, manifest = tiny_bundle(preset)
    bundle = copy_bundle(bundle, tmp_path / "bundle")  # engines go into the bundle: keep the shared one clean
    (built,) = build_bundle(bundle, BuildConfig(target="trt-rtx"), progress=False)
    graph = manifest["graphs"][0]
    assert built.path.stat().st_size > 100_000
    (profile,) = built.metadata["plan"]["profiles"].values()
    dyn = graph["dynamic"]
    assert profile["min"] == [dyn["batch"]["min"], 3, dyn["height"]["min"], dyn["width"]["min"]]
    assert profile["max"] == [dyn["batch"]["max"], 3, dyn["height"]["max"], dyn["width"]["max"]]
    assert profile["min"] != profile["max"]  # dynamic, not a fixed-shape engine
    path, _ = find_engine(bundle, graph, "trt-rtx", "fp32", str(RTX.__version__), None)
    assert path == built.path


@pytest.fixture
def copy_bundle():
    import shutil

    def copy(src, dest):
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("engines"))
        return dest

    return copy
