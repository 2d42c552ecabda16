"""The `depthrt build` subcommand: its arguments and ``build_from_args``.

``depthrt.cli`` adds these arguments to its ``build`` parser and calls ``build_from_args``; this
module imports no TensorRT, so ``--plan-only`` works on any machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from depthrt.errors import InputError
from depthrt.manifest import write_json_atomic

from .config import DEFAULT_OPT_LEVEL, PRECISIONS, RTX_COMPUTE_CAPABILITIES, TARGETS, BuildConfig, parse_batch, parse_hw


def add_build_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `depthrt build BUNDLE`."""
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fp32 (default: the fp32 graph, TF32 off), or fp16/bf16: the bundle's variant graph of that "
                        "precision (strongly typed plans; add the fp16 variant with python -m depthrt_export.fp16)")
    p.add_argument("--target", default="trt", choices=TARGETS,
                   help="trt: full TensorRT for this GPU (default); trt-rtx: TensorRT for RTX, built without a GPU")
    for which in ("min", "opt", "max"):
        p.add_argument(f"--{which}", metavar="HxW", help=f"{which} image size of the profile (default: the manifest's)")
    p.add_argument("--batch", metavar="N|MIN:OPT:MAX", help="batch range of the profile (default: the manifest's)")
    p.add_argument("--opt-level", type=int, default=DEFAULT_OPT_LEVEL, metavar="0-5",
                   help=f"builder optimisation level (default {DEFAULT_OPT_LEVEL}; higher builds longer)")
    p.add_argument("--workspace", type=int, metavar="MIB", help="workspace memory limit in MiB")
    p.add_argument("--compute-capability", metavar="X.Y[,X.Y]",
                   help=f"trt-rtx only: GPUs to compile for, from {', '.join(RTX_COMPUTE_CAPABILITIES)}")
    p.add_argument("--version-compatible", action="store_true",
                   help="trt only: a plan that TensorRT's lean runtime (tensorrt_lean, no builder) loads as well")
    p.add_argument("--timing-cache", metavar="DIR", help="folder of timing caches (default ~/.cache/depthrt/timing)")
    p.add_argument("--no-timing-cache", action="store_true", help="neither read nor update a timing cache")
    p.add_argument("--force", action="store_true", help="rebuild even when the cache holds this engine")
    p.add_argument("--plan-only", action="store_true",
                   help="print the build plan (graph file, profiles, precision, cache key) and build nothing")
    p.add_argument("--json", metavar="FILE", help="also write the plan (and engines built) to FILE as JSON")


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    given = {k: getattr(args, k) for k in ("min", "opt", "max") if getattr(args, k)}
    if given and len(given) != 3:
        missing = ", ".join(f"--{k}" for k in ("min", "opt", "max") if k not in given)
        raise InputError(f"give --min, --opt and --max together (missing {missing})")
    sizes = {k: parse_hw(v, f"--{k}") for k, v in given.items()} or None
    caps = tuple(c.strip() for c in args.compute_capability.split(",")) if args.compute_capability else None
    return BuildConfig(precision=args.precision, target=args.target, sizes=sizes,
                       batch=parse_batch(args.batch) if args.batch else None, opt_level=args.opt_level,
                       workspace_mib=args.workspace, compute_capabilities=caps,
                       version_compatible=args.version_compatible)


def build_from_args(args: argparse.Namespace) -> int:
    """Run `depthrt build` (or `--plan-only`); returns the exit code."""
    from .build import build_bundle, describe, make_plans
    from .plan import format_plan

    config = config_from_args(args)
    bundle = Path(args.bundle)
    if args.plan_only:
        plans = make_plans(bundle, config)
        print("\n\n".join(format_plan(p, str(bundle)) for p in plans))
        if args.json:
            write_json_atomic(args.json, {"bundle": str(bundle), "plans": [p.to_dict() for p in plans]})
            print(f"plan written: {args.json}")
        return 0
    built = build_bundle(bundle, config, force=args.force, use_timing_cache=not args.no_timing_cache,
                         timing_cache_dir=Path(args.timing_cache) if args.timing_cache else None)
    for item in built:
        describe(item)
    if args.json:
        write_json_atomic(args.json, {
            "bundle": str(bundle),
            "plans": [b.plan.to_dict() for b in built],
            "engines": [{"path": str(b.path), "cached": b.cached, "metadata": b.metadata} for b in built],
        })
        print(f"report written: {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:  # `python -m depthrt_engines.cli`, for debugging
    parser = argparse.ArgumentParser(prog="depthrt build")
    add_build_arguments(parser)
    return build_from_args(parser.parse_args(argv))
