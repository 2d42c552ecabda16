"""Benchmark `depthrt video`: the pipelined run against a plain one-frame-at-a-time loop, in one run.

    python scripts/bench_video.py BUNDLE [--resolution 266] [--size 640x360] [--frames 120]
                                  [--backend ort-cpu] [--threads N] [--json FILE]

Writes a synthetic clip (moving shapes) of the given size, then runs the same stages over it twice:
sequentially (decode, preprocess, inference, depth + colour, encode; one frame at a time) and through
the pipeline (one thread per stage, bounded queues). Prints frames per second of both, the ratio,
the pipeline's per-stage and end-to-end latencies, and whether the CPU target (>= 12 FPS) is met.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_clip(path: Path, frames: int, width: int, height: int, fps: float = 30.0) -> None:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(frames):
        t = i / frames
        img = np.empty((height, width, 3), np.uint8)
        img[..., 0] = (xx / width * 255).astype(np.uint8)
        img[..., 1] = (yy / height * 255).astype(np.uint8)
        img[..., 2] = ((np.sin(xx / 23 + 6 * t) + np.cos(yy / 17 - 4 * t)) * 60 + 128).astype(np.uint8)
        cx, cy = int(width * (0.2 + 0.6 * t)), height // 2
        cv2.circle(img, (cx, cy), height // 5, (40, 200, 240), -1)
        writer.write(img)
    writer.release()


def sequential(model, clip: Path, out: Path, frames: int) -> dict:
    """The same stages, one frame at a time in one thread: what a plain loop does."""
    import cv2

    from depthrt.video.overlay import bgr_lut, colorize
    from depthrt.video.smoothing import RangeSmoother

    cap = cv2.VideoCapture(str(clip))
    writer = None
    lut, smoother = bgr_lut("turbo"), RangeSmoother()
    latencies, n = [], 0
    start = time.perf_counter()
    while n < frames:
        t0 = time.perf_counter()
        ok, bgr = cap.read()
        if not ok:
            break
        tensor, meta = model.preprocess(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        out_map = model.infer(tensor[None])[0]
        lo, hi = smoother(out_map)
        colour = colorize(model.to_depth(out_map, meta, bgr.shape[:2]), lo, hi, model.kind, lut)
        if writer is None:
            writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, colour.shape[1::-1])
        writer.write(colour)
        latencies.append(time.perf_counter() - t0)
        n += 1
    elapsed = time.perf_counter() - start
    writer.release()
    cap.release()
    ms = np.asarray(latencies) * 1000
    return {"frames": n, "fps": n / elapsed, "latency_ms": {"median": float(np.median(ms)),
                                                            "p90": float(np.percentile(ms, 90))}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--resolution", type=int, default=266, help="processing short side (default 266)")
    parser.add_argument("--size", default="640x360", help="clip WIDTHxHEIGHT (default 640x360)")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--backend", default="ort-cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--target", type=float, default=12.0, help="FPS target to check (default 12)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))

    import depthrt
    from depthrt import video
    from depthrt.backends import usable_cores
    from depthrt.video.stages import FrameModel

    cores = usable_cores()
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        print(f"[bench] writing a {args.frames}-frame {width}x{height} clip ...", file=sys.stderr)
        write_clip(clip, args.frames, width, height)
        est = depthrt.load(args.bundle, backend=args.backend, precision=args.precision, threads=args.threads)
        model = FrameModel(est, args.resolution)
        mh, mw = model.check_frame_size(height, width)
        model.warm_up(height, width)
        print(f"[bench] {est.manifest['model']['name']} on {est.backend} {args.precision}, model input {mw}x{mh}, "
              f"{cores} CPU core(s)", file=sys.stderr)
        print("[bench] sequential loop ...", file=sys.stderr)
        seq = sequential(model, clip, Path(tmp) / "seq.mp4", args.frames)
        print("[bench] pipeline ...", file=sys.stderr)
        result = video.run(args.bundle, input=str(clip), out=str(Path(tmp) / "pipe.mp4"), headless=True,
                           backend=args.backend, precision=args.precision, resolution=args.resolution,
                           threads=args.threads, progress=False, log=lambda m: None)
        if result.error:
            raise result.error
        pipe = result.summary
    lat = pipe["latency_ms"]
    report = {
        "model": est.manifest["model"]["name"], "backend": est.backend, "precision": args.precision,
        "cores": cores, "clip": f"{width}x{height}", "frames": args.frames, "model_input": [mh, mw],
        "sequential": seq, "pipeline": {"fps": pipe["fps"], "frames": pipe["frames"], "latency_ms": lat},
        "speedup": pipe["fps"] / seq["fps"], "target_fps": args.target, "target_met": pipe["fps"] >= args.target,
    }
    print(f"{'':12}{'FPS':>8}{'latency median (ms)':>22}{'p90 (ms)':>11}")
    print(f"{'sequential':12}{seq['fps']:8.2f}{seq['latency_ms']['median']:22.1f}{seq['latency_ms']['p90']:11.1f}")
    e2e = lat["end_to_end"]
    print(f"{'pipeline':12}{pipe['fps']:8.2f}{e2e['median']:22.1f}{e2e['p90']:11.1f}")
    print(f"pipeline / sequential: {report['speedup']:.2f}x  (a file: every frame, in order; its latency includes "
          "the frames queued ahead of it)")
    print("pipeline stages (ms, median / p90): " + ", ".join(
        f"{s} {lat[s]['median']:.1f}/{lat[s]['p90']:.1f}" for s in ("capture", "preprocess", "inference",
                                                                      "postprocess", "output")))
    verdict = "met" if report["target_met"] else "NOT met"
    print(f"target >= {args.target:g} FPS end to end on {cores} core(s) at a {min(mh, mw)}-pixel short side: "
          f"{verdict} ({pipe['fps']:.2f} FPS)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
