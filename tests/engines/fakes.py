"""Helpers for the engine tests: a fake bundle (valid manifest, placeholder ONNX bytes) and fake builders.

The placeholder graph is never parsed: plan, cache, lock and metadata logic are tested with a fake
builder, so these tests run in well under a second each on machines without TensorRT.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from depthrt_engines.plan import Environment

GPU_ENV = Environment("trt", "11.4.0.106", "NVIDIA H200", "9.0")


def write_fake_bundle(root: Path, onnx: bytes = b"not really onnx, never parsed", fp16: bool = True) -> Path:
    """A one-graph bundle; ``fp16`` adds the graph's fp16 variant (what ``--precision fp16`` builds)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(onnx)
    graph = {
        "name": "model", "file": "model.onnx", "sha256": hashlib.sha256(onnx).hexdigest(), "bytes": len(onnx),
        "opset": 17, "precision": "fp32",
        "inputs": [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}],
        "outputs": [{"name": "predicted_depth", "dtype": "float32", "shape": ["batch", "height", "width"]}],
        "dynamic": {"batch": {"min": 1, "opt": 1, "max": 8},
                    "height": {"min": 126, "opt": 518, "max": 2072, "multiple_of": 14},
                    "width": {"min": 126, "opt": 518, "max": 2072, "multiple_of": 14}},
    }
    graphs = [graph]
    if fp16:
        half = b"fp16 " + onnx
        (root / "model.fp16.onnx").write_bytes(half)
        graphs.append(dict(graph, file="model.fp16.onnx", sha256=hashlib.sha256(half).hexdigest(), bytes=len(half),
                           precision="fp16", fp32_islands={"nodes": 0, "op_types": [], "scopes": []}))
    manifest = {
        "schema_version": 1,
        "model": {"name": "fake", "family": "depth_anything", "architecture": "Fake"},
        "output": {"kind": "relative_inverse_depth", "units": "relative"},
        "graphs": graphs, "preprocessing": {}, "postprocessing": {},
        "source": {"id": "fake", "files": [], "untrained": True}, "tools": {}, "parity": None,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture
def fake_bundle(tmp_path) -> Path:
    return write_fake_bundle(tmp_path / "bundle")


class FakeResult:
    def __init__(self, serialized: bytes):
        self.serialized, self.timing_cache, self.details = serialized, None, {"fake": True}


def fake_builder(plan, onnx_path, timing_cache, progress):
    """Stands in for TensorRT: the 'plan' is a deterministic function of the build plan."""
    return FakeResult(b"PLAN:" + plan.key.encode() * 10)
