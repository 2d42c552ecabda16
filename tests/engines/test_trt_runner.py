"""TrtRunner's buffers, copies, CUDA-graph capture and replay, run against fake CUDA and TensorRT runtimes.

The fakes (fake_cuda.py) keep cuda-python's and TensorRT 11's call signatures; "device" memory is host
memory and the fake engine computes depth = 2 * mean over channels from whatever its input address
holds, so wrong buffers, stale staging or a graph replaying the wrong addresses all give wrong numbers.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
from conftest import HostCudaArray
from fake_cuda import PLAN_MAGIC, FakeCudart, FakeTensorRT
from fakes import GPU_ENV, fake_builder, fake_bundle  # noqa: F401  (fake_bundle is a fixture)

from depthrt.backends import trt as trt_backend
from depthrt.errors import BackendError, BundleError, InputError
from depthrt.manifest import read_manifest
from depthrt_engines.build import build_bundle
from depthrt_engines.config import BuildConfig

PROFILES = {"pixel_values": {"min": [1, 3, 14, 14], "opt": [1, 3, 28, 28], "max": [4, 3, 70, 70]}}
META = {"plan": {"profiles": PROFILES}}


@pytest.fixture
def fake(monkeypatch, tmp_path):
    state = {"cuda": FakeCudart(), "installed": {"tensorrt", "tensorrt_lean"}}
    state["trt"] = FakeTensorRT(state["cuda"])
    monkeypatch.setattr(trt_backend, "_cudart", lambda: state["cuda"])
    monkeypatch.setattr(trt_backend, "load_runtime", lambda name: state["trt"] if name in state["installed"] else None)
    monkeypatch.setattr(trt_backend, "load_tensorrt", lambda target="trt": state["trt"])  # gpu_check asks for it
    monkeypatch.setattr(trt_backend, "query_gpu", lambda: (GPU_ENV.gpu_name, GPU_ENV.compute_capability))
    plan = tmp_path / "model.plan"
    plan.write_bytes(PLAN_MAGIC + b"engine")

    def make(**options):
        if options:
            state["cuda"] = FakeCudart(refuse_capture=options.get("refuse_capture", False))
            state["trt"] = FakeTensorRT(state["cuda"], fail_execute=options.get("fail_execute", False))
        return trt_backend.TrtRunner(plan, META, "trt", "depthrt build B"), state["cuda"]

    make.state = state
    return make, plan


def _input(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _expected(x):
    return 2.0 * x.mean(axis=1)


def test_first_run_plain_second_captures_then_replays(fake):
    make, _ = fake
    runner, cuda = make()
    xs = [_input((1, 3, 28, 42), seed) for seed in range(4)]
    outs = [runner.run({"pixel_values": x})["predicted_depth"] for x in xs]
    for x, out in zip(xs, outs):  # each run saw its own input, and earlier outputs were copies
        np.testing.assert_allclose(out, _expected(x), rtol=1e-5, atol=1e-6)
    assert cuda.calls["cudaStreamBeginCapture"] == 1 and cuda.calls["cudaGraphInstantiate"] == 1
    assert cuda.calls["cudaGraphLaunch"] == 3  # runs 2, 3 and 4 replay the graph
    assert runner.context.calls["execute_async_v3"] == 2  # run 1 plainly, then once while capturing
    assert cuda.calls["cudaMalloc"] == 2 and cuda.calls["cudaMallocHost"] == 2  # one input, one output


def test_buffers_are_allocated_once_per_shape_and_shapes_switch(fake):
    make, _ = fake
    runner, cuda = make()
    a, b = _input((1, 3, 28, 28), 0), _input((2, 3, 14, 56), 1)
    for x in (a, b, a, b, a):
        out = runner.run({"pixel_values": x})["predicted_depth"]
        assert out.shape == (x.shape[0], x.shape[2], x.shape[3])
        np.testing.assert_allclose(out, _expected(x), rtol=1e-5, atol=1e-6)
    assert cuda.calls["cudaMalloc"] == 4  # two shapes, two tensors each
    assert runner.context.calls["set_input_shape"] == 5  # TensorRT holds one shape: set on every switch


def test_old_shapes_are_freed_beyond_the_limit(fake):
    make, _ = fake
    runner, cuda = make()
    shapes = [(1, 3, 14, 14 * (k + 1)) for k in range(trt_backend._MAX_SHAPES + 1)]
    for k, shape in enumerate(shapes):
        runner.run({"pixel_values": _input(shape, k)})
    assert cuda.calls["cudaFree"] == 2 and cuda.calls["cudaFreeHost"] == 2  # the oldest shape's buffers
    x = _input(shapes[0], 9)  # the evicted shape comes back with fresh buffers
    np.testing.assert_allclose(runner.run({"pixel_values": x})["predicted_depth"], _expected(x), rtol=1e-5, atol=1e-6)


def test_capture_refused_runs_without_graphs(fake):
    make, _ = fake
    runner, cuda = make(refuse_capture=True)
    for seed in range(3):
        x = _input((1, 3, 28, 28), seed)
        np.testing.assert_allclose(runner.run({"pixel_values": x})["predicted_depth"], _expected(x), rtol=1e-5,
                                   atol=1e-6)
    assert runner.use_graphs is False and cuda.calls["cudaGraphLaunch"] == 0
    assert cuda.calls["cudaStreamBeginCapture"] == 1  # tried once, not on every run


def test_engine_failure_is_a_backend_error(fake):
    make, _ = fake
    runner, _ = make(fail_execute=True)
    with pytest.raises(BackendError, match="TensorRT failed to run the engine"):
        runner.run({"pixel_values": _input((1, 3, 28, 28), 0)})


def test_input_outside_the_profile_is_refused_before_any_allocation(fake):
    make, _ = fake
    runner, cuda = make()
    with pytest.raises(InputError, match="1x3x28x84 is outside the engine's profile: it supports 1x3x14x14 to "
                                         "4x3x70x70"):
        runner.run({"pixel_values": _input((1, 3, 28, 84), 0)})
    assert cuda.calls["cudaMalloc"] == 0


def test_plan_tensorrt_cannot_load_names_the_rebuild(fake):
    make, plan = fake
    plan.write_bytes(b"something else")
    with pytest.raises(BundleError, match="could not load .* rebuild it with `depthrt build B`"):
        make()


def test_runner_frees_everything_when_dropped(fake):
    make, _ = fake
    runner, cuda = make()
    for seed in range(2):
        runner.run({"pixel_values": _input((1, 3, 28, 28), seed)})
    del runner
    gc.collect()
    assert not cuda.buffers
    assert cuda.calls["cudaStreamDestroy"] == 1 and cuda.calls["cudaGraphExecDestroy"] == 1


def test_open_runner_finds_the_built_engine_and_runs_it(fake, fake_bundle):
    build_bundle(fake_bundle, BuildConfig(precision="fp16", sizes={"min": (266, 266), "opt": (518, 518),
                                                                    "max": (1036, 1036)}),
                 fake_builder, environment=GPU_ENV, progress=False, use_timing_cache=False)
    graph = read_manifest(fake_bundle)["graphs"][0]
    runner = trt_backend.open_runner(fake_bundle, graph, "trt", "fp16", None)
    x = _input((1, 3, 266, 280), 0)
    np.testing.assert_allclose(runner.run({"pixel_values": x})["predicted_depth"], _expected(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="outside the engine's profile"):
        runner.run({"pixel_values": _input((1, 3, 140, 140), 0)})


def test_trt_backend_runs_version_compatible_plans_on_the_lean_runtime_alone(fake, fake_bundle):
    make, _ = fake
    make.state["installed"] = {"tensorrt_lean"}  # `pip install 'depthrt[trt-lean]'`: no full TensorRT
    sizes = {"min": (266, 266), "opt": (518, 518), "max": (1036, 1036)}
    build_bundle(fake_bundle, BuildConfig(precision="fp16", sizes=sizes), fake_builder, environment=GPU_ENV,
                 progress=False, use_timing_cache=False)
    graph = read_manifest(fake_bundle)["graphs"][0]
    with pytest.raises(BackendError, match="built without --version-compatible.*--version-compatible`"):
        trt_backend.open_runner(fake_bundle, graph, "trt", "fp16", None)
    build_bundle(fake_bundle, BuildConfig(precision="fp16", sizes=sizes, version_compatible=True), fake_builder,
                 environment=GPU_ENV, progress=False, use_timing_cache=False)
    runner = trt_backend.open_runner(fake_bundle, graph, "trt", "fp16", None)
    assert runner.runtime == "tensorrt_lean"
    x = _input((1, 3, 266, 280), 0)
    np.testing.assert_allclose(runner.run({"pixel_values": x})["predicted_depth"], _expected(x), rtol=1e-5, atol=1e-6)


def test_engine_time_runs_the_engine_alone_between_events(fake):
    make, _ = fake
    runner, cuda = make()
    x = _input((1, 3, 28, 28), 3)
    times = runner.engine_time_ms({"pixel_values": x}, repeats=5)
    assert len(times) == 5 and all(t >= 0.0 for t in times)
    assert runner.context.calls["execute_async_v3"] == 5
    assert cuda.calls["cudaMemcpyAsync"] == 1  # the input, once; no output copies
    assert cuda.calls["cudaEventCreate"] == 2 and cuda.calls["cudaEventDestroy"] == 2
    # the engine really ran on the staged input: a later run of the same shape still gives right numbers
    np.testing.assert_allclose(runner.run({"pixel_values": x})["predicted_depth"], _expected(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="outside the engine's profile"):
        runner.engine_time_ms({"pixel_values": _input((1, 3, 7, 7), 0)})


def test_engine_time_frees_its_events_when_the_engine_fails(fake):
    make, _ = fake
    runner, cuda = make(fail_execute=True)
    with pytest.raises(BackendError, match="TensorRT failed to run the engine"):
        runner.engine_time_ms({"pixel_values": _input((1, 3, 28, 28), 0)})
    assert cuda.calls["cudaEventDestroy"] == 2


def test_bench_reports_the_engine_alone_for_trt(fake, tiny_bundle, tmp_path):
    import shutil

    from depthrt.bench import format_table, run_bench

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle("depth-anything-v2-small")[0], bundle)
    build_bundle(bundle, BuildConfig(precision="fp16", sizes={"min": (266, 266), "opt": (518, 518),
                                                               "max": (1036, 1036)}),
                 fake_builder, environment=GPU_ENV, progress=False, use_timing_cache=False)
    report = run_bench(bundle, backends=["trt", "ort-cpu"], precisions=["fp16", "fp32"], size=(48, 64), runs=3,
                       warmup=1, references=())
    rows = {r["label"]: r for r in report["entries"]}
    trt = rows["trt fp16"]
    assert trt["error"] is None and trt["engine"]["runs"] == 10  # at least 10 engine runs, whatever --runs
    assert trt["engine"]["median_ms"] > 0.0
    assert "engine" not in rows["ort-cpu fp32"]  # only backends that can time their engine report it
    assert "trt fp16: engine alone" in format_table(report)


def test_gpu_check_times_tensorrt_through_the_runner_and_alone(fake, tiny_bundle, tmp_path, monkeypatch):
    import shutil
    import sys

    import torch

    import depthrt_engines.build as build_module
    from conftest import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    sys.modules.pop("gpu_check", None)
    import gpu_check

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle("depth-anything-v2-small")[0], bundle)
    real_build = build_module.build_bundle

    def build_with_fakes(path, config, builder=None, **options):
        assert config.precision == "fp16" and config.sizes["min"] == config.sizes["max"] == (182, 182)
        return real_build(path, config, fake_builder, environment=GPU_ENV, progress=False, use_timing_cache=False)

    monkeypatch.setattr(build_module, "build_bundle", build_with_fakes)
    x = torch.randn(1, 3, 182, 182)
    rows = gpu_check._tensorrt_rows({"bundle": bundle, "inputs": {"pixel_values": x}}, "cuda", 3, 1,
                                    ref=_expected(x.numpy()))
    through, alone = rows["trt fp16 (host in/out)"], rows["trt fp16 engine alone"]
    assert through["rel_l2"] < 1e-5 and through["nonfinite"] == 0  # the engine ran on the check's own input
    assert through["runs"] == 3 and alone["runs"] == 3 and alone["median_ms"] > 0
    assert "skipped" in gpu_check._tensorrt_rows({"inputs": {}}, "cpu", 3, 1, ref=None)["tensorrt"]


def test_device_arrays_in_device_arrays_out(fake):
    import ctypes

    from depthrt.backends import DeviceArray

    make, _ = fake
    runner, cuda = make()
    x = _input((1, 3, 28, 42), 5)
    out = runner.run({"pixel_values": HostCudaArray(x)})["predicted_depth"]
    assert isinstance(out, DeviceArray) and out.shape == (1, 28, 42) and out.dtype == np.float32
    ptr = out.__cuda_array_interface__["data"][0]
    in_place = np.ctypeslib.as_array((ctypes.c_float * (28 * 42)).from_address(ptr)).reshape(1, 28, 42)
    np.testing.assert_allclose(in_place, _expected(x), rtol=1e-5, atol=1e-6)  # the engine's buffer, no copy
    np.testing.assert_array_equal(out.numpy(), in_place)
    assert cuda.calls["cudaMemcpyDeviceToDevice"] == 1 and cuda.calls["cudaMemcpyHostToDevice"] == 0
    assert cuda.calls["cudaMemcpyDeviceToHost"] == 1  # only numpy() copied to the host
    # host arrays still come back as host arrays from the same runner
    y = _input((1, 3, 28, 42), 6)
    np.testing.assert_allclose(runner.run({"pixel_values": y})["predicted_depth"], _expected(y), rtol=1e-5, atol=1e-6)


def test_device_array_of_another_dtype_is_refused(fake):
    make, _ = fake
    runner, _ = make()
    with pytest.raises(BackendError, match="is float16 on the device; the engine takes float32: convert it first"):
        runner.run({"pixel_values": HostCudaArray(_input((1, 3, 28, 28), 0).astype(np.float16))})


def test_out_of_profile_refusal_names_the_build_that_covers_it(fake, fake_bundle):
    """An engine built for 266..1036 refuses a 98x140 input (inside the bundle's limits) with the exact
    `depthrt build` command that covers it; that command parses, builds (its --min is inside the limits,
    below the old 126 range) and its engine runs the input. Outside the limits the build is refused."""
    import argparse
    import json
    import re
    import shlex

    from depthrt_engines.cli import add_build_arguments, config_from_args

    manifest = json.loads((fake_bundle / "manifest.json").read_text())
    for graph in manifest["graphs"]:  # as export writes it now
        graph["limits"] = {"height": {"min": 14, "multiple_of": 14}, "width": {"min": 14, "multiple_of": 14}}
    (fake_bundle / "manifest.json").write_text(json.dumps(manifest))
    first = BuildConfig(precision="fp16", sizes={"min": (266, 266), "opt": (518, 518), "max": (1036, 1036)})
    build_bundle(fake_bundle, first, fake_builder, environment=GPU_ENV, progress=False, use_timing_cache=False)
    graph = read_manifest(fake_bundle)["graphs"][0]
    x = _input((1, 3, 98, 140), 0)
    with pytest.raises(InputError, match="1x3x98x140 is outside the engine's profile") as info:
        trt_backend.open_runner(fake_bundle, graph, "trt", "fp16", None).run({"pixel_values": x})
    command = re.search(r"rebuild the engine to cover it: `(.*)`", str(info.value)).group(1)
    assert command == shlex.join(["depthrt", "build", str(fake_bundle), "--precision", "fp16", "--min", "98x140",
                                  "--opt", "518x518", "--max", "1036x1036"])
    parser = argparse.ArgumentParser()
    add_build_arguments(parser)
    args = parser.parse_args(shlex.split(command)[2:])
    build_bundle(fake_bundle, config_from_args(args), fake_builder, environment=GPU_ENV, progress=False,
                 use_timing_cache=False)
    runner = trt_backend.open_runner(fake_bundle, graph, "trt", "fp16", None)  # the newest engine
    np.testing.assert_allclose(runner.run({"pixel_values": x})["predicted_depth"], _expected(x), rtol=1e-5, atol=1e-6)
    below = BuildConfig(precision="fp16", sizes={"min": (7, 14), "opt": (518, 518), "max": (1036, 1036)})
    with pytest.raises(InputError, match="--min height 7 is not a size graph 'model' runs at; choose at least 14"):
        build_bundle(fake_bundle, below, fake_builder, environment=GPU_ENV, progress=False, use_timing_cache=False)


def test_out_of_profile_latent_or_batch_names_the_options(fake):
    """An input whose height and width are not what --min/--max set (a latent, or a batch over the
    profile) gets the options to widen, not a wrong command."""
    make, _ = fake
    runner, _ = make()
    with pytest.raises(InputError, match=r"rebuild the engine with a wider profile \(`depthrt build B` with --min HxW"):
        runner.run({"pixel_values": _input((5, 3, 28, 28), 0)})
