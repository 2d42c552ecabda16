"""OpenVINO backend (``openvino``): the CPU default where OpenVINO is installed.

It reads the bundle's fp32 ONNX graph. ``precision="bf16"`` (opt-in) asks OpenVINO to run in
bfloat16, which is fast only on CPUs with AVX512-BF16 or AMX; elsewhere it is refused rather than
emulated. OpenVINO's CPU plugin picks bf16 by itself on such CPUs, so fp32 is requested explicitly:
reduced precision is always the user's choice.

Models are compiled once per input shape (static shapes run faster than OpenVINO's dynamic
kernels, and a video or a benchmark repeats one shape); the few most recent shapes are kept. In
fp32, a shape's first run uses one model compiled for any shape instead (it compiles in under a
second), so a single image or a folder of differently sized ones does not wait for a compile per
size; the per-shape model is made when the shape comes again. Compiling one takes seconds (about
10 s for a Depth Anything V2 Small on two cores), so compiled models are also kept on disk, in OpenVINO's model cache: the next process that runs the same graph
at the same shape and precision loads it in a fraction of a second. The cache lives in
``$XDG_CACHE_HOME/depthrt/openvino`` (``~/.cache/...``), or where ``DEPTHRT_OPENVINO_CACHE`` says
(``off`` turns it off); the oldest files go once it holds more than ``DEPTHRT_OPENVINO_CACHE_MB``
(default 4096). OpenVINO keys each entry by the graph (weights included), the shape and the
settings, and recompiles over a damaged entry.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import BackendError, BundleError
from . import first_line, usable_cores

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


def supports_bf16(core) -> bool:
    """Whether this CPU runs bfloat16 natively (AVX512-BF16 or AMX), as OpenVINO sees it."""
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
            raise BackendError("precision bf16 needs a CPU with AVX512-BF16 or AMX, and this one has neither: use "
                               "--precision fp32")
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
        self._compiled: OrderedDict[tuple, object] = OrderedDict()
        # fp32: a shape's first run goes through one model compiled for any shape (under a second to
        # compile, ~16% slower, within 1e-5 of the static one); a shape that comes again gets its own.
        # bf16 always compiles per shape: its dynamic kernels differ from the static ones by ~5e-2.
        self.dynamic_first = precision == "fp32" and any(i.get_partial_shape().is_dynamic for i in self.model.inputs)
        self._dynamic = None
        self._seen: set[tuple] = set()  # shapes run at least once
        self.path, self.version = Path(path), str(getattr(ov, "__version__", "?"))
        self.cache = cache_dir()
        if self.cache is not None:
            self.config["CACHE_DIR"] = str(self.cache)

    def _compile(self, model):
        try:
            compiled = self.core.compile_model(model, "CPU", self.config)
        except Exception as exc:
            if self.cache is None:
                raise
            # a cache that cannot be written (disk full, removed) must not stop inference
            log.info("openvino: compiling without the model cache (%s)", first_line(exc))
            self.cache = None
            self.config.pop("CACHE_DIR", None)
            compiled = self.core.compile_model(model, "CPU", self.config)
        if self.cache is not None:
            prune_cache(self.cache)
        return compiled.create_infer_request()

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

    def _request(self, shapes: tuple):
        request = self._compiled.get(shapes)
        if request is not None:
            self._compiled.move_to_end(shapes)
            return request
        if self.dynamic_first:
            if len(self._seen) > 4096:  # a stream of ever-new sizes: forget, keep memory bounded
                self._seen.clear()
            first_run = shapes not in self._seen
            self._seen.add(shapes)
            if first_run and not self._cached_before(shapes):
                if self._dynamic is None:
                    log.info("openvino: compiling for any input shape (fp32)")
                    try:
                        self._dynamic = self._compile(self.model)
                    except Exception as exc:  # a graph OpenVINO compiles only at fixed shapes
                        log.info("openvino: per-shape models only (%s)", first_line(exc))
                        self.dynamic_first = False
                if self._dynamic is not None:
                    return self._dynamic
        model = self.model.clone()
        model.reshape({name: list(shape) for name, shape in zip(self.input_names, shapes)})
        log.info("openvino: compiling for input shape %s (%s)", shapes, self.precision)
        request = self._compile(model)
        self._dynamic = None  # its own weights copy: give it back (recompiling it is cheap, and cached)
        marker = self._marker(shapes)
        if marker is not None:
            try:
                marker.touch()
            except OSError:
                pass
        self._compiled[shapes] = request
        while len(self._compiled) > MAX_COMPILED_SHAPES:
            self._compiled.popitem(last=False)
        return request

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise BackendError(f"openvino: the graph needs input(s) {', '.join(missing)}")
        arrays = [np.ascontiguousarray(feeds[n], dtype=np.float32) for n in self.input_names]
        try:
            request = self._request(tuple(a.shape for a in arrays))
            request.infer({n: a for n, a in zip(self.input_names, arrays)})
            # The request owns its output buffers and reuses them on the next run: copy out.
            return {n: np.array(request.get_tensor(n).data, copy=True) for n in self.output_names}
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"openvino failed to run the graph: {first_line(exc)}") from None
