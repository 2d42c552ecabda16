"""The build plan: what `depthrt build` will do for one graph, and the cache key of its result.

Pure: no TensorRT is imported, so ``--plan-only`` works on any machine. The same plan object drives
the real build (``trt_build``), names the cache directory (``cache``) and is written into the
plan's metadata, so what the user inspected is what was built.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from depthrt.backends import trt as trt_runtime

from .config import BuildConfig
from .profiles import InputProfile, derive_profiles

KEY_FORMAT = 2  # bump when anything below changes how a key is made


@dataclass(frozen=True)
class Environment:
    """What the engine is built with and for: part of the key, checked again at load."""

    target: str
    tensorrt_version: str | None  # None: that TensorRT is not installed here
    gpu_name: str | None  # None for trt-rtx (plans are GPU-independent until JIT) or no GPU here
    compute_capability: str | None

    def as_dict(self) -> dict:
        return {"target": self.target, "tensorrt_version": self.tensorrt_version, "gpu_name": self.gpu_name,
                "compute_capability": self.compute_capability}


def detect_environment(target: str, load: bool = False) -> Environment:
    """This machine's TensorRT version and GPU; ``load=False`` reads versions without importing TensorRT."""
    version = trt_runtime.tensorrt_version(target, load=load)
    if target == "trt-rtx":
        return Environment(target, version, None, None)
    gpu = trt_runtime.query_gpu()
    return Environment(target, version, gpu[0] if gpu else None, gpu[1] if gpu else None)


@dataclass(frozen=True)
class BuildPlan:
    """Everything that decides one engine: graph, options, profiles, precision, environment."""

    graph_name: str  # the logical graph the runtime asks for (an fp16 variant builds under its base name)
    onnx_file: str
    onnx_sha256: str
    source_sha256: str  # the logical graph's hash: the runtime matches plans to the graph it opens by it
    graph_precision: str  # the ONNX graph's own float type (fp32, or fp16 for a fp16 variant)
    config: BuildConfig
    profiles: tuple[InputProfile, ...]
    environment: Environment

    @property
    def precision_mode(self) -> str:
        """How precision is decided: always by the graph (strongly typed), never by builder flags."""
        if self.graph_precision == "fp32":
            return f"strongly typed: fp32 from the graph {self.onnx_file} (TF32 off)"
        return (f"strongly typed: {self.graph_precision} with fp32 islands from the {self.graph_precision} "
                f"variant graph {self.onnx_file} (TF32 off)")

    @property
    def runtimes(self) -> list[str]:
        """The Python modules that can load the plan, preferred first (recorded in the engine metadata)."""
        return trt_runtime.plan_runtimes(self.environment.target, self.config.version_compatible)

    @property
    def key(self) -> str:
        return cache_key(self)

    def key_payload(self) -> dict:
        """Everything that makes engines differ; hashed into the cache key."""
        return {
            "key_format": KEY_FORMAT,
            "graph": self.graph_name,
            "onnx_sha256": self.onnx_sha256,
            "source_sha256": self.source_sha256,
            "graph_precision": self.graph_precision,
            "options": self.config.options(),
            "profiles": {p.name: p.as_dict() for p in self.profiles},
            "environment": self.environment.as_dict(),
        }

    def to_dict(self) -> dict:
        """The plan as `--json` writes it and the engine metadata records it."""
        return {
            "graph": self.graph_name,
            "onnx_file": self.onnx_file,
            "onnx_sha256": self.onnx_sha256,
            "source_sha256": self.source_sha256,
            "graph_precision": self.graph_precision,
            "options": self.config.options(),
            "precision_mode": self.precision_mode,
            "profiles": {p.name: p.as_dict() for p in self.profiles},
            "runtimes": self.runtimes,
            "environment": self.environment.as_dict(),
            "cache_key": self.key,
        }


def make_plan(graph: dict, config: BuildConfig, environment: Environment, logical: dict | None = None) -> BuildPlan:
    """The plan for one manifest graph; raises InputError for overrides the manifest does not allow.

    ``logical`` is the graph the runtime opens when ``graph`` is its fp16 (or bf16) variant.
    """
    logical = logical or graph
    return BuildPlan(
        graph_name=logical["name"],
        onnx_file=graph["file"],
        onnx_sha256=graph["sha256"],
        source_sha256=logical["sha256"],
        graph_precision=graph.get("precision", "fp32"),
        config=config,
        profiles=tuple(derive_profiles(graph, config)),
        environment=environment,
    )


def _slug(text: str | None) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", (text or "none").lower()).strip("-") or "none"


def cache_key(plan: BuildPlan) -> str:
    """A directory name that changes whenever anything that makes engines differ changes.

    Readable prefix (GPU, TensorRT, precision, graph) for people listing ``engines/``; the hash
    covers everything: ONNX hash, options, profiles, TensorRT version, GPU.
    """
    digest = hashlib.sha256(json.dumps(plan.key_payload(), sort_keys=True).encode()).hexdigest()[:16]
    env = plan.environment
    device = f"{_slug(env.gpu_name)}-sm{_slug(env.compute_capability).replace('.', '')}" \
        if env.target == "trt" else "rtx"
    return f"{plan.graph_name}-{device}-{env.target}{_slug(env.tensorrt_version)}-{plan.config.precision}-{digest}"


def format_plan(plan: BuildPlan, bundle: str) -> str:
    """The plan as the text `depthrt build --plan-only` prints."""
    env = plan.environment
    lines = [
        f"graph {plan.graph_name}: builds from {plan.onnx_file} (sha256 {plan.onnx_sha256[:12]}...)",
        f"  target      {env.target} (TensorRT {env.tensorrt_version or 'not installed here'})",
        "  device      " + (f"{env.gpu_name} (compute capability {env.compute_capability})" if env.gpu_name
                             else "any RTX GPU (JIT-compiled at load)" if env.target == "trt-rtx"
                             else "no GPU found here: the key differs on the GPU machine"),
        f"  precision   {plan.config.precision}: {plan.precision_mode}",
        "  profiles    (min / opt / max)",
    ]
    for p in plan.profiles:
        shapes = " / ".join("x".join(map(str, s)) for s in (p.min, p.opt, p.max))
        lines.append(f"    {p.name}: {shapes}")
    options = plan.config
    lines += [
        f"  opt level   {options.opt_level}",
        f"  workspace   {options.workspace_mib or 'TensorRT default (all GPU memory)'}"
        + (" MiB" if options.workspace_mib else ""),
        f"  cache key   {plan.key}",
        f"  plan file   {bundle}/engines/{plan.key}/{plan.graph_name}.plan",
        f"  loads with  {' or '.join(plan.runtimes)}"
        + (" (version compatible, no embedded lean runtime)" if options.version_compatible else ""),
    ]
    return "\n".join(lines)
