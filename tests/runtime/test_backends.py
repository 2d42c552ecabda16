"""Backends: ort-cpu, openvino (fp32/bf16), the fp16 graph variant, ort-cuda's choices and errors,
and device-array helpers. All on the CPU with tiny bundles; nothing here measures speed."""

import shutil

import numpy as np
import pytest

import depthrt
from conftest import assert_clean_error, run_cli
from depthrt import metrics
from depthrt.backends import (DeviceArray, available_backends, device_pointer, is_dlpack_on_gpu, open_graph,
                              resolve_backend, select_graph, unavailable)
from depthrt.errors import BackendError, InputError
from depthrt.samples import synthetic_image

HAS_OPENVINO = unavailable("openvino") is None
HAS_CUDA = unavailable("ort-cuda") is None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO is not installed")


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory):
    """A copy of the tiny bundle without its fp16 variant (as an export before variants had it)."""
    import json

    copy = tmp_path_factory.mktemp("fp32") / "bundle"
    shutil.copytree(tiny_bundle("depth-anything-v2-small")[0], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for graph in [g for g in manifest["graphs"] if g.get("precision") == "fp16"]:
        (copy / graph["file"]).unlink()
        manifest["graphs"].remove(graph)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.fixture(scope="module")
def fp16_bundle(bundle, tmp_path_factory):
    """A copy of the fp32-only bundle with its fp16 variant added by the stand-alone tool."""
    from depthrt_export.fp16 import add_fp16_variants

    copy = tmp_path_factory.mktemp("fp16") / "bundle"
    shutil.copytree(bundle, copy)
    add_fp16_variants(copy)
    return copy


def _image():
    return synthetic_image(240, 320, seed=3)


# --------------------------------------------------------------------------- choosing backends
def test_auto_prefers_openvino_on_the_cpu_where_installed():
    found = available_backends()
    assert "ort-cpu" in found
    if HAS_OPENVINO and not HAS_CUDA:
        assert resolve_backend("auto") == "openvino"


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a working CUDA provider")
def test_ort_cuda_without_gpu_names_the_alternatives(bundle):
    with pytest.raises(BackendError) as err:
        resolve_backend("ort-cuda")
    assert "onnxruntime-gpu" in str(err.value) and "--backend ort-cpu" in str(err.value)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a working CUDA provider")
def test_cli_predict_on_ort_cuda_without_gpu_is_a_clean_error(bundle, tmp_path):
    from PIL import Image

    img = tmp_path / "a.png"
    Image.fromarray(_image()).save(img)
    result = run_cli("predict", str(bundle), str(img), "--backend", "ort-cuda", "--out", str(tmp_path / "o"))
    assert_clean_error(result, "ort-cuda", "--backend ort-cpu")


@pytest.mark.parametrize("precision, hint", [("bf16", "--backend openvino --precision bf16"), ("fp16", "ort-cuda")])
def test_ort_cpu_refuses_reduced_precision_and_names_where_it_runs(bundle, precision, hint):
    with pytest.raises(BackendError) as err:
        depthrt.load(bundle, backend="ort-cpu", precision=precision)
    assert hint in str(err.value)


def test_ort_cpu_session_is_tuned_for_small_machines(bundle):
    est = depthrt.load(bundle, backend="ort-cpu")
    options = est.runner.session.get_session_options()
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


# --------------------------------------------------------------------------- openvino
@needs_openvino
def test_openvino_fp32_matches_ort_cpu(bundle):
    image = _image()
    ours = depthrt.load(bundle, backend="openvino").predict(image).depth
    ref = depthrt.load(bundle, backend="ort-cpu").predict(image).depth
    assert ours.shape == image.shape[:2] and ours.dtype == np.float32
    assert metrics.centred_rel_l2(ours, ref) < 1e-4


@needs_openvino
def test_openvino_fp32_is_requested_explicitly(bundle):
    # OpenVINO's CPU plugin defaults to bf16 on bf16-capable CPUs: fp32 must be asked for.
    runner = depthrt.load(bundle, backend="openvino").runner
    assert runner.config["INFERENCE_PRECISION_HINT"] == "f32"


@needs_openvino
def test_openvino_bf16_runs_where_the_cpu_has_it_and_is_refused_elsewhere(bundle):
    from depthrt.backends.openvino import supports_bf16

    import openvino

    image = _image()
    if not supports_bf16(openvino.Core()):
        with pytest.raises(BackendError, match="AVX512-BF16 or AMX"):
            depthrt.load(bundle, backend="openvino", precision="bf16")
        return
    est = depthrt.load(bundle, backend="openvino", precision="bf16")
    assert est.runner.config["INFERENCE_PRECISION_HINT"] == "bf16"
    depth = est.predict(image).depth
    ref = depthrt.load(bundle, backend="openvino").predict(image).depth
    assert np.isfinite(depth).all()
    assert 0 < metrics.centred_rel_l2(depth, ref) < 0.2  # bf16 differs, but is the same map


@needs_openvino
def test_openvino_refuses_fp16_naming_bf16(bundle):
    with pytest.raises(BackendError, match="--precision bf16"):
        depthrt.load(bundle, backend="openvino", precision="fp16")


@needs_openvino
def test_openvino_fp32_runs_new_shapes_dynamic_then_compiles_repeats_and_keeps_few(bundle):
    from depthrt.backends.openvino import MAX_COMPILED_SHAPES

    est = depthrt.load(bundle, backend="openvino")
    first = est.predict(_image()).depth  # a new shape: the any-shape model, no per-shape compile
    assert len(est.runner._compiled) == 0 and est.runner._dynamic is not None
    second = est.predict(_image()).depth  # it came again: now its own static model
    assert len(est.runner._compiled) == 1 and est.runner._dynamic is None  # and the any-shape one let go
    np.testing.assert_allclose(second, first, rtol=1e-4, atol=1e-5 * np.abs(first).max())
    est.predict(_image())
    assert len(est.runner._compiled) == 1
    for i in range(MAX_COMPILED_SHAPES + 1):
        for _ in range(2):
            est.predict(synthetic_image(200 + 14 * i, 300, seed=i))
    assert len(est.runner._compiled) == MAX_COMPILED_SHAPES


@needs_openvino
def test_openvino_bf16_compiles_per_shape_from_the_first_run(bundle):
    from depthrt.backends.openvino import OpenVinoRunner, supports_bf16

    runner = OpenVinoRunner(bundle / "model.onnx", precision="fp32")
    if not supports_bf16(runner.core):
        pytest.skip("this CPU has neither AVX512-BF16 nor AMX")
    est = depthrt.load(bundle, backend="openvino", precision="bf16")
    est.predict(_image())
    assert len(est.runner._compiled) == 1 and est.runner._dynamic is None


@needs_openvino
def test_openvino_damaged_graph_is_a_bundle_error(bundle, tmp_path):
    from depthrt.backends.openvino import OpenVinoRunner
    from depthrt.errors import BundleError

    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx graph")
    with pytest.raises(BundleError, match="re-export"):
        OpenVinoRunner(bad)


# --------------------------------------------------------------------------- fp16 variant
def test_fp16_variant_is_recorded_in_the_manifest(fp16_bundle):
    from depthrt.manifest import read_manifest

    graphs = read_manifest(fp16_bundle)["graphs"]
    assert [g["precision"] for g in graphs] == ["fp32", "fp16"]
    fp32, fp16 = graphs
    assert fp16["name"] == fp32["name"] and fp16["file"] == "model.fp16.onnx"
    assert fp16["inputs"] == fp32["inputs"] and fp16["outputs"] == fp32["outputs"]  # fp32 I/O kept
    islands = fp16["fp32_islands"]
    assert {"LayerNormalization", "Softmax"} <= set(islands["op_types"]) and islands["scopes"] == ["head"]
    assert fp16["bytes"] < fp32["bytes"]


def test_fp16_variant_keeps_its_islands_in_fp32(fp16_bundle):
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(fp16_bundle / "model.fp16.onnx"))
    inits = {t.name: t.data_type for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    head = [n for n in convs if "/head/" in n.name]
    body = [n for n in convs if "/head/" not in n.name]
    assert head and body
    assert all(inits.get(n.input[1]) == TensorProto.FLOAT for n in head)
    assert any(inits.get(n.input[1]) == TensorProto.FLOAT16 for n in body)
    ln = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert ln and all(inits.get(n.input[1], TensorProto.FLOAT) == TensorProto.FLOAT for n in ln)


def test_attention_score_matmuls_are_found():
    import onnx

    from depthrt_export.fp16 import attention_score_nodes

    h = onnx.helper
    nodes = [h.make_node("MatMul", ["q", "k"], ["s"], name="qk"), h.make_node("Div", ["s", "c"], ["d"], name="scale"),
             h.make_node("Softmax", ["d"], ["p"], name="sm"), h.make_node("MatMul", ["p", "v"], ["o"], name="pv")]
    graph = h.make_graph(nodes, "g", [], [])
    assert sorted(attention_score_nodes(graph)) == ["qk", "scale"]


def test_fp16_graph_stays_close_to_fp32(fp16_bundle):
    from depthrt.backends.ort import OrtRunner

    x = np.random.default_rng(0).normal(size=(1, 3, 182, 238)).astype(np.float32)
    ref = OrtRunner(fp16_bundle / "model.onnx").run({"pixel_values": x})["predicted_depth"]
    half = OrtRunner(fp16_bundle / "model.fp16.onnx").run({"pixel_values": x})["predicted_depth"]
    assert half.dtype == np.float32 and np.isfinite(half).all()
    assert metrics.centred_rel_l2(half, ref) < 2e-2


def test_select_graph_picks_the_variant_or_says_how_to_make_it(bundle, fp16_bundle):
    from depthrt.manifest import read_manifest

    fp32 = read_manifest(fp16_bundle)["graphs"][0]
    assert select_graph(fp16_bundle, fp32, "fp16")["file"] == "model.fp16.onnx"
    assert select_graph(fp16_bundle, fp32, "fp32") is fp32
    with pytest.raises(BackendError, match="depthrt_export.fp16"):
        select_graph(bundle, read_manifest(bundle)["graphs"][0], "fp16")


def test_estimator_keeps_running_fp32_when_a_variant_exists(bundle, fp16_bundle):
    image = _image()
    a = depthrt.load(fp16_bundle, backend="ort-cpu").predict(image).depth
    b = depthrt.load(bundle, backend="ort-cpu").predict(image).depth
    np.testing.assert_array_equal(a, b)


def test_check_reports_every_reduced_precision_variant(fp16_bundle):
    from depthrt_export.check import format_report, run_check

    report = run_check(fp16_bundle, sizes=((182, 238),))
    by_precision = {v["precision"]: v for v in report["variants"]}
    assert "fp16" in by_precision
    assert by_precision["fp16"]["worst_rel_l2"] < 2e-2 and by_precision["fp16"]["passed"]
    if HAS_OPENVINO:
        assert "bf16" in by_precision
    assert "fp16 variant" in format_report(report)
    assert report["passed"]


# --------------------------------------------------------------------------- ort-cuda logic
def test_cuda_provider_options():
    from depthrt.backends.ort import cuda_provider_options

    plain = cuda_provider_options(1)
    assert plain["device_id"] == "1" and "enable_cuda_graph" not in plain
    assert cuda_provider_options(0, cuda_graph=True)["enable_cuda_graph"] == "1"


def test_ort_cuda_refuses_bf16(bundle):
    from depthrt.backends.ort import open_runner
    from depthrt.manifest import read_manifest

    graph = read_manifest(bundle)["graphs"][0]
    with pytest.raises(BackendError, match="--precision fp16"):
        open_runner(bundle, graph, "ort-cuda", "bf16", None)


def test_ort_cuda_fp16_without_variant_says_how_to_add_it(bundle):
    from depthrt.backends.ort import open_runner
    from depthrt.manifest import read_manifest

    graph = read_manifest(bundle)["graphs"][0]
    with pytest.raises(BackendError, match="depthrt_export.fp16"):
        open_runner(bundle, graph, "ort-cuda", "fp16", None)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a working CUDA provider")
def test_open_graph_on_ort_cuda_without_a_gpu_fails_clearly(bundle):
    from depthrt.manifest import read_manifest

    graph = read_manifest(bundle)["graphs"][0]
    with pytest.raises(BackendError, match="onnxruntime-gpu.*--backend ort-cpu"):
        open_graph(bundle, graph, "ort-cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and an NVIDIA GPU")
def test_ort_cuda_device_arrays_in_and_out(fp16_bundle):
    cupy = pytest.importorskip("cupy")
    est = depthrt.load(fp16_bundle, backend="ort-cuda", precision="fp16")
    x = np.random.default_rng(0).normal(size=(1, 3, 182, 238)).astype(np.float32)
    host = est.runner.run({"pixel_values": x})["predicted_depth"]
    out = est.runner.run({"pixel_values": cupy.asarray(x)})["predicted_depth"]
    assert isinstance(out, DeviceArray)
    np.testing.assert_allclose(cupy.asnumpy(cupy.asarray(out)), host, rtol=1e-3, atol=1e-3)


# --------------------------------------------------------------------------- device arrays
class _FakeCuda:
    def __init__(self, shape, strides=None, typestr="<f4", ptr=0x1000):
        self.shape = shape
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (ptr, False),
                                         "strides": strides, "version": 3}


class _FakeDlpack:
    def __init__(self, device):
        self.device = device

    def __dlpack_device__(self):
        return (self.device, 0)


def test_device_pointer_reads_cuda_array_interface():
    assert device_pointer(_FakeCuda((1, 3, 4, 4))) == 0x1000
    assert device_pointer(_FakeCuda((2, 3), strides=(12, 4))) == 0x1000  # explicit C-contiguous strides
    assert device_pointer(np.zeros((2, 3), np.float32)) is None


def test_device_pointer_refuses_non_contiguous_arrays():
    with pytest.raises(InputError, match="contiguous"):
        device_pointer(_FakeCuda((2, 3), strides=(4, 8)))


def test_dlpack_device_detection():
    assert is_dlpack_on_gpu(_FakeDlpack(2)) and not is_dlpack_on_gpu(_FakeDlpack(1))
    assert not is_dlpack_on_gpu(np.zeros(3))


def test_device_array_exposes_cuda_array_interface():
    arr = DeviceArray(0xABC, (1, 5, 7), np.float32, device_id=0)
    cai = arr.__cuda_array_interface__
    assert cai["data"] == (0xABC, False) and cai["shape"] == (1, 5, 7) and cai["typestr"] == "<f4"
    assert cai["version"] == 3 and cai["strides"] is None
    assert arr.__dlpack_device__() == (2, 0)
    with pytest.raises(BufferError, match="__cuda_array_interface__"):
        arr.__dlpack__()
