"""ONNX Runtime backends: ``ort-cpu`` and ``ort-cuda``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import BackendError, BundleError


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
    if precision != "fp32":
        raise BackendError(f"backend {backend} runs fp32 graphs only in this depthrt; use --precision fp32")
    return OrtRunner(bundle / graph["file"], backend, threads=threads)


def _physical_cores() -> int:
    # ORT's default spins one thread per logical core; on small machines (2 vCPUs) that
    # oversubscribes with our own pre/post-processing, so use what this process may run on.
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class OrtRunner:
    """One ONNX graph in an ONNX Runtime session."""

    def __init__(self, path: Path, backend: str, threads: int | None = None):
        ort = _ort()
        if ort is None:
            raise BackendError("ONNX Runtime is not installed: pip install 'depthrt[cpu]' (or [gpu])")
        self.name = backend
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or _physical_cores()
        options.log_severity_level = 3  # warnings about unused initialisers are noise to users
        if backend == "ort-cuda":
            if hasattr(ort, "preload_dlls"):
                ort.preload_dlls()
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BundleError(
                f"ONNX Runtime cannot load '{path}': {first}; the file is damaged or not an ONNX graph: "
                "re-export the bundle"
            ) from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outputs = self.session.run(self.output_names, feeds)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0]
            raise BackendError(f"{self.name} failed to run the graph: {first}") from None
        return dict(zip(self.output_names, outputs))
