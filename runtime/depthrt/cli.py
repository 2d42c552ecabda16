"""The `depthrt` command line. Errors become one line on stderr and a non-zero exit code."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .errors import DepthrtError, InputError, OutputError
from .outputs import SAVE_KINDS, output_names, parse_save, write_map

_EXPORT_DEPENDENCIES = {"torch", "transformers", "onnx", "onnxscript", "safetensors", "huggingface_hub"}


def _cmd_models(args) -> int:
    from .presets import PRESETS, format_table

    if args.json:
        from dataclasses import asdict

        print(json.dumps([asdict(p) for p in PRESETS], indent=2))
    else:
        from .presets import LEFT_OUT

        print(format_table())
        print(f"\nnot included: {LEFT_OUT}")
    return 0


def _cmd_export(args) -> int:
    from depthrt_export.exporter import export_bundle  # lazy: needs torch

    out, manifest = export_bundle(args.model, weights=args.weights, out=args.out, opset=args.opset,
                                  force=args.force, check=not args.no_check, trust_pickle=args.trust_pickle)
    untrained = " (UNTRAINED random weights)" if manifest["source"]["untrained"] else ""
    print(f"bundle written: {out}{untrained}")
    return 0


def _cmd_predict(args) -> int:
    from . import imageio
    from .estimator import load

    from .manifest import read_manifest

    normals = read_manifest(args.bundle)["output"]["kind"] == "normals"
    kinds = parse_save(args.save, normals)
    out = Path(args.out)
    imageio.ensure_output_dir(out)
    targets = output_names(args.images, out, kinds, normals)
    if not args.force:  # refuse before any work, so nothing is half-written
        existing = [str(p) for t in targets for p in t.values() if p.exists()]
        if existing:
            raise OutputError(f"'{existing[0]}' already exists ({len(existing)} output file(s) would be "
                              "overwritten); pass --force, or choose another --out")
    # Missing files and folders fail before any work; each image is then decoded only when its turn
    # comes, so thousands of inputs never sit in memory at once (a corrupt one stops the run there,
    # with the maps of the images before it written).
    for path in args.images:
        if not Path(path).is_file():
            imageio.read_image(path)  # raises the one-line error naming the path
    est = load(args.bundle, backend=args.backend, precision=args.precision)
    print(f"model {est.manifest['model']['name']} on backend {est.backend} ({args.precision})", file=sys.stderr)
    for path, target in zip(args.images, targets):
        pred = est.predict(imageio.read_image(path))
        for kind, dest in target.items():
            write_map(kind, dest, pred, overwrite=args.force)
        print(f"{path}: " + ", ".join(str(p) for p in target.values()))
    print(f"wrote {len(args.images)} image(s) to {out} ({est.kind}, {est.units})")
    return 0


def _cmd_check(args) -> int:
    from depthrt_export.check import check_bundle, save_report

    report, table = check_bundle(args.bundle, weights=args.weights, images=args.images, backend=args.backend,
                                 precision=args.precision, trust_pickle=args.trust_pickle,
                                 processing_resolution=args.processing_resolution)
    print(table)
    if args.json:
        save_report(report, args.json)
        print(f"report written: {args.json}")
    return 0 if report["passed"] else 1


def _cmd_video(args) -> int:
    from .video import run

    result = run(args.bundle, input=args.input, camera=args.camera, out=args.out, stats=args.stats,
                 headless=args.headless, backend=args.backend, precision=args.precision, view=args.view,
                 cmap=args.cmap, smooth=args.smooth, resolution=args.resolution, threads=args.threads,
                 max_frames=args.max_frames, force=args.force)
    s = result.summary
    lat = s["latency_ms"]["end_to_end"]
    for warning in result.warnings:
        print(f"depthrt video: warning: {warning}", file=sys.stderr)
    where = f" to {result.output}" if result.output else ""
    latency = f"; latency median {lat['median']:.0f} ms, p90 {lat['p90']:.0f} ms" if lat["count"] else ""
    print(f"{s['frames']['out']} frame(s) written{where} ({s['frames']['in']} in, {s['frames']['dropped']} "
          f"dropped); {s['fps']:.1f} FPS{latency}; stopped by {result.stopped_by}")
    if args.stats:
        print(f"stats written: {args.stats}")
    if result.error is not None:
        raise result.error
    if result.stopped_by == "stream failure":
        raise InputError(s["error"] + (f"; the frames processed so far are in {result.output}" if result.output else ""))
    if result.stopped_by == "interrupt" and not s["source"]["live"]:
        return 130  # a file cut short; Ctrl-C is the normal way to end a live run
    return 0


def _cmd_batch(args) -> int:
    from .batch import run

    try:
        summary = run(args.bundle, args.input, args.out, backend=args.backend, precision=args.precision,
                      save=args.save, force=args.force, batch_size=args.batch_size, threads=args.threads, ray=args.ray,
                      workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                      cpus_per_worker=args.cpus_per_worker, progress=not args.quiet)
    except KeyboardInterrupt:
        print("depthrt batch: interrupted; every map written so far is complete: run the same command again to "
              "go on", file=sys.stderr)
        return 130
    s = summary
    print(f"{s.done} done, {s.skipped} skipped (already done), {s.failed} failed of {s.total} image(s) in "
          f"{s.seconds:.1f} s ({s.rate:.2f} images/s) -> {args.out}")
    if s.failed:
        print(f"depthrt batch: {s.failed} image(s) failed, listed in {s.errors_file} (first: {s.errors[0][0]}: "
              f"{s.errors[0][1]})", file=sys.stderr)
        return 1
    return 0


def _cmd_bench(args) -> int:
    from .bench import format_table, parse_size, run_bench, save_json

    image = None
    if args.image:
        from .imageio import read_image

        image = read_image(args.image)
    split = lambda values: [v.strip() for item in values or [] for v in item.split(",") if v.strip()]  # noqa: E731
    references = () if args.reference == "none" else tuple(split([args.reference]))
    report = run_bench(args.bundle, backends=split(args.backend) or None, precisions=split(args.precision) or None,
                       size=parse_size(args.size), image=image, runs=args.runs, warmup=args.warmup,
                       references=references, weights=args.weights, reference_precision=args.reference_precision,
                       threads=args.threads, progress=lambda text: print(f"[bench] {text}", file=sys.stderr))
    print(format_table(report))
    if args.json:
        save_json(report, args.json)
        print(f"report written: {args.json}")
    return 0 if any(row["error"] is None for row in report["entries"]) else 1


def _cmd_build(args) -> int:
    from depthrt_engines.cli import build_from_args  # lazy: the engine builder (TensorRT only when building)

    return build_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    from .backends import BACKENDS, PRECISIONS

    parser = argparse.ArgumentParser(prog="depthrt", description="Fast, checked monocular depth inference.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what depthrt decides (backend, ...)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the presets: families, hub ids, outputs, licences")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("export", help="export a model to a bundle (manifest.json + ONNX), checked against PyTorch")
    p.add_argument("model", metavar="MODEL", help="preset name or hub id (see `depthrt models`)")
    p.add_argument("--weights", help="hub id or local folder (config.json, preprocessor_config.json, model.safetensors)")
    p.add_argument("--out", help="bundle directory (default: bundles/MODEL)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 17 or newer (default 17)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.add_argument("--no-check", action="store_true", help="skip the parity check against PyTorch")
    p.add_argument("--trust-pickle", action="store_true", help="allow pickle checkpoints (pytorch_model.bin)")
    p.set_defaults(func=_cmd_export)

    from depthrt_engines.cli import add_build_arguments  # argparse only: no TensorRT

    p = sub.add_parser("build", help="build TensorRT engines for this GPU (or TensorRT-RTX), cached in BUNDLE/engines")
    add_build_arguments(p)
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("predict", help="depth maps for images")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--out", default="depth_out", help="output folder (default: depth_out)")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--save", help=f"what to write per image, from {','.join(SAVE_KINDS)} (default png16,color; "
                   "normals bundles: color,npy); controlnet = white-near 8-bit depth map, or the RGB normal map; normals = "
                   "the RGB normal map (depth bundles: from the depth, as the MiDaS normal-map preprocessor)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("check", help="parity of a bundle against PyTorch; non-zero exit on failure")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("--weights", help="weights to compare with (default: the bundle's source)")
    p.add_argument("--images", nargs="+", help="images to compare on (default: synthetic images of 3 sizes)")
    p.add_argument("--json", help="write the report to this file")
    p.add_argument("--backend", default="ort-cpu", choices=BACKENDS)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--trust-pickle", action="store_true")
    p.add_argument("--processing-resolution", type=int, metavar="N",
                   help="Marigold, Lotus, LBM: check at this processing resolution (default: the bundle's)")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("video", help="depth for a video file, stream or camera, pipelined (needs depthrt[video])")
    p.add_argument("bundle", metavar="BUNDLE")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="FILE|URL", help="video file (every frame, in order) or stream URL (live)")
    src.add_argument("--camera", metavar="N", type=int, help="camera index (live: the newest frame is processed)")
    p.add_argument("--out", metavar="FILE", help="write the depth video here (.mp4, .avi, .mkv, .mov, .m4v)")
    p.add_argument("--headless", action="store_true", help="no window (use with --out and/or --stats)")
    p.add_argument("--stats", metavar="FILE", help="write frame counts, FPS and per-stage latencies as JSON")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--view", default="depth", choices=("depth", "side-by-side", "overlay"),
                   help="depth alone, frame and depth side by side, or depth blended over the frame")
    p.add_argument("--cmap", default="turbo", help="colour map: turbo, inferno or gray (near is warm/bright)")
    p.add_argument("--resolution", type=int, metavar="N", help="processing resolution: the model's resize "
                   "target, i.e. about N pixels on the frame's short side (default: the bundle's, e.g. 518)")
    p.add_argument("--smooth", type=float, metavar="ALPHA", help="steady colours over time: EMA of each frame's "
                   "robust depth range with weight ALPHA for the newest frame, in (0, 1], e.g. 0.2 (default off)")
    p.add_argument("--threads", type=int, help="inference threads (default: the CPU cores this process may use)")
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    p.add_argument("--force", action="store_true", help="overwrite existing --out / --stats files")
    p.set_defaults(func=_cmd_video)

    p = sub.add_parser("batch", help="depth for folders of images, resumable; here or on a Ray cluster (--ray)")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("input", metavar="INPUT", help="a folder (searched recursively), a glob ('photos/**/*.jpg', quoted) "
                   "or a text file with one image path per line")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder; mirrors the input tree")
    p.add_argument("--save", help=f"what to write per image, as predict: from {','.join(SAVE_KINDS)} (default png16,color)")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--batch-size", type=int, metavar="N", help="same-size images per inference call, within the "
                   "graph's batch range (default: 1 on CPU backends, the graph's maximum on GPUs)")
    p.add_argument("--threads", type=int, help="inference threads per worker (default: the cores it may use)")
    p.add_argument("--force", action="store_true", help="recompute and overwrite maps that exist already "
                   "(default: skip images whose maps are all there)")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS", help="run on Ray Data (needs depthrt[ray]): "
                   "join the cluster at ADDRESS (host:6379, ray://host:10001, auto), or start a local one")
    p.add_argument("--workers", type=int, metavar="N", help="--ray: inference actors (default: one per GPU, "
                   "or one per --cpus-per-worker CPUs)")
    p.add_argument("--gpus-per-worker", type=float, metavar="G", help="--ray: GPUs per inference actor "
                   "(default 1 with a GPU backend, else 0)")
    p.add_argument("--cpus-per-worker", type=float, metavar="C", help="--ray: CPUs per inference actor "
                   "(default: its --threads, or 1 beside a GPU)")
    p.add_argument("--quiet", action="store_true", help="no progress line (the summary is still printed)")
    p.set_defaults(func=_cmd_batch)

    p = sub.add_parser("bench", help="time backends side by side with PyTorch as reference (per stage, FPS, memory)")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("--backend", action="append", metavar="NAME[,NAME]",
                   help=f"backends to time, from {', '.join(b for b in BACKENDS if b != 'auto')} "
                        "(repeat or comma-separate; default: every available one)")
    p.add_argument("--precision", action="append", metavar="P[,P]",
                   help=f"precisions per backend, from {', '.join(PRECISIONS)} (default fp32)")
    p.add_argument("--size", default="640x480", help="synthetic image WIDTHxHEIGHT (default 640x480)")
    p.add_argument("--image", help="time on this image instead of a synthetic one")
    p.add_argument("--runs", type=int, default=10, help="timed frames per entry (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed frames per entry first (default and least 2)")
    p.add_argument("--reference", default="eager,compile",
                   help="PyTorch references: eager, compile, both comma-separated, or none (default eager,compile)")
    p.add_argument("--reference-precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--weights", help="weights for the PyTorch reference (default: the bundle's source)")
    p.add_argument("--threads", type=int, help="CPU threads per backend (default: the cores this process may use)")
    p.add_argument("--json", help="write the full report to this file")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="[depthrt] %(message)s")
    try:
        return args.func(args)
    except DepthrtError as exc:
        print(f"depthrt {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `depthrt models | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"depthrt {args.command}: interrupted", file=sys.stderr)
        return 130
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in _EXPORT_DEPENDENCIES:
            return _internal_error(args, exc)
        print(f"depthrt {args.command}: error: {exc}; this command needs the export tools: "
              "pip install 'depthrt[export]'", file=sys.stderr)
        return 2
    except Exception as exc:
        return _internal_error(args, exc)


def _internal_error(args, exc: Exception) -> int:
    """A bug: one line, with a way to get the details."""
    if os.environ.get("DEPTHRT_DEBUG"):
        raise exc
    print(f"depthrt {args.command}: internal error: {type(exc).__name__}: {exc} "
          "(set DEPTHRT_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
