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


# The other families: Depth Anything 3 (depth + sky outputs) and the latent-diffusion ones, whose
# bundles hold three graphs (VAE encoder, UNet, VAE decoder) with latent-size dynamic dimensions.
MORE_PRESETS = ("da3-mono-large", "marigold-depth-v1-1", "lotus-depth-g-v2-1-disparity", "lbm-depth")


@pytest.mark.parametrize("preset", MORE_PRESETS)
def test_trt_rtx_builds_every_graph_of_the_other_families(preset, tiny_bundle, tmp_path, copy_bundle):
    bundle, manifest = tiny_bundle(preset)
    bundle = copy_bundle(bundle, tmp_path / "bundle")
    built = build_bundle(bundle, BuildConfig(target="trt-rtx"), progress=False)
    fp32_graphs = [g for g in manifest["graphs"] if g.get("precision", "fp32") == "fp32"]
    assert sorted(b.path.stem for b in built) == sorted(g["name"] for g in fp32_graphs)
    for engine in built:
        assert engine.path.stat().st_size > 100_000
        for profile in engine.metadata["plan"]["profiles"].values():
            assert profile["min"] != profile["max"] or len(profile["min"]) == 1  # spatial dims stay dynamic


def test_every_family_is_built_here():
    from depthrt.presets import PRESETS, find_preset

    covered = {find_preset(p).family for p in FAMILY_PRESETS + MORE_PRESETS}
    assert covered == {p.family for p in PRESETS}


@pytest.fixture
def copy_bundle():
    import shutil

    def copy(src, dest):
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("engines"))
        return dest

    return copy
