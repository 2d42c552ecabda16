"""`depthrt build` as a function: plans for a bundle's graphs, then cached, locked, atomic builds.

The builder is a parameter (``Builder``: plan, ONNX path, timing cache, progress -> BuildResult),
so the cache, lock and atomicity rules are tested with a fake builder on machines without
TensorRT; the default is ``trt_build.build_serialized``.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from depthrt.errors import BackendError, BundleError, InputError
from depthrt.manifest import read_manifest, sha256_file
from depthrt.progress import step

from .cache import EngineCache, merge_timing_cache, read_timing_cache, timing_cache_path
from .config import BuildConfig
from .plan import BuildPlan, Environment, detect_environment, make_plan

# Plans are strongly typed: the precision lives in the ONNX graph, never in builder flags. An fp16 variant
# (fp16 with fp32 islands chosen and checked at export, made by depthrt_export.fp16) is a second manifest
# entry with the same graph name and "precision": "fp16"; --precision fp16 builds it instead of the fp32 graph.
# What makes each variant: a bundle that lacks one is told to run it.
VARIANT_COMMANDS = {"fp16": "python -m depthrt_export.fp16 {bundle}"}

Builder = Callable[[BuildPlan, Path, bytes, bool], "object"]


@dataclass
class Built:
    """One engine `build_bundle` produced or found."""

    plan: BuildPlan
    path: Path
    metadata: dict
    cached: bool
    seconds: float = 0.0


def select_graphs(manifest: dict, config: BuildConfig, bundle: Path | str = "BUNDLE") -> list[tuple[dict, dict]]:
    """(graph to build, logical graph) pairs: the fp32 graph for fp32, else its variant of that precision."""
    logical = [g for g in manifest["graphs"] if g.get("precision", "fp32") == "fp32"]
    pairs = []
    for graph in logical:
        if config.precision == "fp32":
            pairs.append((graph, graph))
            continue
        variant = next((g for g in manifest["graphs"]
                        if g["name"] == graph["name"] and g.get("precision") == config.precision), None)
        if variant is None:
            make = VARIANT_COMMANDS.get(config.precision)
            fix = (f"add it with `{make.format(bundle=shlex.quote(str(bundle)))}`" if make else
                   f"depthrt export writes no {config.precision} variants; build with --precision fp16 or fp32")
            raise InputError(
                f"plans are strongly typed: --precision {config.precision} builds the bundle's {config.precision} "
                f"variant of each graph, and graph '{graph['name']}' has none; {fix}"
            )
        pairs.append((variant, graph))
    return pairs


def make_plans(bundle: Path, config: BuildConfig, environment: Environment | None = None) -> list[BuildPlan]:
    """The build plan of every graph in ``bundle`` (pure apart from reading the manifest)."""
    manifest = read_manifest(bundle)
    env = environment or detect_environment(config.target, load=False)
    return [make_plan(graph, config, env, logical) for graph, logical in select_graphs(manifest, config, bundle)]


def _default_builder() -> Builder:
    from .trt_build import build_serialized  # only real builds import the TensorRT glue

    return build_serialized


def _check_environment(env: Environment) -> None:
    if env.tensorrt_version is None:
        from .trt_build import _module

        _module(env.target)  # raises the "install TensorRT" error
    if env.target == "trt" and env.gpu_name is None:
        raise BackendError("full TensorRT builds an engine for the GPU it runs on, and no NVIDIA GPU is usable here; "
                           "build on the GPU machine, use --target trt-rtx (no GPU needed), or inspect the plan "
                           "with --plan-only")


def build_bundle(bundle: str | Path, config: BuildConfig, builder: Builder | None = None, *,
                 environment: Environment | None = None, force: bool = False, progress: bool = True,
                 timing_cache_dir: Path | None = None, use_timing_cache: bool = True) -> list[Built]:
    """Build (or find in the cache) an engine for every graph of ``bundle``."""
    bundle = Path(bundle)
    pairs = select_graphs(read_manifest(bundle), config, bundle)  # a missing variant is named before TensorRT
    if environment is None:
        environment = detect_environment(config.target, load=True)
        _check_environment(environment)
    cache = EngineCache(bundle)
    results = []
    for graph, logical in pairs:
        plan = make_plan(graph, config, environment, logical)
        results.append(_build_one(cache, plan, config, builder, force=force, progress=progress,
                                  timing_cache=timing_cache_path(plan, timing_cache_dir) if use_timing_cache else None))
    return results


def _build_one(cache: EngineCache, plan: BuildPlan, config: BuildConfig, builder: Builder | None, *,
               force: bool, progress: bool, timing_cache: Path | None) -> Built:
    if not force and (meta := cache.lookup(plan)) is not None:
        return Built(plan, cache.plan_path(plan), meta, cached=True)
    with cache.lock(plan):
        # Another process may have built this key while we waited for the lock: use its plan.
        if not force and (meta := cache.lookup(plan)) is not None:
            return Built(plan, cache.plan_path(plan), meta, cached=True)
        onnx = cache.bundle / plan.onnx_file
        if sha256_file(onnx) != plan.onnx_sha256:  # the key promises this exact graph
            raise BundleError(f"'{onnx}' does not match the hash in its manifest: it was modified after export; "
                              "re-export the bundle")
        seed = read_timing_cache(timing_cache) if timing_cache is not None and plan.environment.target == "trt" \
            else b""
        build = builder or _default_builder()
        start = time.perf_counter()
        with step(f"building {plan.environment.target} engine for graph '{plan.graph_name}' "
                  f"({plan.config.precision})", enabled=progress):
            result = build(plan, onnx, seed, progress)
        seconds = time.perf_counter() - start
        serialized, updated = getattr(result, "serialized"), getattr(result, "timing_cache", None)
        details = {**getattr(result, "details", {}), "build_seconds": round(seconds, 1)}
        if updated and timing_cache is not None:
            from .trt_build import merge_timing_caches

            merge_timing_cache(timing_cache, lambda current: merge_timing_caches(plan, current, updated))
        meta = cache.store(plan, serialized, config.command_args(), details)
        return Built(plan, cache.plan_path(plan), meta, cached=False, seconds=seconds)


def describe(built: Built, stream=None) -> None:
    """One line per engine: where it is and whether it was just built."""
    stream = stream or sys.stdout  # looked up now, not at import: callers (and tests) may have replaced it
    how = "cached" if built.cached else f"built in {built.seconds:.1f}s"
    print(f"engine {built.path} ({how}, {built.metadata['plan_bytes'] / 1e6:.1f} MB, strongly typed from "
          f"{built.plan.onnx_file}; loads with {' or '.join(built.plan.runtimes)})", file=stream)
