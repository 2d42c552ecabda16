"""Soak `depthrt video`: a long file-mode run on the CPU, watching memory and dropped frames.

    python scripts/soak_video.py [--minutes 20] [--resolution 266] [--size 640x360] [--bundle DIR | --tiny]
                                 [--backend ort-cpu] [--threads N] [--work DIR] [--json FILE]

Exports a real-size Depth Anything V2 Small bundle with random weights (or uses ``--bundle``, or a
tiny one with ``--tiny``), writes a synthetic clip (moving shapes, OpenCV) longer than the pipeline can
finish in ``--minutes``, then runs the real CLI,
``depthrt video BUNDLE --input clip --out out.mp4 --stats s.json --headless``, in a child process,
and stops it with Ctrl-C (SIGINT) after ``--minutes``: the soak lasts that long whatever the machine's
speed, and ends the way a user ends a run. It samples the child's resident memory (VmRSS) every
``--every`` seconds and prints RSS at the start (model loaded and warmed up), the middle, at 95% and
the end, the peak, and the growth per minute over the second half; then checks that file mode
dropped nothing: frames read = frames written = frames OpenCV reads back from the finalised output,
and no frame counted as dropped. Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from bench_video import write_clip  # noqa: E402  (the synthetic moving-shapes clip)
from gpu_check import write_depth_anything  # noqa: E402  (real-size random-weight checkpoint)


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process in MiB, from /proc (None once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def count_frames(path: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def video_cmd(bundle: Path, clip: Path, out: Path, stats: Path, args) -> list[str]:
    cmd = [sys.executable, "-m", "depthrt.cli", "video", str(bundle), "--input", str(clip), "--out", str(out),
           "--stats", str(stats), "--headless", "--backend", args.backend, "--resolution", str(args.resolution),
           "--force"]
    return cmd + (["--threads", str(args.threads)] if args.threads else [])


def soak(cmd: list[str], every: float, stop_after: float | None = None) -> dict:
    """Run the CLI, sampling its RSS, and send it SIGINT ``stop_after`` seconds after it started the
    pipeline; returns the samples (seconds since that start, MiB) and its outcome."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    started = threading.Event()
    err_lines: list[str] = []

    def read_stderr():
        for line in proc.stderr:
            err_lines.append(line.rstrip("\n"))
            if "Ctrl-C to stop" in line:
                started.set()  # model loaded and warmed up: the soak proper begins

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    samples: list[tuple[float, float]] = []
    t0 = None
    while proc.poll() is None:
        if started.is_set():
            t0 = t0 if t0 is not None else time.monotonic()
            rss = rss_mib(proc.pid)
            if rss is not None:
                samples.append((time.monotonic() - t0, rss))
            if stop_after is not None and time.monotonic() - t0 >= stop_after:
                proc.send_signal(signal.SIGINT)  # once: the frames in flight finish, the file is finalised
                stop_after = None
        time.sleep(every if started.is_set() else 0.2)
    stdout = proc.stdout.read()
    reader.join(timeout=10)
    return {"returncode": proc.returncode, "samples": samples, "stdout": stdout.strip(),
            "stderr": [line for line in err_lines if line.strip()][-5:]}


def growth_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of RSS over the second half of the run (to 95%: not the shutdown), MiB per minute."""
    half = [s for s in samples if samples[-1][0] / 2 <= s[0] <= samples[-1][0] * 0.95]
    if len(half) < 2:
        return 0.0
    n = len(half)
    mx, my = sum(t for t, _ in half) / n, sum(r for _, r in half) / n
    sxx = sum((t - mx) ** 2 for t, _ in half)
    return 60.0 * sum((t - mx) * (r - my) for t, r in half) / sxx if sxx else 0.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="length of the soak; then Ctrl-C (default 20)")
    parser.add_argument("--resolution", type=int, default=266)
    parser.add_argument("--size", default="640x360", help="clip WIDTHxHEIGHT (default 640x360)")
    parser.add_argument("--bundle", help="use this bundle (default: export a real-size random-weight DA-V2-S)")
    parser.add_argument("--tiny", action="store_true", help="export a tiny DA-V2-S instead of a real-size one")
    parser.add_argument("--backend", default="ort-cpu")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--frames", type=int, help="clip length in frames (default: 40 FPS x --minutes; a run that "
                        "reaches the end before --minutes ends there)")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between RSS samples (default 5)")
    parser.add_argument("--work", help="folder for the bundle, clip and output (default: a temporary one)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        bundle = Path(args.bundle) if args.bundle else work / "bundle"
        if not args.bundle:
            from depthrt_export.exporter import export_bundle

            size = "tiny" if args.tiny else "real-size"
            print(f"[soak] exporting a {size} random-weight Depth Anything V2 Small ...", file=sys.stderr)
            weights = write_depth_anything(work / "weights", "small", tiny=args.tiny)
            export_bundle("depth-anything-v2-small", weights=str(weights), out=bundle, force=True)

        frames = args.frames or math.ceil(40 * 60 * args.minutes)  # more than 40 FPS can finish in time
        print(f"[soak] writing a {frames}-frame {width}x{height} clip ...", file=sys.stderr)
        clip, out, stats = work / "clip.mp4", work / "out.mp4", work / "stats.json"
        write_clip(clip, frames, width, height)

        print("[soak] running depthrt video ...", file=sys.stderr)
        wall = time.monotonic()
        run = soak(video_cmd(bundle, clip, out, stats, args), args.every, stop_after=args.minutes * 60)
        wall = time.monotonic() - wall
        if run["returncode"] not in (0, 130) or not run["samples"]:  # 130: stopped by our Ctrl-C
            print("[soak] depthrt video failed:\n" + "\n".join(run["stderr"]), file=sys.stderr)
            return 1
        s = json.loads(stats.read_text())
        samples = run["samples"]
        middle = min(samples, key=lambda x: abs(x[0] - samples[-1][0] / 2))
        late = min(samples, key=lambda x: abs(x[0] - samples[-1][0] * 0.95))  # still running, before teardown
        read_back = count_frames(out)

    report = {
        "bundle": "given" if args.bundle else ("tiny" if args.tiny else "real-size DA-V2-S (random weights)"),
        "backend": args.backend, "resolution": args.resolution, "clip": f"{width}x{height}",
        "processing_size": s["processing_size"], "wall_s": round(wall, 1), "run_s": round(samples[-1][0], 1),
        "fps": round(s["fps"], 2), "frames_in_clip": frames, "frames_in": s["frames"]["in"],
        "frames_out": s["frames"]["out"], "dropped": s["frames"]["dropped"], "frames_read_back": read_back,
        "rss_mib": {"start": round(samples[0][1], 1), "middle": round(middle[1], 1), "end": round(samples[-1][1], 1),
                    "at_95_percent": round(late[1], 1), "peak": round(max(r for _, r in samples), 1),
                    "samples": len(samples), "every_s": args.every,
                    "series": [[round(t, 1), round(r, 1)] for t, r in samples],
                    "second_half_growth_per_min": round(growth_per_minute(samples), 3)},
        "latency_ms": s["latency_ms"]["end_to_end"], "stopped_by": s["stopped_by"],
    }
    report["no_drops"] = report["dropped"] == 0 and report["frames_in"] == report["frames_out"] == read_back > 0
    rss = report["rss_mib"]
    print(f"soak: {report['bundle']} on {args.backend} at {s['processing_size'][1]}x{s['processing_size'][0]}, "
          f"{report['run_s'] / 60:.1f} min, {report['fps']} FPS")
    print(f"RSS MiB: start {rss['start']}, middle {rss['middle']} (t={middle[0] / 60:.1f} min), at 95% "
          f"{rss['at_95_percent']}, end {rss['end']} (last sample, as the pipeline shuts down), peak {rss['peak']}; "
          f"second-half growth {rss['second_half_growth_per_min']} MiB/min")
    print(f"frames: clip {frames}, read {report['frames_in']} (stopped by {s['stopped_by']}), written "
          f"{report['frames_out']}, "
          f"read back {read_back}, dropped {report['dropped']} -> {'no drops' if report['no_drops'] else 'DROPS'}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["no_drops"] else 1


if __name__ == "__main__":
    sys.exit(main())
