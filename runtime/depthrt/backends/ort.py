"""ONNX Runtime backends: ``ort-cpu`` and ``ort-cuda``.

``ort-cpu`` runs the fp32 graph with all of ORT's graph optimisations and one intra-op thread per
core this process may use. ``ort-cuda`` runs on the CUDA execution provider through I/O binding:
host arrays are copied in and out once; device arrays (``__cuda_array_interface__`` or DLPack:
CuPy, PyTorch, ...) are bound where they lie and the outputs stay on the device, returned as
:class:`~depthrt.backends.DeviceArray` (no copies). ``precision="fp16"`` runs the bundle's fp16
variant (fp16 with fp32 islands, made at export). CUDA graphs are used where ORT allows them (every
node on the CUDA EP); ORT refuses them for graphs that keep shape arithmetic on the CPU, and then
the runner falls back to plain runs and says so in the log.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np

from ..errors import BackendError, BundleError
from . import DeviceArray, device_pointer, first_line, fpenv, is_dlpack_on_gpu, select_graph, usable_cores

log = logging.getLogger("depthrt")

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
               "tensor(int32)": np.int32, "tensor(bool)": np.bool_}
MAX_CUDA_GRAPHS = 8  # one capture per input shape; each holds its own activation memory


def _ort():
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


def unavailable(backend: str) -> str | None:
    ort = _ort()
    if ort is None:
        return (f"backend {backend} needs ONNX Runtime, which is not installed: pip install 'depthrt[cpu]' "
                "(or 'depthrt[gpu]' on a machine with an NVIDIA GPU)")
    if backend == "ort-cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return ("backend ort-cuda needs onnxruntime-gpu and an NVIDIA GPU, and this machine has neither "
                "working; install 'depthrt[gpu]' on a GPU machine")
    return None


def open_runner(bundle: Path, graph: dict, backend: str, precision: str, threads: int | None):
    if backend == "ort-cpu":
        if precision != "fp32":
            hint = ("--backend openvino --precision bf16" if precision == "bf16"
                    else "--backend ort-cuda or trt (GPU)")
            raise BackendError(f"backend ort-cpu runs fp32 only; for {precision} use {hint}, or --precision fp32")
        return OrtRunner(bundle / graph["file"], backend, threads=threads)
    if precision == "bf16":
        raise BackendError("backend ort-cuda runs fp32 or fp16, not bf16: use --precision fp16 (or --backend "
                           "openvino --precision bf16 on the CPU)")
    chosen = select_graph(bundle, graph, precision)
    return OrtCudaRunner(bundle / chosen["file"], threads=threads)


def session_options(ort, threads: int | None, cuda: bool = False):
    """ORT session options tuned for this runtime (shared by both ORT backends)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or (1 if cuda else usable_cores())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initialisers are noise to users
    if not cuda and fpenv.available():
        # Denormals (tiny activations deep in ViTs) are 10-100x slower on x86; flushing them changes
        # nothing visible in a depth map. ORT also sets the flags in the creating thread, for good:
        # OrtRunner keeps them inside its own calls (depthrt.backends.fpenv says why that matters).
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
    # ORT's workers busy-wait after each run; on a 2-core machine that steals the cores from our
    # own pre/post-processing right after inference.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _open_session(ort, path: Path, options, providers):
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        first = first_line(exc)
        if "CUDA Graph" in first or "cuda graph" in first.lower():
            raise
        raise BundleError(
            f"ONNX Runtime cannot load '{path}': {first}; the file is damaged or not an ONNX graph: re-export the bundle"
        ) from None


class OrtRunner:
    """One ONNX graph in an ONNX Runtime CPU session."""

    def __init__(self, path: Path, backend: str = "ort-cpu", threads: int | None = None):
        ort = _ort()
        if ort is None:
            raise BackendError("ONNX Runtime is not installed: pip install 'depthrt[cpu]' (or [gpu])")
        self.name = backend
        with fpenv.kept():  # the caller's thread leaves with the floating-point flags it came with
            self.session = _open_session(ort, path, session_options(ort, threads), ["CPUExecutionProvider"])
            self._fp_env = fpenv.get()  # ORT's (denormals as zero): the calling thread runs its share in it
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph; safe to call from several threads at once (ORT's ``run`` is)."""
        try:
            with fpenv.using(self._fp_env):
                outputs = self.session.run(self.output_names, feeds)
        except Exception as exc:
            raise BackendError(f"{self.name} failed to run the graph: {first_line(exc)}") from None
        return dict(zip(self.output_names, outputs))


def cuda_provider_options(device_id: int = 0, cuda_graph: bool = False) -> dict:
    """CUDA EP options: the heuristic conv algorithm search (an exhaustive one re-runs per new image
    shape, which a dynamic-shape depth model sees often), copies on the compute stream."""
    opts = {"device_id": str(device_id), "cudnn_conv_algo_search": "HEURISTIC",
            "do_copy_in_default_stream": "1", "cudnn_conv_use_max_workspace": "1"}
    if cuda_graph:
        opts["enable_cuda_graph"] = "1"
    return opts


def _preload(ort) -> None:
    # pip-installed CUDA/cuDNN libraries (nvidia-* wheels) are not on the loader's path: ORT finds
    # them itself when asked, before the first CUDA session.
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as exc:  # missing nvidia-* wheels: the session creation below says more
            log.info("onnxruntime.preload_dlls() failed: %s", first_line(exc))


class OrtCudaRunner:
    """One ONNX graph on ORT's CUDA EP with I/O binding, optionally replayed as CUDA graphs.

    ``run(feeds)`` takes numpy arrays (outputs come back as numpy) or device arrays (outputs come
    back as :class:`DeviceArray` on the same GPU, with ``__cuda_array_interface__`` and
    ``__dlpack__``). With CUDA graphs, device outputs live in buffers reused by the next run of the
    same shape: copy them (``.copy()`` in CuPy or torch) if you keep them across runs, from any thread.
    Safe to call from several threads: runs take turns (a lock).
    """

    DEVICE = "cuda"  # ONNX Runtime's name for where inputs and outputs are bound
    PROVIDER = "CUDAExecutionProvider"

    def __init__(self, path: Path, device_id: int = 0, threads: int | None = None, cuda_graph: bool | None = None):
        ort = _ort()
        if ort is None:
            raise BackendError(unavailable("ort-cuda"))
        reason = unavailable("ort-cuda")
        if reason is not None:
            raise BackendError(f"{reason}; use --backend ort-cpu or openvino")
        self.name = "ort-cuda"
        self.ort = ort
        self.device_id = device_id
        _preload(ort)
        if cuda_graph is None:
            cuda_graph = os.environ.get("DEPTHRT_CUDA_GRAPH", "1") != "0"
        self.session = None
        self.cuda_graph = False
        if cuda_graph:
            try:
                self.session = self._session(path, threads, cuda_graph=True)
                self.cuda_graph = True
            except BackendError:
                raise
            except Exception as exc:
                log.info("ort-cuda: CUDA graphs not used for %s: %s", path.name, first_line(exc))
        if self.session is None:
            self.session = self._session(path, threads, cuda_graph=False)
        log.info("ort-cuda: %s on GPU %d, CUDA graphs %s", path.name, device_id, "on" if self.cuda_graph else "off")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._input_types = {i.name: _ORT_DTYPES.get(i.type, np.float32) for i in self.session.get_inputs()}
        self._graphs: dict[tuple, tuple] = {}  # shapes -> (graph id, static inputs, binding)
        self._held: list = []
        self._run_lock = threading.Lock()

    def _providers(self, cuda_graph: bool) -> list:
        return [(self.PROVIDER, cuda_provider_options(self.device_id, cuda_graph)), "CPUExecutionProvider"]

    def _session(self, path: Path, threads: int | None, cuda_graph: bool):
        ort = self.ort
        session = _open_session(ort, path, session_options(ort, threads, cuda=True), self._providers(cuda_graph))
        if self.PROVIDER not in session.get_providers():
            raise BackendError("backend ort-cuda: ONNX Runtime could not start its CUDA provider (CUDA or cuDNN "
                               "libraries missing or no GPU); install 'depthrt[gpu]' with the nvidia-* CUDA 13 "
                               "wheels, or use --backend ort-cpu or openvino")
        return session

    # ------------------------------------------------------------------ running
    def run(self, feeds: dict) -> dict:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise BackendError(f"ort-cuda: the graph needs input(s) {', '.join(missing)}")
        on_device = any(_on_device(feeds[n]) for n in self.input_names)
        # One run at a time: the captured graphs' input/output buffers and bindings are shared by every
        # run of a shape, and the GPU runs one graph at a time anyway. The cost for several threads is
        # that their host-side copies in and out do not overlap.
        with self._run_lock:
            try:
                if self.cuda_graph:
                    outputs = self._run_graph(feeds)
                else:
                    outputs = self._run_bound(feeds)
            except BackendError:
                raise
            except Exception as exc:
                raise BackendError(f"ort-cuda failed to run the graph: {first_line(exc)}") from None
            if on_device:
                return {n: DeviceArray.from_ortvalue(v, keep=v) for n, v in outputs.items()}
            return {n: v.numpy() for n, v in outputs.items()}

    def _bind_input(self, binding, name: str, value) -> None:
        ptr = device_pointer(value)
        if ptr is None and is_dlpack_on_gpu(value):  # DLPack only (JAX, ...): ORT wraps it without a copy
            if not hasattr(self.ort.OrtValue, "from_dlpack"):
                raise BackendError("this ONNX Runtime cannot read DLPack arrays; pass an array with "
                                   "__cuda_array_interface__ (CuPy, PyTorch)")
            wrapped = self.ort.OrtValue.from_dlpack(value)
            if np.dtype(_ORT_DTYPES.get(wrapped.data_type(), np.float32)) != np.dtype(self._input_types[name]):
                raise BackendError(f"ort-cuda: input {name} is {wrapped.data_type()} on the device; the graph "
                                   f"takes {np.dtype(self._input_types[name])}: convert it first")
            binding.bind_ortvalue_input(name, wrapped)
            self._held.append(wrapped)  # alive until the run is over
            return
        if ptr is None:  # a host array: ORT copies it to the GPU once
            binding.bind_cpu_input(name, np.ascontiguousarray(value, dtype=self._input_types[name]))
            return
        dtype, shape = np.dtype(value.dtype if not hasattr(value, "__cuda_array_interface__")
                                else value.__cuda_array_interface__["typestr"]), tuple(value.shape)
        if dtype != self._input_types[name]:
            raise BackendError(f"ort-cuda: input {name} is {dtype} on the device; the graph takes "
                               f"{np.dtype(self._input_types[name])}: convert it first")
        binding.bind_input(name, self.DEVICE, self.device_id, dtype, list(shape), ptr)

    def _run_bound(self, feeds: dict, options=None) -> dict:
        self._held = []
        binding = self.session.io_binding()
        for name in self.input_names:
            self._bind_input(binding, name, feeds[name])
        for name in self.output_names:
            binding.bind_output(name, self.DEVICE, self.device_id)
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding, options)
        binding.synchronize_outputs()
        return dict(zip(self.output_names, binding.get_outputs()))

    def _run_graph(self, feeds: dict) -> dict:
        """CUDA graph replay: one capture per input shape, on static input and output buffers."""
        ort = self.ort
        shapes = tuple(tuple(feeds[n].shape) for n in self.input_names)
        entry = self._graphs.get(shapes)
        if entry is None:
            if len(self._graphs) >= MAX_CUDA_GRAPHS:
                log.info("ort-cuda: %d CUDA graphs captured; shape %s runs without one", MAX_CUDA_GRAPHS, shapes)
                return self._run_bound_uncaptured(feeds)
            graph_id = len(self._graphs) + 1  # 0 is ORT's default graph; keep ids distinct per shape
            static_in = {n: ort.OrtValue.ortvalue_from_shape_and_type(list(s), self._input_types[n], self.DEVICE,
                                                                        self.device_id)
                         for n, s in zip(self.input_names, shapes)}
            binding = self.session.io_binding()
            for n, v in static_in.items():
                binding.bind_ortvalue_input(n, v)
            for n in self.output_names:
                binding.bind_output(n, self.DEVICE, self.device_id)
            entry = (graph_id, static_in, binding)
            self._graphs[shapes] = entry
        graph_id, static_in, binding = entry
        for n in self.input_names:  # the one copy CUDA graphs need: into the captured input buffer
            _copy_into(static_in[n], feeds[n], self._input_types[n])
        options = ort.RunOptions()
        options.add_run_config_entry("gpu_graph_id", str(graph_id))
        self.session.run_with_iobinding(binding, options)
        binding.synchronize_outputs()
        return dict(zip(self.output_names, binding.get_outputs()))

    def _run_bound_uncaptured(self, feeds: dict) -> dict:
        options = self.ort.RunOptions()
        options.add_run_config_entry("gpu_graph_id", "-1")  # ORT: -1 runs without capture or replay
        return self._run_bound(feeds, options)


def _on_device(value) -> bool:
    return device_pointer(value) is not None or is_dlpack_on_gpu(value)


def _copy_into(target, value, dtype) -> None:
    """Copy a host or device array into a device OrtValue of the same shape."""
    if is_dlpack_on_gpu(value) and device_pointer(value) is None:
        raise BackendError("ort-cuda with CUDA graphs takes host arrays or __cuda_array_interface__ arrays; "
                           "set DEPTHRT_CUDA_GRAPH=0 to pass DLPack-only arrays")
    if device_pointer(value) is None:
        target.update_inplace(np.ascontiguousarray(value, dtype=dtype))
        return
    from . import copy_device_to_device

    copy_device_to_device(target.data_ptr(), device_pointer(value), int(np.prod(value.shape)) * np.dtype(dtype).itemsize)
