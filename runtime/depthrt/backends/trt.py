"""TensorRT backend (``trt``): plans built by `depthrt build` for this GPU."""

from __future__ import annotations

from pathlib import Path

from ..errors import BackendError


def unavailable(backend: str) -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return ("backend trt needs TensorRT, which is not installed here; install TensorRT 10 and build an "
                "engine with `depthrt build BUNDLE`")
    return "backend trt: TensorRT is installed, but this depthrt has no TensorRT runner yet"


def open_runner(bundle: Path, graph: dict, backend: str, precision: str, threads: int | None):
    raise BackendError(unavailable(backend) or "backend trt is not available")
