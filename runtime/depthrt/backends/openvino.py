"""OpenVINO backend (``openvino``): the CPU default where OpenVINO is installed.

It reads the bundle's fp32 ONNX graph. ``precision="bf16"`` (opt-in) asks OpenVINO to run in
bfloat16, which is fast only on CPUs with AVX512-BF16 or AMX; elsewhere it is refused rather than
emulated. OpenVINO's CPU plugin picks bf16 by itself on such CPUs, so fp32 is requested explicitly:
reduced precision is always the user's choice.

Models are compiled once per input shape (static shapes run faster than OpenVINO's dynamic
kernels, and a video or a benchmark repeats one shape); the few most recent shapes are kept. In
fp32, a shape's first run uses one model compiled for any shape instead (it compiles in under a
second), so a single image or a folder of differently sized ones does not wait for a compile per
size; the per-shape model is made when the shape comes again. If the any-shape model fails to
run (not only to compile), the runner logs why and uses per-shape models from then on. Compiling one takes seconds (about
10 s for a Depth Anything V2 Small on two cores), so compiled models are also kept on disk, in OpenVINO's model cache: the next process that runs the same graph
at the same shape and precision loads it in a fraction of a second. The cache lives in
``$XDG_CACHE_HOME/depthrt/openvino`` (``~/.cache/...``), or where ``DEPTHRT_OPENVINO_CACHE`` says
(``off`` turns it off); the oldest files go once it holds more than ``DEPTHRT_OPENVINO_CACHE_MB``
(default 4096). OpenVINO keys each entry by the graph (weights included), the shape and the
settings, and recompiles over a damaged entry.

One runner may be called from several threads at once: each concurrent run takes its own infer
request (OpenVINO runs one inference per request at a time), results are the same as serial runs
bit for bit, and the cost is one set of activation buffers per thread running at the same moment.
Runs use the C default floating-point environment whatever the calling thread set (see
:mod:`depthrt.backends.fpenv`: with denormals-are-zero set, OpenVINO's any-shape model fails on
AVX2-only CPUs).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import BackendError, BundleError
from . import first_line, fpenv, usable_cores

log = logging.getLogger("depthrt")

_HINTS = {"fp32": "f32", "bf16": "bf16"}
MAX_COMPILED_SHAPES = 4  # each compiled shape holds its own weights copy in bf16 runs
CACHE_ENV, CACHE_LIMIT_ENV = "DEPTHRT_OPENVINO_CACHE", "DEPTHRT_OPENVINO_CACHE_MB"
MARKER_PREFIX = "depthrt-static-"  # empty files beside OpenVINO's entries: "this graph at this shape is in"
DEFAULT_CACHE_MB = 4096  # a compiled DA-V2 Small is ~100 MB per shape; Large ~1.3 GB


def cache_dir() -> Path | None:
    """Where compiled models are cached (created if needed), or None when off or not writable."""
    value = os.environ.get(CACHE_ENV)
    if value is not None and value.strip().lower() in ("", "0", "off", "no", "none"):
        return None
    if value:
        path = Path(value).expanduser()
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "depthrt" / "openvino"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.info("openvino: no model cache (%s: %s)", path, exc)
        return None
    if not os.access(path, os.W_OK | os.X_OK):
        log.info("openvino: no model cache (%s is not writable)", path)
        return None
    return path


def prune_cache(path: Path, limit_mb: float | None = None) -> list[Path]:
    """Delete the oldest cache entries until the folder holds at most ``limit_mb`` (the newest entry
    always stays), and the markers that may name a deleted entry; returns what was deleted. Files in
    use by another process stay readable until closed."""
    if limit_mb is None:
        try:
            limit_mb = float(os.environ.get(CACHE_LIMIT_ENV, DEFAULT_CACHE_MB))
        except ValueError:
            limit_mb = DEFAULT_CACHE_MB
    entries, markers = [], []
    for f in path.iterdir():
        try:
            if f.is_file():
                st = f.stat()
                (markers if f.name.startswith(MARKER_PREFIX) else entries).append((st.st_mtime, st.st_size, f))
        except OSError:  # removed meanwhile by another process
            continue
    entries.sort()
    total, removed = sum(size for _, size, _ in entries), []
    for _, size, f in entries[:-1]:
        if total <= limit_mb * 2**20:
            break
        try:
            f.unlink()
        except OSError:
            continue
        total -= size
        removed.append(f)
    if removed:  # a marker is written just after its entry: one older than every remaining entry is stale
        oldest = min((m for m, _, f in entries if f not in removed), default=float("inf"))
        for mtime, _, f in markers:
            if mtime < oldest:
                try:
                    f.unlink()
                    removed.append(f)
                except OSError:
                    continue
    return removed


def _openvino():
    try:
        import openvino
    except ImportError:
        return None
    return openvino


def unavailable(backend: str) -> str | None:
    if _openvino() is None:
        return "backend openvino needs OpenVINO, which is not installed: pip install 'depthrt[cpu]'"
    return None


ISA_CAP_ENV = "ONEDNN_MAX_CPU_ISA"  # oneDNN's cap on the instruction sets its kernels use (OpenVINO's too)
_CAPS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI")


def isa_cap() -> str | None:
    """The instruction-set cap set by ``ONEDNN_MAX_CPU_ISA`` (e.g. ``AVX2``), or None."""
    cap = os.environ.get(ISA_CAP_ENV, "").strip().upper()
    return cap if cap and cap not in ("ALL", "DEFAULT") else None


def supports_bf16(core) -> bool:
    """Whether this CPU runs bfloat16 natively (AVX512-BF16 or AMX), as OpenVINO sees it, and no
    ``ONEDNN_MAX_CPU_ISA`` cap keeps the kernels below it (OpenVINO reports the CPU's capabilities
    regardless of the cap, then fails to compile bf16 kernels)."""
    if isa_cap() in _CAPS_WITHOUT_BF16:
        return False
    try:
        return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # an OpenVINO without the property: be conservative
        return False


def open_runner(bundle: Path, graph: dict, backend: str, precision: str, threads: int | None):
    if precision == "fp16":
        raise BackendError("backend openvino runs fp32 or bf16 on the CPU, not fp16: use --precision bf16 (fast on "
                           "CPUs with AVX512-BF16/AMX) or fp32; fp16 is for the GPU backends (ort-cuda, trt)")
    if graph.get("precision", "fp32") != "fp32":
        raise BackendError(f"backend openvino reads the fp32 graph, and '{graph['file']}' is {graph['precision']}")
    return OpenVinoRunner(bundle / graph["file"], precision=precision, threads=threads)


class OpenVinoRunner:
    """One ONNX graph compiled by OpenVINO for the CPU, per input shape."""

    def __init__(self, path: Path, precision: str = "fp32", threads: int | None = None):
        ov = _openvino()
        if ov is None:
            raise BackendError(unavailable("openvino"))
        self.name = "openvino"
        self.precision = precision
        self.core = ov.Core()
        if precision == "bf16" and not supports_bf16(self.core):
            cap = isa_cap()
            which = (f"this one is capped at {cap} by {ISA_CAP_ENV}" if cap in _CAPS_WITHOUT_BF16
                     else "this one has neither")
            raise BackendError(f"precision bf16 needs a CPU with AVX512-BF16 or AMX, and {which}: use --precision fp32")
        self.config = {
            "INFERENCE_PRECISION_HINT": _HINTS[precision],
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": int(threads or usable_cores()),
        }
        try:
            self.model = self.core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError with a long C++ trace
            raise BundleError(f"OpenVINO cannot read '{path}': {first_line(exc)}; the file is damaged or not an ONNX "
                              "graph: re-export the bundle") from None
        self.input_names = [i.get_any_name() for i in self.model.inputs]
        self.output_names = [o.get_any_name() for o in self.model.outputs]
        self._compiled: OrderedDict[tuple, _Compiled] = OrderedDict()
        # fp32: a shape's first run goes through one model compiled for any shape (under a second to
        # compile, ~16% slower, within 1e-5 of the static one); a shape that comes again gets its own.
        # bf16 always compiles per shape: its dynamic kernels differ from the static ones by ~5e-2.
        self.dynamic_first = precision == "fp32" and any(i.get_partial_shape().is_dynamic for i in self.model.inputs)
        self._dynamic: _Compiled | None = None
        self._seen: set[tuple] = set()  # shapes run at least once
        self._lock, self._compile_lock = threading.Lock(), threading.Lock()
        self.path, self.version = Path(path), str(getattr(ov, "__version__", "?"))
        self.cache = cache_dir()
        if self.cache is not None:
            self.config["CACHE_DIR"] = str(self.cache)

    def _compile(self, model) -> "_Compiled":
        try:
            with fpenv.default():
                compiled = self.core.compile_model(model, "CPU", self.config)
        except Exception as exc:
            if self.cache is None:
                raise
            # a cache that cannot be written (disk full, removed) must not stop inference
            log.info("openvino: compiling without the model cache (%s)", first_line(exc))
            self.cache = None
            self.config.pop("CACHE_DIR", None)
            with fpenv.default():
                compiled = self.core.compile_model(model, "CPU", self.config)
        if self.cache is not None:
            prune_cache(self.cache)
        return _Compiled(compiled, self.output_names)

    def _marker(self, shapes: tuple) -> Path | None:
        """A file saying this graph was compiled for ``shapes`` into the cache: then a new process
        loads that model (fast) instead of going through the any-shape one."""
        if self.cache is None:
            return None
        try:
            st = self.path.stat()
        except OSError:
            return None
        key = f"{self.path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{shapes}|{self.precision}|{self.version}"
        return self.cache / f"{MARKER_PREFIX}{hashlib.sha256(key.encode()).hexdigest()[:32]}"

    def _cached_before(self, shapes: tuple) -> bool:
        marker = self._marker(shapes)
        return marker is not None and marker.exists()

    def _model_for(self, shapes: tuple) -> tuple["_Compiled", bool]:
        """The compiled model for ``shapes`` and whether it is the any-shape one (compiling it if
        needed). Lookups hold ``_lock`` briefly; compiles hold ``_compile_lock``, so a thread
        running an already compiled shape never waits for another thread's compile."""
        with self._lock:
            dynamic = self._first_run(shapes)
            found = self._ready(shapes, dynamic)
        if found is not None:
            return found
        with self._compile_lock:
            with self._lock:  # another thread may have compiled it meanwhile
                found = self._ready(shapes, dynamic)
            if found is not None:
                return found
            if dynamic and self.dynamic_first:
                log.info("openvino: compiling for any input shape (fp32)")
                try:
                    compiled = self._compile(self.model)
                except Exception as exc:  # a graph OpenVINO compiles only at fixed shapes
                    log.info("openvino: per-shape models only (%s)", first_line(exc))
                    self.dynamic_first = False
                else:
                    with self._lock:
                        self._dynamic = compiled
                    return compiled, True
            model = self.model.clone()
            model.reshape({name: list(shape) for name, shape in zip(self.input_names, shapes)})
            log.info("openvino: compiling for input shape %s (%s)", shapes, self.precision)
            compiled = self._compile(model)
            marker = self._marker(shapes)
            if marker is not None:
                try:
                    marker.touch()
                except OSError:
                    pass
            with self._lock:
                self._dynamic = None  # its own weights copy: give it back (recompiling it is cheap, and cached)
                self._compiled[shapes] = compiled
                while len(self._compiled) > MAX_COMPILED_SHAPES:
                    self._compiled.popitem(last=False)
            return compiled, False

    def _first_run(self, shapes: tuple) -> bool:
        """Count a run of ``shapes``; whether it goes through the any-shape model (its first run in
        this process, when no earlier process left its own model in the cache). Under ``_lock``."""
        if not self.dynamic_first:
            return False
        if len(self._seen) > 4096:  # a stream of ever-new sizes: forget, keep memory bounded
            self._seen.clear()
        first = shapes not in self._seen
        self._seen.add(shapes)
        return first and not self._cached_before(shapes)

    def _ready(self, shapes: tuple, dynamic: bool):
        """(compiled model, is_dynamic) when one is ready for this run, else None. Under ``_lock``."""
        compiled = self._compiled.get(shapes)
        if compiled is not None:
            self._compiled.move_to_end(shapes)
            return compiled, False
        if dynamic and self.dynamic_first and self._dynamic is not None:
            return self._dynamic, True
        return None

    def _stop_dynamic(self, exc: BaseException) -> None:
        """The any-shape model failed to run: per-shape models from now on (they compile the graph's
        shape arithmetic into constants, and a failure of one shape is likely a failure of all)."""
        log.warning("openvino: the model compiled for any input shape failed to run (%s); using one model per "
                    "input shape from now on", first_line(exc))
        with self._lock:
            self.dynamic_first = False
            self._dynamic = None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph; safe to call from several threads at once (each concurrent run takes its
        own OpenVINO infer request, see :class:`_Compiled`)."""
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise BackendError(f"openvino: the graph needs input(s) {', '.join(missing)}")
        arrays = [np.ascontiguousarray(feeds[n], dtype=np.float32) for n in self.input_names]
        inputs = dict(zip(self.input_names, arrays))
        shapes = tuple(a.shape for a in arrays)
        try:
            compiled, dynamic = self._model_for(shapes)
            try:
                return compiled.infer(inputs)
            except Exception as exc:
                if not dynamic:
                    raise
                self._stop_dynamic(exc)
            compiled, _ = self._model_for(shapes)
            return compiled.infer(inputs)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"openvino failed to run the graph: {first_line(exc)}") from None


class _Compiled:
    """One compiled model and its idle infer requests. An OpenVINO infer request runs one inference
    at a time ("Infer Request is busy" otherwise), so each concurrent run takes an idle one or
    makes a new one (each holds its own activation buffers: memory grows with the number of
    threads running this model at the same moment, not with the number of runs)."""

    def __init__(self, compiled, output_names: list[str]):
        self.compiled, self.output_names = compiled, output_names
        self._idle: list = []
        self._lock = threading.Lock()

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            request = self._idle.pop() if self._idle else None
        if request is None:
            request = self.compiled.create_infer_request()
        try:
            with fpenv.default():  # whatever the caller set: see depthrt.backends.fpenv
                request.infer(inputs)
            # The request owns its output buffers and reuses them on the next run: copy out.
            return {n: np.array(request.get_tensor(n).data, copy=True) for n in self.output_names}
        finally:
            with self._lock:
                self._idle.append(request)
