"""The `depthrt` command line. Errors become one line on stderr and a non-zero exit code."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .errors import DepthrtError, InputError, OutputError

SAVE_KINDS = ("png16", "color", "npy", "controlnet")
_EXPORT_DEPENDENCIES = {"torch", "transformers", "onnx", "onnxscript", "safetensors", "huggingface_hub"}


def _cmd_models(args) -> int:
    from .presets import PRESETS, format_table

    if args.json:
        from dataclasses import asdict

        print(json.dumps([asdict(p) for p in PRESETS], indent=2))
    else:
        print(format_table())
    return 0


def _cmd_export(args) -> int:
    from depthrt_export.exporter import export_bundle  # lazy: needs torch

    out, manifest = export_bundle(args.model, weights=args.weights, out=args.out, opset=args.opset,
                                  force=args.force, check=not args.no_check, trust_pickle=args.trust_pickle)
    untrained = " (UNTRAINED random weights)" if manifest["source"]["untrained"] else ""
    print(f"bundle written: {out}{untrained}")
    return 0


def _parse_save(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in SAVE_KINDS]
    if bad or not kinds:
        raise InputError(f"--save {text!r}: choose from {', '.join(SAVE_KINDS)} (comma-separated)")
    return kinds


def _output_names(images: list[str], out: Path, kinds: list[str]) -> list[dict[str, Path]]:
    """Output file paths per image; inputs with the same file stem get distinct names."""
    suffix = {"png16": ".depth.png", "color": ".color.png", "npy": ".depth.npy", "controlnet": ".controlnet.png"}
    seen: dict[str, int] = {}
    names = []
    for image in images:
        stem = Path(image).stem
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        base = stem if n == 0 else f"{stem}-{n}"
        names.append({k: out / (base + suffix[k]) for k in kinds})
    return names


def _cmd_predict(args) -> int:
    from . import imageio
    from .estimator import load

    kinds = _parse_save(args.save)
    out = Path(args.out)
    imageio.ensure_output_dir(out)
    targets = _output_names(args.images, out, kinds)
    if not args.force:  # refuse before any work, so nothing is half-written
        existing = [str(p) for t in targets for p in t.values() if p.exists()]
        if existing:
            raise OutputError(f"'{existing[0]}' already exists ({len(existing)} output file(s) would be "
                              "overwritten); pass --force, or choose another --out")
    images = [imageio.read_image(p) for p in args.images]  # all unreadable files fail before any work
    est = load(args.bundle, backend=args.backend, precision=args.precision)
    print(f"model {est.manifest['model']['name']} on backend {est.backend} ({args.precision})", file=sys.stderr)
    for path, image, target in zip(args.images, images, targets):
        pred = est.predict(image)
        for kind, dest in target.items():
            if kind == "png16":
                imageio.write_depth_png16(dest, pred.depth, overwrite=args.force)
            elif kind == "color":
                imageio.write_color_png(dest, pred.depth, kind=pred.kind, overwrite=args.force)
            elif kind == "npy":
                imageio.write_npy(dest, pred.depth, overwrite=args.force)
            else:
                imageio.write_controlnet_png(dest, pred.depth, pred.kind, overwrite=args.force)
        print(f"{path}: " + ", ".join(str(p) for p in target.values()))
    print(f"wrote {len(images)} image(s) to {out} ({est.kind}, {est.units})")
    return 0


def _cmd_check(args) -> int:
    from depthrt_export.check import format_report, run_check, save_report

    report = run_check(args.bundle, weights=args.weights, images=args.images, backend=args.backend,
                       precision=args.precision, trust_pickle=args.trust_pickle)
    print(format_report(report))
    if args.json:
        save_report(report, args.json)
        print(f"report written: {args.json}")
    return 0 if report["passed"] else 1


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

    p = sub.add_parser("predict", help="depth maps for images")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--out", default="depth_out", help="output folder (default: depth_out)")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--save", default="png16,color", help=f"what to write per image, from {','.join(SAVE_KINDS)} "
                   "(default png16,color; controlnet = white-near 8-bit map)")
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
    p.set_defaults(func=_cmd_check)
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
