"""OrtCudaRunner's I/O binding, per-shape static buffers and device-array paths, run for real on ONNX
Runtime's CPU provider: the runner binds wherever its DEVICE says, so with DEVICE "cpu" every ORT call
it makes on a GPU (io_binding, bind_input with a raw pointer, OrtValue buffers updated in place,
run_with_iobinding with a gpu_graph_id per shape) runs here. CUDA graph capture itself and
device-to-device copies need a GPU (tests/runtime/test_backends.py, skipped without one)."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from conftest import HostCudaArray
from depthrt.backends import DeviceArray
from depthrt.backends import ort as ort_backend
from depthrt.errors import BackendError, InputError


class HostBoundRunner(ort_backend.OrtCudaRunner):
    DEVICE, PROVIDER = "cpu", "CPUExecutionProvider"

    def _providers(self, cuda_graph):
        return ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def graph(tiny_bundle):
    bundle, manifest = tiny_bundle("depth-anything-v2-small")
    return bundle / manifest["graphs"][0]["file"]


@pytest.fixture
def make(graph, monkeypatch):
    monkeypatch.setattr(ort_backend, "unavailable", lambda backend: None)

    def make(**options):
        return HostBoundRunner(graph, **options)

    return make


def _input(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _reference(graph, x):
    return ort_backend.OrtRunner(graph).run({"pixel_values": x})["predicted_depth"]


def test_bound_run_matches_a_plain_session(make, graph):
    runner = make(cuda_graph=False)
    assert runner.cuda_graph is False
    x = _input((1, 3, 56, 70), 0)
    out = runner.run({"pixel_values": x})["predicted_depth"]
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, _reference(graph, x), rtol=1e-5, atol=1e-6)


def test_static_buffers_per_shape_take_each_new_input(make, graph, monkeypatch):
    monkeypatch.setattr(ort_backend, "MAX_CUDA_GRAPHS", 2)
    runner = make(cuda_graph=True)
    assert runner.cuda_graph is True
    a, b, c = (1, 3, 56, 70), (2, 3, 42, 42), (1, 3, 28, 84)
    for seed, shape in enumerate([a, b, a, c, a, c]):
        x = _input(shape, seed)
        out = runner.run({"pixel_values": x})["predicted_depth"]
        np.testing.assert_allclose(out, _reference(graph, x), rtol=1e-5, atol=1e-6)
    assert sorted(entry[0] for entry in runner._graphs.values()) == [1, 2]  # one graph id per shape
    assert c not in runner._graphs  # past the limit: run without a graph, still right


def test_device_array_in_device_array_out(make, graph):
    runner = make(cuda_graph=False)
    x = _input((1, 3, 56, 70), 1)
    out = runner.run({"pixel_values": HostCudaArray(x)})["predicted_depth"]
    assert isinstance(out, DeviceArray) and out.shape == (1, 56, 70) and out.dtype == np.float32
    ptr = out.__cuda_array_interface__["data"][0]
    view = np.ctypeslib.as_array((ctypes.c_float * (56 * 70)).from_address(ptr)).reshape(1, 56, 70)
    np.testing.assert_allclose(view, _reference(graph, x), rtol=1e-5, atol=1e-6)  # read in place, no copy
    np.testing.assert_array_equal(out.numpy(), view)


def test_device_array_of_the_wrong_dtype_or_layout_is_refused(make):
    runner = make(cuda_graph=False)
    with pytest.raises(BackendError, match="is float16 on the device; the graph takes float32: convert it first"):
        runner.run({"pixel_values": HostCudaArray(_input((1, 3, 28, 28), 0).astype(np.float16))})
    x = _input((1, 3, 28, 28), 0)
    with pytest.raises(InputError, match="not C-contiguous"):
        runner.run({"pixel_values": HostCudaArray(x, strides=(4, 4 * 28 * 28 * 1, 4 * 28, 4))})


def test_missing_input_is_named(make):
    with pytest.raises(BackendError, match="needs input"):
        make(cuda_graph=False).run({"image": _input((1, 3, 28, 28), 0)})
