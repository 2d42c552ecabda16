"""The `trt` runtime's checks before TensorRT sees a plan, and its errors without TensorRT."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
from fakes import GPU_ENV, fake_builder, fake_bundle, write_fake_bundle  # noqa: F401  (fake_bundle is a fixture)

from conftest import ROOT, assert_clean_error, run_cli  # tests/conftest.py
from depthrt.backends import trt as trt_backend
from depthrt.errors import BackendError, BundleError, InputError
from depthrt.manifest import read_manifest
from depthrt_engines.build import build_bundle
from depthrt_engines.config import BuildConfig

CONFIG = BuildConfig(precision="fp16", sizes={"min": (266, 266), "opt": (518, 518), "max": (1036, 1036)})
HERE = (GPU_ENV.tensorrt_version, (GPU_ENV.gpu_name, GPU_ENV.compute_capability))


@pytest.fixture
def built(fake_bundle):
    (item,) = build_bundle(fake_bundle, CONFIG, fake_builder, environment=GPU_ENV, progress=False,
                           use_timing_cache=False)
    return fake_bundle, read_manifest(fake_bundle)["graphs"][0], item


def test_matching_engine_is_found(built):
    bundle, graph, item = built
    path, meta = trt_backend.find_engine(bundle, graph, "trt", "fp16", *HERE)
    assert path == item.path and meta["plan"]["environment"]["gpu_name"] == "NVIDIA H200"


@pytest.mark.parametrize("version, gpu, needle", [
    ("10.14.1.48", HERE[1], "built with TensorRT 11.4.0.106, and this machine has TensorRT 10.14.1.48"),
    (HERE[0], ("NVIDIA GeForce RTX 4090", "8.9"), "built for NVIDIA H200 (compute capability 9.0), and this GPU is "
                                                  "NVIDIA GeForce RTX 4090"),
])
def test_engine_for_another_tensorrt_or_gpu_names_the_build_command(built, version, gpu, needle):
    bundle, graph, _ = built
    with pytest.raises(BackendError) as err:
        trt_backend.find_engine(bundle, graph, "trt", "fp16", version, gpu)
    message = str(err.value)
    assert needle in message
    assert f"`depthrt build {bundle} --precision fp16 --min 266x266 --opt 518x518 --max 1036x1036`" in message


def test_other_precision_or_reexported_graph_asks_for_a_build(built):
    bundle, graph, _ = built
    with pytest.raises(BackendError, match="no trt engine .* precision fp32 .*it has fp16.*depthrt build"):
        trt_backend.find_engine(bundle, graph, "trt", "fp32", *HERE)
    with pytest.raises(BackendError, match="no trt engine"):  # plans of an older export are stale
        trt_backend.find_engine(bundle, dict(graph, sha256="f" * 64), "trt", "fp16", *HERE)


def test_truncated_or_foreign_plan_is_a_clear_error(built):
    bundle, graph, item = built
    data = item.path.read_bytes()
    meta_file = item.path.with_name("model.plan.json")
    meta_text = meta_file.read_text()
    item.path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="truncated or replaced; delete .* rebuild with `depthrt build"):
        trt_backend.find_engine(bundle, graph, "trt", "fp16", *HERE)
    assert item.path.read_bytes() == data[: len(data) // 2] and meta_file.read_text() == meta_text  # nothing rewritten
    item.path.write_bytes(b"\0" * len(data))  # same size: someone else's file
    with pytest.raises(BundleError, match="does not match the hash in its metadata"):
        trt_backend.find_engine(bundle, graph, "trt", "fp16", *HERE)
    assert item.path.read_bytes() == b"\0" * len(data) and meta_file.read_text() == meta_text


LEAN_ONLY = {"tensorrt_lean": GPU_ENV.tensorrt_version}


def test_lean_runtime_refuses_a_plan_built_without_version_compatibility(built):
    bundle, graph, item = built
    with pytest.raises(BackendError) as err:
        trt_backend.find_engine(bundle, graph, "trt", "fp16", LEAN_ONLY, HERE[1])
    message = str(err.value)
    assert "built without --version-compatible, and TensorRT's lean runtime, the only TensorRT here, loads only " \
           "version-compatible plans" in message
    assert (f"`depthrt build {bundle} --precision fp16 --min 266x266 --opt 518x518 --max 1036x1036 "
            "--version-compatible`") in message
    assert "pip install 'depthrt[trt]'" in message


def test_version_compatible_plan_loads_in_the_lean_runtime_of_its_version(fake_bundle):
    config = dataclasses.replace(CONFIG, version_compatible=True)
    (item,) = build_bundle(fake_bundle, config, fake_builder, environment=GPU_ENV, progress=False,
                           use_timing_cache=False)
    graph = read_manifest(fake_bundle)["graphs"][0]
    assert item.metadata["plan"]["runtimes"] == ["tensorrt_lean", "tensorrt"]  # recorded beside the plan
    path, meta = trt_backend.find_engine(fake_bundle, graph, "trt", "fp16", LEAN_ONLY, HERE[1])
    assert path == item.path
    both = {"tensorrt": GPU_ENV.tensorrt_version, **LEAN_ONLY}
    assert trt_backend.runtime_for(meta, "trt", both) == ("tensorrt_lean", None)  # lean first when it can
    assert trt_backend.runtime_for(meta, "trt", {"tensorrt": GPU_ENV.tensorrt_version}) == ("tensorrt", None)
    with pytest.raises(BackendError, match="built with TensorRT 11.4.0.106, and this machine has TensorRT's lean "
                                           "runtime 11.5.0.1: rebuild .*--version-compatible`"):
        trt_backend.find_engine(fake_bundle, graph, "trt", "fp16", {"tensorrt_lean": "11.5.0.1"}, HERE[1])


def test_damaged_metadata_is_skipped_not_a_crash(built):
    bundle, graph, item = built
    item.path.with_name("model.plan.json").write_text("{not json")
    with pytest.raises(BackendError, match="no trt engine"):
        trt_backend.find_engine(bundle, graph, "trt", "fp16", *HERE)


def test_input_outside_the_profile_names_the_range(built):
    _, _, item = built
    profiles = item.metadata["plan"]["profiles"]
    trt_backend.check_shapes(profiles, {"pixel_values": np.zeros((1, 3, 518, 700), np.float32)})
    with pytest.raises(InputError, match="1x3x518x1400 is outside the engine's profile: it supports 1x3x266x266 to "
                                         "8x3x1036x1036"):
        trt_backend.check_shapes(profiles, {"pixel_values": np.zeros((1, 3, 518, 1400), np.float32)})
    with pytest.raises(InputError, match="takes inputs"):
        trt_backend.check_shapes(profiles, {"image": np.zeros((1, 3, 518, 518), np.float32)})


def test_tensorrt_stub_package_is_not_mistaken_for_tensorrt(monkeypatch, tmp_path):
    # `pip install tensorrt-stubs` leaves a tensorrt/ folder of .pyi files: an importable empty package.
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.pyi").write_text("class Builder: ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    assert trt_backend.load_tensorrt("trt") is None
    monkeypatch.setattr(trt_backend, "load_runtime", lambda name: None)  # nor its lean runtime
    assert "needs TensorRT or its lean runtime, and neither is installed" in trt_backend.unavailable("trt")


needs_no_tensorrt = pytest.mark.skipif(trt_backend.load_tensorrt("trt") is not None, reason="TensorRT is installed")
needs_no_trt_runtime = pytest.mark.skipif(bool(trt_backend.installed_runtimes("trt")),
                                          reason="TensorRT or its lean runtime is installed")


@needs_no_trt_runtime
def test_predict_with_backend_trt_without_tensorrt_is_a_clean_error(fake_bundle, tmp_path):
    result = run_cli("predict", str(fake_bundle), str(ROOT / "scripts" / "data" / "sample.jpg"),
                     "--backend", "trt", "--out", str(tmp_path / "out"))
    assert_clean_error(result, "needs TensorRT or its lean runtime, and neither is installed", "--backend")


@needs_no_tensorrt
def test_build_without_tensorrt_is_a_clean_error(fake_bundle):
    result = run_cli("build", str(fake_bundle), "--precision", "fp16")
    assert_clean_error(result, "needs full TensorRT (its builder; the lean runtime cannot build)", "--plan-only")
    assert not (Path(fake_bundle) / "engines").exists() or not list((Path(fake_bundle) / "engines").rglob("*.plan"))


@pytest.mark.parametrize("target", ["trt", "trt-rtx"])
def test_build_fp16_of_a_bundle_without_the_variant_names_the_command_and_writes_nothing(tmp_path, target):
    bundle = write_fake_bundle(tmp_path / "bundle", fp16=False)
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    for extra in ([], ["--plan-only"]):
        result = run_cli("build", str(bundle), "--precision", "fp16", "--target", target, *extra)
        assert_clean_error(result, "plans are strongly typed", "graph 'model' has none",
                           f"`python -m depthrt_export.fp16 {bundle}`")
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before  # no engines/, manifest untouched


def test_trt_rtx_engine_checks_its_library_version_and_targets(fake_bundle):
    env = dataclasses.replace(GPU_ENV, target="trt-rtx", tensorrt_version="1.7.1.116", gpu_name=None,
                              compute_capability=None)
    config = BuildConfig(target="trt-rtx", compute_capabilities=("8.9",))
    build_bundle(fake_bundle, config, fake_builder, environment=env, progress=False, use_timing_cache=False)
    graph = read_manifest(fake_bundle)["graphs"][0]
    trt_backend.find_engine(fake_bundle, graph, "trt-rtx", "fp32", "1.7.1.116", ("NVIDIA GeForce RTX 4090", "8.9"))
    with pytest.raises(BackendError, match="targets compute capabilities 8.9, and this GPU has 12.0.*--target trt-rtx"):
        trt_backend.find_engine(fake_bundle, graph, "trt-rtx", "fp32", "1.7.1.116", ("NVIDIA RTX 5090", "12.0"))
