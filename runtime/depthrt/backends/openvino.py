"""OpenVINO backend (``openvino``): the CPU default where OpenVINO is installed."""

from __future__ import annotations

from pathlib import Path

from ..errors import BackendError


def unavailable(backend: str) -> str | None:
    return "backend openvino is not part of this depthrt yet"


def open_runner(bundle: Path, graph: dict, backend: str, precision: str, threads: int | None):
    raise BackendError(unavailable(backend) or "backend openvino is not available")
