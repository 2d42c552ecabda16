"""Backends: each opens one graph of a bundle (a *loader*) and runs it on named arrays (a *runner*).

A runner has ``name`` and ``run(feeds: dict[str, ndarray]) -> dict[str, ndarray]``. Which
backends exist is decided here; what each needs is imported only when it is asked for.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import BackendError, InputError

log = logging.getLogger("depthrt")

BACKENDS = ("auto", "trt", "ort-cuda", "openvino", "ort-cpu")
PRECISIONS = ("fp32", "fp16", "bf16")


def available_backends() -> list[str]:
    """The concrete backends usable on this machine, best first."""
    from . import ort

    found = []
    if ort.cuda_available():
        found.append("ort-cuda")
    if ort.cpu_available():
        found.append("ort-cpu")
    return found


def resolve_backend(name: str) -> str:
    """Turn ``auto`` into the best available backend; check a named one exists."""
    if name not in BACKENDS:
        raise InputError(f"unknown backend '{name}': choose one of {', '.join(BACKENDS)}")
    found = available_backends()
    if name == "auto":
        if not found:
            raise BackendError(
                "no backend is available: install ONNX Runtime (pip install 'depthrt[cpu]', or "
                "'depthrt[gpu]' on a machine with an NVIDIA GPU)"
            )
        log.info("backend auto: picked %s (available: %s)", found[0], ", ".join(found))
        return found[0]
    if name == "trt":
        _require_tensorrt(found)
    if name == "openvino":
        raise BackendError(
            "the openvino backend is not part of this depthrt yet; use "
            + (" or ".join(found) if found else "ort-cpu")
        )
    if name not in found:
        other = ", ".join(found) or "none"
        if name == "ort-cuda":
            raise BackendError(
                "backend ort-cuda needs onnxruntime-gpu and an NVIDIA GPU, and this machine has "
                f"neither working (available here: {other}); use --backend ort-cpu, or install "
                "'depthrt[gpu]' on a GPU machine"
            )
        raise BackendError(f"backend {name} is not available on this machine (available: {other})")
    return name


def _require_tensorrt(found: list[str]) -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        raise BackendError(
            "backend trt needs TensorRT, which is not installed here; install TensorRT 10 and build an "
            "engine with `depthrt build BUNDLE`, or use "
            + (" or ".join(f"--backend {b}" for b in found) if found else "--backend ort-cpu")
        ) from None
    raise BackendError(
        "TensorRT is installed, but this depthrt has no TensorRT runner yet; use "
        + " or ".join(f"--backend {b}" for b in found)
    )


def open_graph(bundle: Path, graph: dict, backend: str, precision: str = "fp32", threads: int | None = None):
    """Load one graph of a bundle on a concrete backend and return its runner."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    if precision != "fp32":
        raise InputError(
            f"precision {precision} is not available on backend {backend} in this depthrt; use fp32"
        )
    from . import ort

    return ort.OrtRunner(Path(bundle) / graph["file"], backend, threads=threads)
