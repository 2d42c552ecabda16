"""ONNX -> serialized TensorRT plan: strongly typed, with the calls TensorRT 10, TensorRT 11 and TensorRT-RTX share.

Both targets share one API: full TensorRT (``import tensorrt``) and TensorRT for RTX (``import
tensorrt_rtx_bindings``). Each function binds ``trt`` to the module of the plan's target. The precision
is the ONNX graph's (the fp32 graph, or the bundle's fp16 variant with its fp32 islands): no weak-typing
flag (``BuilderFlag.FP16``/``BF16``/``INT8``, precision constraints) and no per-layer precision, which
TensorRT 11 removed. tests/engines/test_trt_api.py checks every TensorRT name used here against
TensorRT 11's and TensorRT-RTX's real bindings; under ``TYPE_CHECKING`` ``trt`` is ``tensorrt`` so
mypy also checks call signatures against the 10.x stubs (scripts/typecheck-trt).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from depthrt.backends.trt import load_tensorrt
from depthrt.errors import BackendError, BundleError

from .plan import BuildPlan

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

        what = "full TensorRT (its builder; the lean runtime cannot build)" if target == "trt" else "TensorRT for RTX"
        raise BackendError(f"building a {target} engine needs {what}, which is not installed here: {_PIP[target]} "
                           "(or inspect the plan with --plan-only)")
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


def _network_flags(trt: Any, target: str) -> int:
    """Strongly typed: every tensor keeps the graph's type. TensorRT 10 and TensorRT-RTX opt in with the
    flag; TensorRT 11 networks are always strongly typed (the flag is deprecated there and ignored)."""
    if target == "trt" and int(str(trt.__version__).split(".")[0]) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _parse(trt: Any, builder: Any, logger: Any, plan: BuildPlan, onnx_path: Path) -> tuple[Any, Any]:
    network = builder.create_network(_network_flags(trt, plan.environment.target))
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
    # fp32 means fp32, in the fp32 graph and in a variant's fp32 islands: TF32 matmuls lose parity.
    config.clear_flag(trt.BuilderFlag.TF32)
    if plan.config.version_compatible:
        # Loadable by TensorRT's lean runtime (tensorrt_lean) of this version. The lean runtime is not
        # embedded in the plan: the runtime that loads it is the lean runtime (or full TensorRT) itself.
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)

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
    details = {"layers": network.num_layers, "tensorrt_version": str(trt.__version__)}
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
