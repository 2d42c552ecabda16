"""TensorRT for RTX builds strongly typed plans for every preset family's tiny graphs, fp32 and fp16, on the CPU.

This is our proof on machines without a GPU that TensorRT's ONNX parser and a strongly typed builder (the
API TensorRT 11 keeps) accept what we export: the fp32 graphs, and the fp16 variants with their fp32
islands, each with its dynamic profile. The fp16 builds go through `depthrt build B --precision fp16
--target trt-rtx` itself. CI installs the wheels: pip install tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs
"""

from __future__ import annotations

import shutil

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
# The other families: Depth Anything 3 (depth + sky outputs) and the latent-diffusion ones, whose
# bundles hold three graphs (VAE encoder, UNet, VAE decoder) with latent-size dynamic dimensions.
MORE_PRESETS = ("da3-mono-large", "marigold-depth-v1-1", "lotus-depth-g-v2-1-disparity", "lbm-depth")


@pytest.fixture(scope="module")
def rtx_bundle(tiny_bundle, tmp_path_factory):
    """rtx_bundle(preset) -> (bundle, manifest): one copy per family (engines go into the bundle; the shared
    tiny bundle stays clean), shared by the fp32 and fp16 tests."""
    root = tmp_path_factory.mktemp("rtx")
    made = {}

    def make(preset: str):
        if preset not in made:
            src, manifest = tiny_bundle(preset)
            copy = shutil.copytree(src, root / preset, ignore=shutil.ignore_patterns("engines"))
            made[preset] = (copy, manifest)
        return made[preset]

    return make


def _graphs(manifest: dict, precision: str) -> dict[str, dict]:
    return {g["name"]: g for g in manifest["graphs"] if g.get("precision", "fp32") == precision}


@pytest.mark.parametrize("preset", FAMILY_PRESETS + MORE_PRESETS)
def test_trt_rtx_builds_every_graph_from_its_fp32_graph_with_its_dynamic_profile(preset, rtx_bundle):
    bundle, manifest = rtx_bundle(preset)
    built = build_bundle(bundle, BuildConfig(target="trt-rtx"), progress=False)
    fp32 = _graphs(manifest, "fp32")
    assert sorted(b.plan.graph_name for b in built) == sorted(fp32)
    for engine in built:
        graph, plan = fp32[engine.plan.graph_name], engine.metadata["plan"]
        assert (plan["onnx_file"], plan["graph_precision"]) == (graph["file"], "fp32")
        assert plan["precision_mode"].startswith("strongly typed") and plan["runtimes"] == ["tensorrt_rtx"]
        assert engine.path.stat().st_size > 100_000
        for name, profile in plan["profiles"].items():
            assert profile["min"] != profile["max"] or len(profile["min"]) == 1  # spatial dims stay dynamic
            if name == "pixel_values":  # an image input: the manifest's batch and size ranges
                dyn = graph["dynamic"]
                assert profile["min"] == [dyn["batch"]["min"], 3, dyn["height"]["min"], dyn["width"]["min"]]
                assert profile["max"] == [dyn["batch"]["max"], 3, dyn["height"]["max"], dyn["width"]["max"]]
        path, _ = find_engine(bundle, graph, "trt-rtx", "fp32", str(RTX.__version__), None)
        assert path == engine.path


FP16_PRESETS = FAMILY_PRESETS + MORE_PRESETS


@pytest.mark.parametrize("preset", FP16_PRESETS)
def test_depthrt_build_fp16_for_trt_rtx_builds_from_the_fp16_variant(preset, rtx_bundle, capsys):
    from depthrt.cli import main

    bundle, manifest = rtx_bundle(preset)
    assert main(["build", str(bundle), "--precision", "fp16", "--target", "trt-rtx"]) == 0
    out = capsys.readouterr().out
    fp32, fp16 = _graphs(manifest, "fp32"), _graphs(manifest, "fp16")
    assert sorted(fp16) == sorted(fp32)  # export wrote a variant of every graph
    for name, variant in fp16.items():
        # The runtime asks for the logical (fp32) graph and finds the plan built from its fp16 variant.
        path, meta = find_engine(bundle, fp32[name], "trt-rtx", "fp16", str(RTX.__version__), None)
        plan = meta["plan"]
        assert (plan["onnx_file"], plan["onnx_sha256"], plan["graph_precision"]) == \
            (variant["file"], variant["sha256"], "fp16")
        assert path.stat().st_size > 100_000
        assert f"{path} (built in" in out and f"strongly typed from {variant['file']}" in out


def test_trt_target_build_calls_run_on_a_real_strongly_typed_builder(rtx_bundle, monkeypatch, tmp_path):
    """The `trt` target's path (version-compatible flags, timing cache seeded, updated and merged) on a real
    builder: TensorRT-RTX's stands in for TensorRT 11's, which needs a GPU to load."""
    import depthrt_engines.trt_build as trt_build
    from depthrt_engines.plan import Environment

    monkeypatch.setattr(trt_build, "_module", lambda target: RTX)
    bundle, _ = rtx_bundle("depth-anything-v2-small")
    env = Environment("trt", str(RTX.__version__), "NVIDIA H200", "9.0")
    config = BuildConfig(precision="fp16", version_compatible=True, opt_level=0)
    (built,) = build_bundle(bundle, config, environment=env, progress=False, timing_cache_dir=tmp_path)
    assert built.path.stat().st_size > 100_000 and built.metadata["plan"]["runtimes"] == ["tensorrt_lean", "tensorrt"]
    (cache,) = tmp_path.glob("*.cache")
    assert cache.stat().st_size > 0  # the timing cache TensorRT returned was merged and kept


def test_every_family_is_built_here():
    from depthrt.presets import PRESETS, find_preset

    covered = {find_preset(p).family for p in FAMILY_PRESETS + MORE_PRESETS}
    assert covered == {p.family for p in PRESETS}
