"""TensorRT backends: ``trt`` (TensorRT 10 or 11, or its lean runtime) and ``trt-rtx`` (TensorRT for RTX GPUs).

Plans come from `depthrt build` and sit in ``BUNDLE/engines/<key>/<graph>.plan`` with their
metadata beside them in ``<graph>.plan.json`` (so ``trtexec`` can still read the plan). The
metadata records which Python modules can load the plan (``plan.runtimes``): ``tensorrt`` (full
TensorRT), ``tensorrt_lean`` (TensorRT's lean runtime, ~44 MB, no builder: only plans built with
``--version-compatible``) or ``tensorrt_rtx``. The ``trt`` backend loads a plan through whichever
of them is installed, the lean runtime first when the plan allows it. The metadata is checked before
TensorRT sees the plan: another GPU or TensorRT version, a plan this runtime cannot load, a
re-exported graph, or a truncated or replaced plan each fail with a message naming what to run.
The runner binds tensors by name, runs ``execute_async_v3`` on its own CUDA stream with
device buffers allocated once per input shape, stages through pinned host memory, and replays a
captured CUDA graph when a shape repeats. Device arrays (``__cuda_array_interface__``) go in by one
device-to-device copy and come back as :class:`~depthrt.backends.DeviceArray` (no host copies).

Nothing here imports tensorrt or cuda-python at import time: ``import depthrt`` stays lean.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.metadata
import json
import logging
import shlex
import subprocess
import threading
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BackendError, BundleError, InputError
from . import device_pointer

log = logging.getLogger("depthrt")

ENGINES_DIR = "engines"
METADATA_FORMAT = "depthrt-engine"
METADATA_VERSION = 2  # 2: strongly typed plans; plan.runtimes says which modules load the plan
# The modules that load plans (the names engine metadata records), with their import names.
# `tensorrt_rtx_bindings` is what the pip wheels install (the `tensorrt-rtx` meta package is a stub);
# `tensorrt_rtx` is the name in NVIDIA's own wheels.
FULL, LEAN, RTX = "tensorrt", "tensorrt_lean", "tensorrt_rtx"
_RUNTIME_IMPORTS = {FULL: ("tensorrt",), LEAN: ("tensorrt_lean",), RTX: ("tensorrt_rtx_bindings", "tensorrt_rtx")}
_TARGET_RUNTIMES = {"trt": (FULL, LEAN), "trt-rtx": (RTX,)}  # what can run a target's plans
_IMPORTS = {"trt": _RUNTIME_IMPORTS[FULL], "trt-rtx": _RUNTIME_IMPORTS[RTX]}  # the builders
_DISTRIBUTIONS = {
    "trt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-bindings", "tensorrt-cu12-bindings"),
    "trt-rtx": ("tensorrt-rtx-cu13-bindings", "tensorrt-rtx-cu12-bindings", "tensorrt-rtx"),
}
_PIP = {"trt": "pip install 'depthrt[trt]' (tensorrt-cu13 and cuda-python)",
        "trt-lean": "pip install 'depthrt[trt-lean]' (tensorrt-lean-cu13 and cuda-python)",
        "trt-rtx": "pip install tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs cuda-python"}
RTX_COMPUTE_CAPABILITIES = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")
_MAX_SHAPES = 4  # shapes whose buffers and CUDA graphs stay allocated at once


def _import(names: tuple[str, ...], needs: tuple[str, ...]) -> Any | None:
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        # `pip install tensorrt-stubs` leaves a `tensorrt/` folder of .pyi files only; Python imports it
        # as an empty namespace package, which is not TensorRT.
        if all(hasattr(module, attr) for attr in needs):
            return module
    return None


def load_tensorrt(target: str = "trt") -> Any | None:
    """The TensorRT module that *builds* ``target``'s plans (it has a Builder), or None when not installed."""
    return _import(_IMPORTS[target], ("Builder", "Runtime"))


def load_runtime(name: str) -> Any | None:
    """The module ``name`` (FULL, LEAN or RTX) when it is installed and can load plans, else None."""
    return _import(_RUNTIME_IMPORTS[name], ("Runtime",))


def plan_runtimes(target: str, version_compatible: bool) -> list[str]:
    """The modules that can load a plan, preferred first: the lean runtime only loads version-compatible plans."""
    if target == "trt-rtx":
        return [RTX]
    return [LEAN, FULL] if version_compatible else [FULL]


def installed_runtimes(target: str) -> dict[str, str]:
    """{module name: version} of the modules installed here that can run ``target``'s plans."""
    found = {}
    for name in _TARGET_RUNTIMES[target]:
        module = load_runtime(name)
        if module is not None:
            found[name] = str(module.__version__)
    return found


def tensorrt_version(target: str = "trt", load: bool = False) -> str | None:
    """The installed TensorRT version; ``load=False`` reads package metadata without importing it."""
    if load:
        module = load_tensorrt(target)
        return str(module.__version__) if module is not None else None
    for dist in _DISTRIBUTIONS[target]:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _cudart() -> Any | None:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            return None
    return cudart


@lru_cache(maxsize=1)
def query_gpu() -> tuple[str, str] | None:
    """(name, compute capability "X.Y") of GPU 0, or None when there is none (or no way to ask)."""
    cudart = _cudart()
    if cudart is not None:
        err, prop = cudart.cudaGetDeviceProperties(0)
        if err == cudart.cudaError_t.cudaSuccess:
            name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
            return name.strip("\x00 ").strip(), f"{prop.major}.{prop.minor}"
        return None
    try:  # no cuda-python: the driver's own tool still names the GPU (for keys and messages)
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader", "-i", "0"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        name, cap = (s.strip() for s in out.strip().splitlines()[0].rsplit(",", 1))
        return name, cap
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def unavailable(backend: str) -> str | None:
    target = backend
    if not installed_runtimes(target):
        if target == "trt":
            return (f"backend trt needs TensorRT or its lean runtime, and neither is installed here ({_PIP['trt']}; "
                    f"or the runtime only: {_PIP['trt-lean']}); then build an engine with `depthrt build BUNDLE`")
        return (f"backend trt-rtx needs TensorRT for RTX, which is not installed here ({_PIP['trt-rtx']}); then "
                "build an engine with `depthrt build BUNDLE --target trt-rtx`")
    if _cudart() is None:
        found = ", ".join(f"{n} {v}" for n, v in installed_runtimes(target).items())
        return (f"backend {backend}: TensorRT is installed here ({found}) but needs cuda-python for its CUDA stream "
                "and buffers: pip install cuda-python")
    gpu = query_gpu()
    if gpu is None:
        return f"backend {backend} needs an NVIDIA GPU, and none is usable here"
    if target == "trt-rtx" and gpu[1] not in RTX_COMPUTE_CAPABILITIES:
        return (f"backend trt-rtx runs on GeForce/RTX PRO GPUs; {gpu[0]} (compute capability {gpu[1]}) needs "
                "full TensorRT: --backend trt")
    return None


def build_command(bundle: Path, meta: dict) -> str:
    """The `depthrt build` command that remakes the engine ``meta`` describes, for this machine."""
    return shlex.join(["depthrt", "build", str(bundle), *meta.get("build_args", [])])


def runtime_for(meta: dict, target: str, installed: dict[str, str]) -> tuple[str | None, str | None]:
    """(module that loads the plan, None) or (None, why none here can)."""
    plan = meta["plan"]
    runtimes = plan.get("runtimes") or [FULL if target == "trt" else RTX]  # format 1 had no list
    usable = [name for name in runtimes if name in installed]
    if not usable:
        if LEAN in installed and LEAN not in runtimes:
            return None, ("the engine was built without --version-compatible, and TensorRT's lean runtime, the only "
                          "TensorRT here, loads only version-compatible plans")
        return None, f"the engine loads with {' or '.join(runtimes)}, which is not installed here"
    return usable[0], None


_NAMES = {FULL: "TensorRT", LEAN: "TensorRT's lean runtime", RTX: "TensorRT-RTX"}


def _environment_mismatch(meta: dict, target: str, runtime: str, version: str,
                          gpu: tuple[str, str] | None) -> str | None:
    env = meta["plan"]["environment"]
    # A plan loads only in the TensorRT release that built it (a version-compatible plan without an
    # embedded lean runtime too: it needs the lean runtime of its own version).
    if env["tensorrt_version"] != version:
        built = "TensorRT" if target == "trt" else "TensorRT-RTX"
        return (f"the engine was built with {built} {env['tensorrt_version']}, and this machine has "
                f"{_NAMES[runtime]} {version}")
    if target == "trt" and gpu is not None and (env["gpu_name"], env["compute_capability"]) != tuple(gpu):
        return (f"the engine was built for {env['gpu_name']} (compute capability {env['compute_capability']}), "
                f"and this GPU is {gpu[0]} (compute capability {gpu[1]})")
    targets = meta["plan"]["options"].get("compute_capabilities")
    if target == "trt-rtx" and gpu is not None and targets and gpu[1] not in targets:
        return f"the engine targets compute capabilities {', '.join(targets)}, and this GPU has {gpu[1]}"
    return None


def find_engine(bundle: Path, graph: dict, target: str, precision: str, version: str | Mapping[str, str] | None,
                gpu: tuple[str, str] | None) -> tuple[Path, dict]:
    """The plan (and its metadata) for ``graph`` that this machine can run; pure file checks, no TensorRT.

    ``version``: the runtimes installed here (``{module: version}``, as :func:`installed_runtimes` gives),
    or the version of the target's full runtime alone.
    """
    installed = dict(version) if isinstance(version, Mapping) else \
        {} if version is None else {_TARGET_RUNTIMES[target][0]: version}
    candidates = []
    for meta_path in sorted((bundle / ENGINES_DIR).glob(f"*/{graph['name']}.plan.json")):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            plan = meta["plan"]
            fits = (meta.get("format") == METADATA_FORMAT and plan["graph"] == graph["name"]
                    and plan["options"]["target"] == target)
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring '%s': not depthrt engine metadata", meta_path)
            continue
        # A plan built from an older export of the graph is stale: skip it. (An fp16 variant's plan
        # records its logical graph's hash as source_sha256.)
        if fits and graph["sha256"] in (plan["onnx_sha256"], plan.get("source_sha256")):
            candidates.append((meta_path, meta))
    flag = " --target trt-rtx" if target == "trt-rtx" else ""
    same_precision = [c for c in candidates if c[1]["plan"]["options"]["precision"] == precision]
    if not same_precision:
        built = sorted({m["plan"]["options"]["precision"] for _, m in candidates})
        also = f" (it has {', '.join(built)} engines: use precision {' or '.join(built)})" if built else ""
        raise BackendError(f"bundle '{bundle}' has no {target} engine for graph '{graph['name']}' at precision "
                           f"{precision}{also}; build one: depthrt build {shlex.quote(str(bundle))} "
                           f"--precision {precision}{flag}")
    reasons = []
    # Newest first: after a rebuild with other options, the engine the user just built is the one used.
    for meta_path, meta in sorted(same_precision, key=lambda c: str(c[1].get("created", "")), reverse=True):
        runtime, reason = runtime_for(meta, target, installed)
        if runtime is not None:
            reason = _environment_mismatch(meta, target, runtime, installed[runtime], gpu)
        if reason is None:
            return _checked_plan(meta_path, meta, bundle), meta
        reasons.append((reason, meta, runtime))
    reason, meta, runtime = reasons[0]
    if runtime is None and LEAN in installed:  # the lean runtime here, and a plan it cannot load
        args = meta.get("build_args", [])
        command = build_command(bundle, {"build_args": [*args, "--version-compatible"]})
        raise BackendError(f"{reason}: rebuild it with `{command}` where full TensorRT and this GPU are, or "
                           f"install full TensorRT here: {_PIP['trt']}")
    raise BackendError(f"{reason}: rebuild the engine on this machine with `{build_command(bundle, meta)}`")


def _checked_plan(meta_path: Path, meta: dict, bundle: Path) -> Path:
    """The plan file beside ``meta_path``, checked against the size and hash its metadata records."""
    plan = meta_path.parent / meta.get("plan_file", "")
    size = plan.stat().st_size if plan.is_file() else None
    rebuild = f"delete '{meta_path.parent}' and rebuild with `{build_command(bundle, meta)}`"
    if size != meta.get("plan_bytes"):
        state = "missing" if size is None else f"{size} bytes, not the {meta.get('plan_bytes')} recorded"
        raise BundleError(f"engine '{plan}' is {state}: it was truncated or replaced; {rebuild}")
    from ..manifest import sha256_file

    if sha256_file(plan) != meta.get("plan_sha256"):
        raise BundleError(f"engine '{plan}' does not match the hash in its metadata: it was replaced; {rebuild}")
    return plan


def covering_build(rebuild: str, profile: dict, shape: tuple) -> str | None:
    """The `depthrt build` command ``rebuild`` with --min/--opt/--max HxW widened to cover ``shape``, an
    RGB input (N, 3, H, W) that only its height and width put outside ``profile``; None otherwise
    (another input, such as a latent, or the batch: those sizes are not what --min/--max set)."""
    lo, opt, hi = profile["min"], profile["opt"], profile["max"]
    if len(shape) != 4 or lo[1] != 3 or shape[1] != 3 or not lo[0] <= shape[0] <= hi[0]:
        return None
    low = [min(a, v) for a, v in zip(lo[2:], shape[2:])]
    high = [max(b, v) for b, v in zip(hi[2:], shape[2:])]
    args, kept = shlex.split(rebuild), []
    while args:
        arg = args.pop(0)
        if arg in ("--min", "--opt", "--max"):
            args = args[1:]
            continue
        kept.append(arg)
    return shlex.join(kept + ["--min", "{}x{}".format(*low), "--opt", "{}x{}".format(*opt[2:]),
                              "--max", "{}x{}".format(*high)])


def check_shapes(profiles: dict[str, dict], feeds: dict[str, np.ndarray], rebuild: str = "depthrt build BUNDLE") -> None:
    """Reject inputs the engine's profile does not cover, naming the supported range and the build
    command (``rebuild``: the one that made this engine) that would cover them."""
    if set(feeds) != set(profiles):
        raise InputError(f"the engine takes inputs {sorted(profiles)}, and was given {sorted(feeds)}")
    for name, profile in profiles.items():
        shape, lo, hi = tuple(feeds[name].shape), profile["min"], profile["max"]
        if len(shape) != len(lo) or not all(a <= v <= b for a, v, b in zip(lo, shape, hi)):
            dims = "x".join
            command = covering_build(rebuild, profile, shape)
            how = (f"rebuild the engine to cover it: `{command}`" if command else
                   f"rebuild the engine with a wider profile (`{rebuild}` with --min HxW --opt HxW --max HxW, "
                   "--batch MIN:OPT:MAX)")
            raise InputError(
                f"input '{name}' of shape {dims(map(str, shape))} is outside the engine's profile: it supports "
                f"{dims(map(str, lo))} to {dims(map(str, hi))}; resize the image into that range, or {how}"
            )


def open_runner(bundle: Path, graph: dict, backend: str, precision: str, threads: int | None):
    reason = unavailable(backend)
    if reason is not None:
        raise BackendError(reason)
    installed = installed_runtimes(backend)
    plan, meta = find_engine(bundle, graph, backend, precision, installed, query_gpu())
    runtime, _ = runtime_for(meta, backend, installed)
    return TrtRunner(plan, meta, backend, build_command(bundle, meta), runtime=runtime)


class _Cuda:
    """Thin checked calls into cuda-python's runtime API (each returns (error, *values))."""

    def __init__(self) -> None:
        self.rt: Any = _cudart()

    def __call__(self, fn: str, *args: Any) -> Any:
        err, *values = getattr(self.rt, fn)(*args)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise BackendError(f"CUDA {fn} failed: {self.rt.cudaGetErrorString(err)[1].decode()}")
        return values[0] if len(values) == 1 else values or None


class _ShapeState:
    """Device buffers, pinned host buffers and (once captured) a CUDA graph for one set of input shapes."""

    def __init__(self, cuda: _Cuda, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, np.dtype]):
        self.cuda, self.runs, self.graph_exec, self.device, self.host = cuda, 0, None, {}, {}
        self._pinned = []
        for name, shape in shapes.items():
            count = int(np.prod(shape))
            nbytes = max(1, count * dtypes[name].itemsize)
            self.device[name] = cuda("cudaMalloc", nbytes)
            ptr = cuda("cudaMallocHost", nbytes)
            self._pinned.append(ptr)
            raw = (ctypes.c_byte * nbytes).from_address(ptr)
            self.host[name] = np.frombuffer(memoryview(raw), dtype=dtypes[name], count=count).reshape(shape)

    def free(self) -> None:
        if self.graph_exec is not None:
            self.cuda("cudaGraphExecDestroy", self.graph_exec)
        for ptr in self.device.values():
            self.cuda("cudaFree", ptr)
        for ptr in self._pinned:
            self.cuda("cudaFreeHost", ptr)
        self.device, self.host, self._pinned = {}, {}, []


class _DeviceOutput:
    """Keeps an output's buffers alive behind a DeviceArray and copies it to the host on request."""

    def __init__(self, runner: "TrtRunner", state: _ShapeState, name: str):
        self.runner, self.state, self.name = runner, state, name

    def numpy(self) -> np.ndarray:
        host, rt = self.state.host[self.name], self.runner.cuda.rt
        self.runner.cuda("cudaMemcpy", host.ctypes.data, self.state.device[self.name], host.nbytes,
                         rt.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        return host.copy()


class TrtRunner:
    """One TensorRT plan, run by tensor name on an explicit stream."""

    def __init__(self, plan: Path, meta: dict, backend: str, rebuild: str, runtime: str | None = None):
        self.name, self.meta = backend, meta
        self.profiles = meta["plan"]["profiles"]
        self.rebuild = rebuild  # the `depthrt build` command that made this engine
        self.runtime = runtime or (FULL if backend == "trt" else RTX)  # the module that loads the plan
        if TYPE_CHECKING:  # mypy checks these calls against tensorrt-stubs (scripts/typecheck-trt)
            import tensorrt as trt
        else:  # tensorrt, tensorrt_lean and tensorrt_rtx share this runtime API
            trt = load_runtime(self.runtime)
        self.cuda = _Cuda()
        self._logger = trt.Logger(trt.Logger.ERROR)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise BundleError(f"{self.runtime} {trt.__version__} could not load '{plan}': the file is damaged or was "
                              f"not built by this TensorRT for this GPU; rebuild it with `{rebuild}`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.stream = self.cuda("cudaStreamCreate")
        self._states: dict[tuple, _ShapeState] = {}
        self._current: tuple | None = None
        self.use_graphs = True
        self._run_lock = threading.Lock()

    def _state_for(self, feeds: dict[str, np.ndarray]) -> _ShapeState:
        key = tuple(tuple(feeds[n].shape) for n in self.inputs)
        state = self._states.get(key)
        if key != self._current:  # TensorRT keeps one shape per context: set it (cheap) on every switch
            for name in self.inputs:
                if not self.context.set_input_shape(name, feeds[name].shape):
                    raise InputError(f"TensorRT refused shape {feeds[name].shape} for input '{name}'")
            if state is None:
                if len(self._states) >= _MAX_SHAPES:  # keep memory bounded for streams of varied sizes
                    self._states.pop(next(iter(self._states))).free()
                shapes = {n: tuple(feeds[n].shape) for n in self.inputs}
                shapes.update({n: tuple(self.context.get_tensor_shape(n)[:]) for n in self.outputs})
                state = self._states[key] = _ShapeState(self.cuda, shapes, self.dtypes)
            for name, ptr in state.device.items():
                self.context.set_tensor_address(name, int(ptr))
            self._current = key
        assert state is not None
        return state

    def _stage(self, state: _ShapeState, feeds: dict[str, np.ndarray]) -> None:
        """Host inputs into the pinned staging buffers (the only host-side copy)."""
        for name in self.inputs:
            np.copyto(state.host[name], feeds[name], casting="same_kind")

    def _upload(self, state: _ShapeState) -> None:
        """Staged inputs to the device, asynchronously on our stream."""
        h2d = self.cuda.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        for name in self.inputs:
            host = state.host[name]
            self.cuda("cudaMemcpyAsync", state.device[name], host.ctypes.data, host.nbytes, h2d, self.stream)

    def _execute(self) -> None:
        if not self.context.execute_async_v3(int(self.stream)):
            raise BackendError(f"{self.name}: TensorRT failed to run the engine (see the TensorRT log above)")

    def _enqueue(self, state: _ShapeState) -> None:
        """Copies in, the engine, copies out: all asynchronous on our stream."""
        d2h = self.cuda.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._upload(state)
        self._execute()
        for name in self.outputs:
            host = state.host[name]
            self.cuda("cudaMemcpyAsync", host.ctypes.data, state.device[name], host.nbytes, d2h, self.stream)

    def _capture(self, state: _ShapeState) -> None:
        """Record copies + engine as a CUDA graph: replaying it skips per-layer launch overhead."""
        rt = self.cuda.rt
        try:
            self.cuda("cudaStreamBeginCapture", self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
            try:
                self._enqueue(state)
            finally:
                graph = self.cuda("cudaStreamEndCapture", self.stream)
            state.graph_exec = self.cuda("cudaGraphInstantiate", graph, 0)
            self.cuda("cudaGraphDestroy", graph)
        except BackendError as exc:  # some engines cannot be captured: run them plainly instead
            log.info("%s: CUDA graph capture failed (%s); running without graphs", self.name, exc)
            self.use_graphs = False

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Host arrays in, host arrays out; device arrays (``__cuda_array_interface__``: CuPy, PyTorch)
        in, :class:`~depthrt.backends.DeviceArray` out: the engine's own output buffer, valid until
        this runner's next run from any thread (copy it to keep it). Safe from several threads: runs
        take turns (one lock), since the execution context holds one input shape and the staging
        buffers and captured graphs are shared; the GPU runs one engine at a time anyway, so the cost
        is only that host-side copies of different threads do not overlap."""
        check_shapes(self.profiles, feeds, self.rebuild)
        with self._run_lock:
            return self._run_locked(feeds)

    def _run_locked(self, feeds: dict[str, Any]) -> dict[str, Any]:
        if any(device_pointer(feeds[name]) is not None for name in self.inputs):
            return self._run_on_device(feeds)
        state = self._state_for(feeds)
        self._stage(state, feeds)
        if state.graph_exec is None and self.use_graphs and state.runs >= 1:
            self._capture(state)  # the first run of a shape ran plainly, as TensorRT asks before capture
        if state.graph_exec is not None:
            self.cuda("cudaGraphLaunch", state.graph_exec, self.stream)
        else:
            self._enqueue(state)
        self.cuda("cudaStreamSynchronize", self.stream)
        state.runs += 1
        return {name: state.host[name].copy() for name in self.outputs}

    def _run_on_device(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Device inputs: copied device to device into the engine's buffers; outputs left on the device."""
        from . import DeviceArray

        pointers = {}
        for name in self.inputs:
            ptr = device_pointer(feeds[name])
            if ptr is None:
                raise BackendError(f"{self.name}: pass all inputs on the device or all on the host ('{name}' is a "
                                   "host array)")
            dtype = np.dtype(feeds[name].__cuda_array_interface__["typestr"])
            if dtype != self.dtypes[name]:
                raise BackendError(f"{self.name}: input {name} is {dtype} on the device; the engine takes "
                                   f"{self.dtypes[name]}: convert it first")
            pointers[name] = ptr
        state = self._state_for(feeds)
        d2d = self.cuda.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        for name, ptr in pointers.items():
            self.cuda("cudaMemcpyAsync", state.device[name], ptr, state.host[name].nbytes, d2d, self.stream)
        self._execute()
        self.cuda("cudaStreamSynchronize", self.stream)
        return {name: DeviceArray(int(state.device[name]), state.host[name].shape, self.dtypes[name],
                                  keep=_DeviceOutput(self, state, name)) for name in self.outputs}

    def engine_time_ms(self, feeds: dict[str, np.ndarray], repeats: int = 10) -> list[float]:
        """GPU time of the engine alone, in ms per run: what ``trtexec`` reports as "GPU Compute Time".

        The inputs are copied to the device once; then each run is ``execute_async_v3`` between two
        CUDA events on our stream (no host copies, no CUDA graph), timed by the events.
        """
        check_shapes(self.profiles, feeds, self.rebuild)
        state = self._state_for(feeds)
        self._stage(state, feeds)
        self._upload(state)
        start, stop = self.cuda("cudaEventCreate"), self.cuda("cudaEventCreate")
        times = []
        try:
            for _ in range(max(1, repeats)):
                self.cuda("cudaEventRecord", start, self.stream)
                self._execute()
                self.cuda("cudaEventRecord", stop, self.stream)
                self.cuda("cudaEventSynchronize", stop)
                times.append(float(self.cuda("cudaEventElapsedTime", start, stop)))
        finally:
            self.cuda("cudaEventDestroy", start)
            self.cuda("cudaEventDestroy", stop)
        return times

    def __del__(self) -> None:
        try:
            for state in self._states.values():
                state.free()
            self.cuda("cudaStreamDestroy", self.stream)
        except Exception:  # interpreter shutdown: CUDA may already be gone
            pass
