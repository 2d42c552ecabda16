"""Backends: each opens one graph of a bundle (a *loader*) and runs it on named arrays (a *runner*).

A runner has ``name`` and ``run(feeds: dict[str, ndarray]) -> dict[str, ndarray]``. Each backend
lives in its own module (listed in ``_MODULES``) with two functions:

* ``unavailable(backend) -> str | None``: why it cannot run here (library or device missing), or None;
* ``open_runner(bundle, graph, backend, precision, threads) -> runner``.

What a backend needs is imported only when it is asked for.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from pathlib import Path

import numpy as np

from ..errors import BackendError, InputError

log = logging.getLogger("depthrt")

# Best first: `auto` takes the first available one.
_MODULES = {"trt": "trt", "trt-rtx": "trt", "ort-cuda": "ort", "openvino": "openvino", "ort-cpu": "ort"}
BACKENDS = ("auto", *_MODULES)
PRECISIONS = ("fp32", "fp16", "bf16")
GPU_BACKENDS = ("trt", "trt-rtx", "ort-cuda")  # run on an NVIDIA GPU: batch to the graph's max, ask Ray for GPUs


def usable_cores() -> int:
    """The cores this process may run on: the default thread count of the CPU backends. Their own
    defaults (one per logical core of the machine) oversubscribe small machines and containers."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


_WHERE_ONLY = re.compile(r"^(Exception from )?\S+\.(cpp|hpp|h|cc|cu|py):\d+:?$")  # a C++ throw site, no cause


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, at most ``limit`` characters (libraries raise with long
    C++ traces), or its type. Lines that only say where it was thrown (OpenVINO starts with a few
    "Exception from src/...cpp:224:") are left out, so the line keeps the cause's own words."""
    lines = [line.strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line and not _WHERE_ONLY.match(line)]
    if not lines:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]
    text = " ".join(lines)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _module(backend: str):
    return importlib.import_module(f"{__name__}.{_MODULES[backend]}")


def unavailable(backend: str) -> str | None:
    """Why ``backend`` cannot run on this machine, or None when it can."""
    try:
        module = _module(backend)
    except ImportError as exc:  # the backend module itself is not part of this depthrt build
        return f"backend {backend} is not part of this depthrt ({exc})"
    return module.unavailable(backend)


def available_backends() -> list[str]:
    """The concrete backends usable on this machine, best first."""
    return [b for b in _MODULES if unavailable(b) is None]


def resolve_backend(name: str) -> str:
    """Turn ``auto`` into the best available backend; check a named one can run here."""
    if name not in BACKENDS:
        raise InputError(f"unknown backend '{name}': choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        found = available_backends()
        if not found:
            raise BackendError(
                "no backend is available: install ONNX Runtime (pip install 'depthrt[cpu]', or "
                "'depthrt[gpu]' on a machine with an NVIDIA GPU)"
            )
        log.info("backend auto: picked %s (available: %s)", found[0], ", ".join(found))
        return found[0]
    # A named backend is checked alone: asking every other one imports OpenVINO and TensorRT (0.15 s
    # here) for nothing. They are listed only when it cannot run.
    reason = unavailable(name)
    if reason is not None:
        found = available_backends()
        others = " or ".join(f"--backend {b}" for b in found) or "install onnxruntime for --backend ort-cpu"
        raise BackendError(f"{reason}; use {others}")
    return name


def open_graph(bundle: Path, graph: dict, backend: str, precision: str = "fp32", threads: int | None = None):
    """Load one graph of a bundle on a concrete backend and return its runner."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    return _module(backend).open_runner(Path(bundle), graph, backend, precision, threads)


def select_graph(bundle: Path, graph: dict, precision: str) -> dict:
    """The variant of ``graph`` stored at ``precision`` in the bundle (same name, its own file).

    fp16 variants (fp16 with fp32 islands) are extra entries in the manifest's ``graphs``, made at
    export; fp32 is the graph itself.
    """
    if graph.get("precision", "fp32") == precision:
        return graph
    from ..manifest import read_manifest

    for other in read_manifest(bundle)["graphs"]:
        if other["name"] == graph["name"] and other.get("precision", "fp32") == precision:
            return other
    raise BackendError(
        f"bundle '{bundle}' has no {precision} variant of graph '{graph['name']}': add one with "
        f"`python -m depthrt_export.fp16 {bundle}` (or re-export with this depthrt), or use --precision fp32"
    )


# --------------------------------------------------------------------------- device arrays
_DL_CUDA, _DL_CUDA_MANAGED = 2, 13


def device_pointer(value) -> int | None:
    """The device address of a CUDA array (``__cuda_array_interface__`` or DLPack), None for host arrays.

    Only C-contiguous arrays are accepted: the graph reads its inputs densely.
    """
    cai = getattr(value, "__cuda_array_interface__", None)
    if cai is not None:
        shape, strides = tuple(cai["shape"]), cai.get("strides")
        itemsize = np.dtype(cai["typestr"]).itemsize
        if strides is not None and tuple(strides) != _contiguous_strides(shape, itemsize):
            raise InputError("a device array passed to depthrt is not C-contiguous: make it contiguous first "
                             "(cupy.ascontiguousarray / tensor.contiguous())")
        return int(cai["data"][0])
    return None


def is_dlpack_on_gpu(value) -> bool:
    """Whether ``value`` is a DLPack array on a CUDA device (JAX, PyTorch, CuPy, ...)."""
    dl_device = getattr(value, "__dlpack_device__", None)
    if dl_device is None or isinstance(value, np.ndarray):
        return False
    kind, _ = dl_device()
    return int(kind) in (_DL_CUDA, _DL_CUDA_MANAGED)


def _contiguous_strides(shape: tuple, itemsize: int) -> tuple:
    strides, step = [], itemsize
    for dim in reversed(shape):
        strides.append(step)
        step *= max(int(dim), 1)
    return tuple(reversed(strides))


class DeviceArray:
    """A result left on the GPU: ``__cuda_array_interface__`` (CuPy, PyTorch, Numba read it without a
    copy) and, where the owner offers it, ``__dlpack__``. ``numpy()`` copies it to the host.

    It keeps the buffer's owner (an ORT OrtValue) alive while it exists.
    """

    def __init__(self, ptr: int, shape: tuple, dtype, device_id: int = 0, keep=None):
        self.ptr, self.shape, self.dtype, self.device_id = int(ptr), tuple(shape), np.dtype(dtype), device_id
        self._keep = keep

    @classmethod
    def from_ortvalue(cls, value, keep=None) -> "DeviceArray":
        dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
                  "tensor(int32)": np.int32, "tensor(bool)": np.bool_}
        return cls(value.data_ptr(), tuple(value.shape()), dtypes[value.data_type()], keep=keep or value)

    @property
    def __cuda_array_interface__(self) -> dict:
        # stream None: the runner synchronised its outputs before returning them.
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False), "version": 3,
                "strides": None, "stream": None}

    def __dlpack__(self, stream=None, **kwargs):
        owner = getattr(self._keep, "__dlpack__", None)
        if owner is None:
            raise BufferError("this ONNX Runtime cannot export DLPack; read the array through "
                              "__cuda_array_interface__ (cupy.asarray(x), torch.as_tensor(x, device='cuda'))")
        return owner(stream=stream, **kwargs) if stream is not None else owner()

    def __dlpack_device__(self):
        return (_DL_CUDA, self.device_id)

    def numpy(self) -> np.ndarray:
        """A host copy."""
        if hasattr(self._keep, "numpy"):
            return np.asarray(self._keep.numpy())
        raise BackendError("this device array cannot be copied to the host by depthrt; use cupy.asnumpy")

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype}, device=cuda:{self.device_id})"


def copy_device_to_device(dst: int, src: int, nbytes: int) -> None:
    """cudaMemcpy device to device, through cuda-python, or CuPy where that is what is installed."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        cudart = None
    if cudart is not None:
        (err,) = cudart.cudaMemcpy(dst, src, nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice)
        if int(err) != 0:
            raise BackendError(f"cudaMemcpy failed ({err})")
        return
    try:
        import cupy
    except ImportError:
        raise BackendError("copying a device array into a CUDA graph's input needs cuda-python or CuPy: pip "
                           "install cuda-python, or set DEPTHRT_CUDA_GRAPH=0") from None
    cupy.cuda.runtime.memcpy(dst, src, nbytes, cupy.cuda.runtime.memcpyDeviceToDevice)
