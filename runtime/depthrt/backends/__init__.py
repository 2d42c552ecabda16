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
from pathlib import Path

from ..errors import BackendError, InputError

log = logging.getLogger("depthrt")

# Best first: `auto` takes the first available one.
_MODULES = {"trt": "trt", "ort-cuda": "ort", "openvino": "openvino", "ort-cpu": "ort"}
BACKENDS = ("auto", *_MODULES)
PRECISIONS = ("fp32", "fp16", "bf16")


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
    found = available_backends()
    if name == "auto":
        if not found:
            raise BackendError(
                "no backend is available: install ONNX Runtime (pip install 'depthrt[cpu]', or "
                "'depthrt[gpu]' on a machine with an NVIDIA GPU)"
            )
        log.info("backend auto: picked %s (available: %s)", found[0], ", ".join(found))
        return found[0]
    reason = unavailable(name)
    if reason is not None:
        others = " or ".join(f"--backend {b}" for b in found) or "install onnxruntime for --backend ort-cpu"
        raise BackendError(f"{reason}; use {others}")
    return name


def open_graph(bundle: Path, graph: dict, backend: str, precision: str = "fp32", threads: int | None = None):
    """Load one graph of a bundle on a concrete backend and return its runner."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    return _module(backend).open_runner(Path(bundle), graph, backend, precision, threads)
