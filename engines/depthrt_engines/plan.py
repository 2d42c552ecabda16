"""The build plan: what `depthrt build` will do for one graph, and the cache key of its result.

Pure: no TensorRT is imported, so ``--plan-only`` works on any machine. The same plan object drives
the real build (``trt_build``), names the cache directory (``cache``) and is written into the
plan's metadata, so what the user inspected is what was built.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from depthrt.backends import trt as trt_runtime

from .config import BuildConfig
from .profiles import InputProfile, derive_profiles

KEY_FORMAT = 1  # bump when anything below changes how a key is made


@dataclass(frozen=True)
class PinRule:
    """A family of layers kept in fp32 in reduced-precision engines, and why."""

    name: str
    match: str  # what the builder matches (TensorRT layer type or a name pattern)
    why: str


# Overflow-prone layers (fp16 tops out at 65504): statistics of LayerNorm, attention scores before
# the softmax, the softmax itself, and the head that turns features into depth (a few large values
# there are the output). Generic rules on TensorRT layers: model quirks belong in the manifest.
PIN_RULES: tuple[PinRule, ...] = (
    PinRule("normalization", "type NORMALIZATION", "LayerNorm/GroupNorm mean and variance overflow in fp16"),
    PinRule("decomposed-norm", "type REDUCE; ELEMENTWISE POW; UNARY SQRT",
            "the same statistics when a norm was exported as primitives"),
    PinRule("softmax", "type SOFTMAX", "attention probabilities: exp() of large scores"),
    PinRule("attention-scores", "MATRIX_MULTIPLY feeding a SOFTMAX", "Q.K^T can exceed 65504 before scaling"),
    PinRule("head", r"name ~ /\w*head\w*/", "the final head: its outputs are the prediction"),
)
HEAD_PATTERN = re.compile(r"/\w*head\w*/", re.IGNORECASE)


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
    pin_rules: tuple[PinRule, ...] = field(default=())

    @property
    def precision_mode(self) -> str:
        """How precision is decided: from the graph (strongly typed) or by builder flags."""
        if self.config.strongly_typed or self.graph_precision != "fp32":
            return f"strongly typed: precision from the graph ({self.graph_precision})"
        if self.config.precision == "fp32":
            return "fp32 everywhere (TF32 off)"
        return f"{self.config.precision} with fp32-pinned layers (obey precision constraints)"

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
            "pinned_fp32": [f"{r.name}:{r.match}" for r in self.pin_rules],
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
            "pinned_fp32": [{"rule": r.name, "match": r.match, "why": r.why} for r in self.pin_rules],
            "environment": self.environment.as_dict(),
            "cache_key": self.key,
        }


def make_plan(graph: dict, config: BuildConfig, environment: Environment, logical: dict | None = None) -> BuildPlan:
    """The plan for one manifest graph; raises InputError for overrides the manifest does not allow.

    ``logical`` is the graph the runtime opens when ``graph`` is its fp16 variant (strongly typed builds).
    """
    logical = logical or graph
    graph_precision = graph.get("precision", "fp32")
    weakly_typed_reduced = not config.strongly_typed and graph_precision == "fp32" and config.precision != "fp32"
    return BuildPlan(
        graph_name=logical["name"],
        onnx_file=graph["file"],
        onnx_sha256=graph["sha256"],
        source_sha256=logical["sha256"],
        graph_precision=graph_precision,
        config=config,
        profiles=tuple(derive_profiles(graph, config)),
        environment=environment,
        pin_rules=PIN_RULES if weakly_typed_reduced else (),
    )


def _slug(text: str | None) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", (text or "none").lower()).strip("-") or "none"


def cache_key(plan: BuildPlan) -> str:
    """A directory name that changes whenever anything that makes engines differ changes.

    Readable prefix (GPU, TensorRT, precision, graph) for people listing ``engines/``; the hash
    covers everything: ONNX hash, options, profiles, pinned rules, TensorRT version, GPU.
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
        f"graph {plan.graph_name} ({plan.onnx_file}, sha256 {plan.onnx_sha256[:12]}...)",
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
    if plan.pin_rules:
        lines.append("  fp32 layers")
        lines += [f"    {r.name}: {r.match} ({r.why})" for r in plan.pin_rules]
    options = plan.config
    lines += [
        f"  opt level   {options.opt_level}",
        f"  workspace   {options.workspace_mib or 'TensorRT default (all GPU memory)'}"
        + (" MiB" if options.workspace_mib else ""),
        f"  cache key   {plan.key}",
        f"  plan file   {bundle}/engines/{plan.key}/{plan.graph_name}.plan",
    ]
    return "\n".join(lines)
