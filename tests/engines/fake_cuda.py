"""Stand-ins for cuda-python's runtime module and TensorRT's runtime, so that `TrtRunner` runs here.

"Device" memory is host memory (ctypes buffers addressed by their real addresses), and the "engine"
computes its output from whatever its input address holds: the runner's buffer, copy, shape,
stream-capture and graph-replay logic runs for real, with the same call signatures and return
tuples as cuda-python (`(err, *values)`) and TensorRT 11 (`set_input_shape`, `set_tensor_address`,
`execute_async_v3`). A captured graph replays the operations recorded during capture, so a graph
that captured the wrong buffers gives wrong numbers.
"""

from __future__ import annotations

import ctypes
import enum
import time
from collections import Counter

import numpy as np

PLAN_MAGIC = b"FAKEPLAN"


class _Err(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorStreamCaptureUnsupported = 900


class FakeCudart:
    """The subset of ``cuda.bindings.runtime`` that TrtRunner calls."""

    cudaError_t = _Err

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2
        cudaMemcpyDeviceToDevice = 3

    class cudaStreamCaptureMode(enum.IntEnum):
        cudaStreamCaptureModeThreadLocal = 1

    class Stream:
        def __init__(self, handle: int):
            self.handle = handle

        def __int__(self) -> int:
            return self.handle

    def __init__(self, refuse_capture: bool = False):
        self.buffers: dict[int, ctypes.Array] = {}
        self.calls: Counter = Counter()
        self.capturing: dict[int, list] = {}  # stream handle -> operations recorded while capturing
        self.refuse_capture = refuse_capture

    # memory
    def _alloc(self, nbytes: int) -> tuple:
        buf = ctypes.create_string_buffer(nbytes)
        self.buffers[ctypes.addressof(buf)] = buf
        return _Err.cudaSuccess, ctypes.addressof(buf)

    def cudaMalloc(self, nbytes):
        self.calls["cudaMalloc"] += 1
        return self._alloc(nbytes)

    def cudaMallocHost(self, nbytes):
        self.calls["cudaMallocHost"] += 1
        return self._alloc(nbytes)

    def _free(self, ptr) -> tuple:
        if self.buffers.pop(int(ptr), None) is None:
            raise AssertionError(f"free of unknown pointer {ptr}")
        return (_Err.cudaSuccess,)

    def cudaFree(self, ptr):
        self.calls["cudaFree"] += 1
        return self._free(ptr)

    def cudaFreeHost(self, ptr):
        self.calls["cudaFreeHost"] += 1
        return self._free(ptr)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        self.calls["cudaMemcpyAsync"] += 1
        self.calls[self.cudaMemcpyKind(kind).name] += 1
        self.submit(int(stream), lambda: ctypes.memmove(int(dst), int(src), int(nbytes)))
        return (_Err.cudaSuccess,)

    def cudaMemcpy(self, dst, src, nbytes, kind):
        self.calls["cudaMemcpy"] += 1
        self.calls[self.cudaMemcpyKind(kind).name] += 1
        ctypes.memmove(int(dst), int(src), int(nbytes))
        return (_Err.cudaSuccess,)

    # streams, graphs
    def cudaStreamCreate(self):
        self.calls["cudaStreamCreate"] += 1
        return _Err.cudaSuccess, self.Stream(7)

    def cudaStreamDestroy(self, stream):
        self.calls["cudaStreamDestroy"] += 1
        return (_Err.cudaSuccess,)

    def cudaStreamSynchronize(self, stream):
        assert int(stream) not in self.capturing, "synchronize during capture is illegal"
        return (_Err.cudaSuccess,)

    def submit(self, stream: int, op) -> None:
        """Run ``op`` now, or record it when ``stream`` is being captured."""
        if stream in self.capturing:
            self.capturing[stream].append(op)
        else:
            op()

    def cudaStreamBeginCapture(self, stream, mode):
        self.calls["cudaStreamBeginCapture"] += 1
        if self.refuse_capture:
            return (_Err.cudaErrorStreamCaptureUnsupported,)
        assert mode == self.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self.capturing[int(stream)] = []
        return (_Err.cudaSuccess,)

    def cudaStreamEndCapture(self, stream):
        return _Err.cudaSuccess, ("graph", self.capturing.pop(int(stream)))

    def cudaGraphInstantiate(self, graph, flags):
        self.calls["cudaGraphInstantiate"] += 1
        assert graph[0] == "graph" and flags == 0
        return _Err.cudaSuccess, ("exec", list(graph[1]))

    def cudaGraphDestroy(self, graph):
        return (_Err.cudaSuccess,)

    def cudaGraphExecDestroy(self, graph_exec):
        self.calls["cudaGraphExecDestroy"] += 1
        return (_Err.cudaSuccess,)

    def cudaGraphLaunch(self, graph_exec, stream):
        self.calls["cudaGraphLaunch"] += 1
        assert graph_exec[0] == "exec"
        for op in graph_exec[1]:
            op()
        return (_Err.cudaSuccess,)

    # events: stamped with the host clock when the stream reaches them
    def cudaEventCreate(self):
        self.calls["cudaEventCreate"] += 1
        return _Err.cudaSuccess, {"t": None}

    def cudaEventRecord(self, event, stream):
        self.submit(int(stream), lambda: event.__setitem__("t", time.perf_counter()))
        return (_Err.cudaSuccess,)

    def cudaEventSynchronize(self, event):
        assert event["t"] is not None, "synchronize on an event never reached"
        return (_Err.cudaSuccess,)

    def cudaEventElapsedTime(self, start, stop):
        return _Err.cudaSuccess, (stop["t"] - start["t"]) * 1000.0

    def cudaEventDestroy(self, event):
        self.calls["cudaEventDestroy"] += 1
        return (_Err.cudaSuccess,)

    def cudaGetErrorString(self, err):
        return _Err.cudaSuccess, _Err(err).name.encode()


class FakeTensorRT:
    """The subset of the ``tensorrt`` module that TrtRunner calls; one engine: depth = 2 * mean over channels."""

    class Logger:
        ERROR = 1

        def __init__(self, severity):
            self.severity = severity

    class TensorIOMode(enum.Enum):
        INPUT = 1
        OUTPUT = 2

    __version__ = "11.4.0.106"

    def __init__(self, cuda: FakeCudart, fail_execute: bool = False):
        self.cuda, self.fail_execute = cuda, fail_execute
        self.contexts: list[FakeContext] = []
        outer = self

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data: bytes):
                return FakeEngine(outer) if data.startswith((PLAN_MAGIC, b"PLAN:")) else None  # ours, fake_builder's

        self.Runtime = Runtime

    @staticmethod
    def nptype(dtype):
        return {"float32": np.float32}[dtype]


class FakeEngine:
    names = ("pixel_values", "predicted_depth")

    def __init__(self, trt: FakeTensorRT):
        self.trt, self.num_io_tensors = trt, 2

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return self.trt.TensorIOMode.INPUT if name == "pixel_values" else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return "float32"

    def create_execution_context(self):
        context = FakeContext(self.trt)
        self.trt.contexts.append(context)
        return context


class FakeContext:
    def __init__(self, trt: FakeTensorRT):
        self.trt, self.shape, self.addresses, self.calls = trt, None, {}, Counter()

    def set_input_shape(self, name, shape):
        self.calls["set_input_shape"] += 1
        shape = tuple(int(v) for v in shape)
        if len(shape) != 4 or shape[1] != 3:
            return False
        self.shape = shape
        return True

    def get_tensor_shape(self, name):
        b, _, h, w = self.shape
        # TensorRT returns a Dims, not a list
        return _Dims([b, h, w] if name == "predicted_depth" else self.shape)

    def set_tensor_address(self, name, ptr):
        self.calls["set_tensor_address"] += 1
        self.addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        assert isinstance(stream_handle, int)
        self.calls["execute_async_v3"] += 1
        if self.trt.fail_execute:
            return False
        shape, addresses = self.shape, dict(self.addresses)  # what a captured launch would have baked in

        def kernel():
            b, c, h, w = shape
            src = np.ctypeslib.as_array((ctypes.c_float * (b * c * h * w)).from_address(addresses["pixel_values"]))
            dst = np.ctypeslib.as_array((ctypes.c_float * (b * h * w)).from_address(addresses["predicted_depth"]))
            dst[:] = (2.0 * src.reshape(shape).mean(axis=1)).reshape(-1)

        self.trt.cuda.submit(stream_handle, kernel)
        return True


class _Dims:
    """TensorRT's Dims: len(), integer indexing and slices (which give tuples), as its stubs declare."""

    def __init__(self, values):
        self._values = [int(v) for v in values]

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return tuple(self._values[index])
        if not isinstance(index, int):
            raise TypeError("Dims indices are integers or slices")
        return self._values[index]
