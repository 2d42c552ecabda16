"""ONNX -> serialized TensorRT plan, with the TensorRT Python API as documented for TensorRT 10.

Both targets share one API: full TensorRT (``import tensorrt``) and TensorRT for RTX (``import
tensorrt_rtx_bindings``). Each function binds ``trt`` to the module of the plan's target; under
``TYPE_CHECKING`` it is ``tensorrt`` so mypy checks every call against tensorrt-stubs (a call
TensorRT 10 removed, such as ``Builder.build_engine``, fails the type check).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from depthrt.backends.trt import load_tensorrt
from depthrt.errors import BackendError, BundleError

from .plan import HEAD_PATTERN, BuildPlan

if TYPE_CHECKING:
    import tensorrt

T = TypeVar("T")


@dataclass
class BuildResult:
    """What a builder returns: the plan bytes, an updated timing cache, facts for the metadata."""

    serialized: bytes
    timing_cache: bytes | None = None
    details: dict = field(default_factory=dict)


def _module(target: str) -> Any:
    module = load_tensorrt(target)
    if module is None:
        from depthrt.backends.trt import _PIP

        raise BackendError(f"building a {target} engine needs {'TensorRT 10' if target == 'trt' else 'TensorRT for RTX'}"
                           f", which is not installed here: {_PIP[target]} (or inspect the plan with --plan-only)")
    return module


def _make_monitor(target: str, stream: Any) -> Any:
    """An IProgressMonitor that prints TensorRT's top-level build phases (a build can take minutes)."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = _module(target)

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)  # pybind11 needs the base initialised explicitly
            self.steps: dict[str, int] = {}
            self.tty = hasattr(stream, "isatty") and stream.isatty()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.steps[phase_name] = num_steps
            if parent_phase is None:  # nested phases are TensorRT internals; top level is enough
                stream.write(f"[depthrt]   {phase_name} ({num_steps} steps)\n")
                stream.flush()

        def step_complete(self, phase_name: str, step: int) -> bool:
            if self.tty and phase_name in self.steps:
                stream.write(f"\r[depthrt]   {phase_name}: {step + 1}/{self.steps[phase_name]}")
                stream.flush()
            return True  # never cancel: Ctrl-C is handled by Python once the build returns

        def phase_finish(self, phase_name: str) -> None:
            if self.tty:
                stream.write("\r\033[K")
            self.steps.pop(phase_name, None)

    return Monitor()


def _downcast(layer: Any, cls: type[T]) -> T:
    """The documented Python idiom to reach a layer's subclass attributes (``get_layer`` gives ILayer)."""
    layer.__class__ = cls
    return layer  # type: ignore[no-any-return]


def pin_fp32_layers(network: "tensorrt.INetworkDefinition", plan: BuildPlan) -> dict[str, int]:
    """Keep the plan's overflow-prone layers in fp32; return how many layers each rule pinned."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = _module(plan.environment.target)
    rules = {r.name for r in plan.pin_rules}
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    consumers: dict[str, list[tensorrt.ILayer]] = {}
    for layer in layers:
        for i in range(layer.num_inputs):
            tensor = layer.get_input(i)
            if tensor is not None:
                consumers.setdefault(tensor.name, []).append(layer)
    passthrough = (trt.LayerType.ELEMENTWISE, trt.LayerType.SHUFFLE, trt.LayerType.SCALE)

    def feeds_softmax(layer: tensorrt.ILayer, depth: int = 3) -> bool:
        # Q.K^T reaches the SoftMax through a scale (Mul/Div) and maybe a mask Add or a reshape.
        for i in range(layer.num_outputs):
            for nxt in consumers.get(layer.get_output(i).name, []):
                if nxt.type == trt.LayerType.SOFTMAX:
                    return True
                if depth > 0 and nxt.type in passthrough and feeds_softmax(nxt, depth - 1):
                    return True
        return False

    def statistic(layer: tensorrt.ILayer) -> bool:
        if layer.type == trt.LayerType.REDUCE:
            return True
        if layer.type == trt.LayerType.ELEMENTWISE:
            return _downcast(layer, trt.IElementWiseLayer).op == trt.ElementWiseOperation.POW
        if layer.type == trt.LayerType.UNARY:
            return _downcast(layer, trt.IUnaryLayer).op == trt.UnaryOperation.SQRT
        return False

    floats = (trt.float32, trt.float16, trt.bfloat16)
    counts = dict.fromkeys(sorted(rules), 0)
    for layer in layers:
        kind = layer.type
        matched = None
        if "normalization" in rules and kind == trt.LayerType.NORMALIZATION:
            matched = "normalization"
        elif "softmax" in rules and kind == trt.LayerType.SOFTMAX:
            matched = "softmax"
        elif "decomposed-norm" in rules and statistic(layer):
            matched = "decomposed-norm"
        elif "attention-scores" in rules and kind == trt.LayerType.MATRIX_MULTIPLY and feeds_softmax(layer):
            matched = "attention-scores"
        elif "head" in rules and HEAD_PATTERN.search(layer.name or ""):
            matched = "head"
        # Only float-valued layers take a precision: shape arithmetic and constants stay as they are.
        if matched is None or not all(layer.get_output_type(i) in floats for i in range(layer.num_outputs)):
            continue
        layer.precision = trt.float32
        for i in range(layer.num_outputs):
            layer.set_output_type(i, trt.float32)
        counts[matched] += 1
    return counts


def _parse(trt: Any, builder: Any, logger: Any, plan: BuildPlan, onnx_path: Path) -> tuple[Any, Any]:
    flags = 0
    if plan.config.strongly_typed or plan.graph_precision != "fp32":
        # Strongly typed: each tensor keeps the graph's type (TensorRT-RTX builds only these).
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file: external weights resolve beside it
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"TensorRT's ONNX parser rejected '{onnx_path}': {errors or 'no details'}; the graph "
                          "uses an operator this TensorRT does not support: report it with the ONNX opset")
    return network, parser


def build_serialized(plan: BuildPlan, onnx_path: Path, timing_cache: bytes = b"",
                     progress: bool = True) -> BuildResult:
    """Build one plan. ``timing_cache`` seeds the tactic timings; the result carries the updated cache."""
    target = plan.environment.target
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = _module(target)
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, plan, onnx_path)  # the parser must outlive the build
    config = builder.create_builder_config()

    pinned: dict[str, int] = {}
    if not network.get_flag(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED):
        if plan.config.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif plan.config.precision == "bf16":
            config.set_flag(trt.BuilderFlag.BF16)
        else:
            config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: TF32 matmuls lose parity
        if plan.pin_rules:
            # Without this flag TensorRT may still pick fp16 kernels for layers we asked to keep fp32.
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            pinned = pin_fp32_layers(network, plan)

    profile = builder.create_optimization_profile()
    for p in plan.profiles:
        profile.set_shape(p.name, trt.Dims(list(p.min)), trt.Dims(list(p.opt)), trt.Dims(list(p.max)))
    config.add_optimization_profile(profile)
    if plan.config.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.config.workspace_mib << 20)
    config.builder_optimization_level = plan.config.opt_level
    if target == "trt-rtx" and plan.config.compute_capabilities:
        _set_compute_capabilities(trt, config, plan.config.compute_capabilities)

    cache = None
    if target == "trt":  # TensorRT-RTX tunes at JIT time on the user's GPU: no timing cache to keep
        cache = config.create_timing_cache(timing_cache)
        config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = _make_monitor(target, sys.stderr) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor  # `monitor` stays referenced here: TensorRT does not own it

    serialized = builder.build_serialized_network(network, config)
    del monitor
    if serialized is None:
        raise BackendError(f"TensorRT could not build graph '{plan.graph_name}' (see its messages above); try "
                           "a larger --workspace, a narrower profile (--min/--max), or --precision fp32")
    updated = bytes(memoryview(config.get_timing_cache().serialize())) if cache is not None else None
    details = {"pinned_fp32_layers": pinned, "layers": network.num_layers,
               "tensorrt_version": str(trt.__version__)}
    return BuildResult(bytes(memoryview(serialized)), updated, details)


def _set_compute_capabilities(trt: Any, config: Any, capabilities: tuple[str, ...]) -> None:
    config.num_compute_capabilities = len(capabilities)
    for i, cap in enumerate(capabilities):
        config.set_compute_capability(getattr(trt.ComputeCapability, "SM" + cap.replace(".", "")), i)


def merge_timing_caches(plan: BuildPlan, current: bytes, ours: bytes) -> bytes:
    """Combine the cache on disk (maybe updated by another build) with the one this build produced."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = _module(plan.environment.target)
    if not current:
        return ours
    builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    config = builder.create_builder_config()
    base = config.create_timing_cache(current)
    base.combine(config.create_timing_cache(ours), ignore_mismatch=True)
    return bytes(memoryview(base.serialize()))
