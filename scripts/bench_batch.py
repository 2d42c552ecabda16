"""Benchmark `depthrt batch`: a Python loop over Estimator.predict, the local pipelined run, and --ray, in one run.

    python scripts/bench_batch.py [--bundle DIR] [--images 40] [--size 640x480] [--backend auto]
                                  [--batch-size N] [--no-ray] [--json FILE]

Writes N JPEG photos (synthetic scenes) in two folders, then runs the same files three ways, each
decoding, predicting and writing the default maps (16-bit PNG + colour PNG):

* ``loop``: ``read_image -> est.predict -> write`` one image at a time (what a script would do);
* ``local``: ``depthrt batch``'s pipelined stages (decode threads, batched inference, write threads);
* ``ray``: ``depthrt batch --ray`` on a local Ray instance on this machine (1 inference actor).

The loop and the local run share one loaded, warmed-up estimator, so both are steady-state rates.
The Ray run starts its own workers: its wall time includes Ray's start and the actor's model load,
so its steady rate (first to last map written) is printed too. Also prints each stage's cost for
one image at a time, the figures docs/scale.md uses to size a cluster.

Without ``--bundle`` it exports Depth Anything V2 Small at its real size with RANDOM weights (the
hub is not needed; the speed does not depend on the weights) into bundles/bench-da-v2-small-random.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_bundle(path: Path) -> Path:
    """Real-size DA-V2 Small, random weights, exported once (no parity check: it is about speed)."""
    if (path / "manifest.json").is_file():
        return path
    sys.path.insert(0, str(ROOT / "scripts"))
    from depthrt_export.exporter import export_bundle
    from gpu_check import write_depth_anything  # the real-size random-weight checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        print(f"[bench] exporting a real-size random-weight Depth Anything V2 Small to {path} ...", file=sys.stderr)
        write_depth_anything(Path(tmp), "small", tiny=False)
        export_bundle("depth-anything-v2-small", weights=tmp, out=path, check=False)
    return path


def write_images(root: Path, count: int, width: int, height: int, rounds: int) -> list[Path]:
    """``count`` photos in ``root/r<round>/part<0|1>/``."""
    from PIL import Image

    from depthrt.samples import synthetic_image

    paths = []
    for i in range(count):
        path = root / f"r{i % rounds}" / f"part{i % 2}" / f"photo{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(synthetic_image(height, width, seed=i)).save(path, quality=92)
        paths.append(path)
    return paths


def run_loop(est, paths: list[Path], out: Path) -> float:
    """A plain loop: decode, predict, write the same maps; returns seconds."""
    from depthrt.imageio import read_image
    from depthrt.outputs import output_names, write_map

    start = time.perf_counter()
    for path in paths:
        target = output_names([str(path)], out / path.parent.parent.name / path.parent.name, ["png16", "color"])[0]
        target["png16"].parent.mkdir(parents=True, exist_ok=True)
        pred = est.predict(read_image(path))
        for kind, dest in target.items():
            write_map(kind, dest, pred)
    return time.perf_counter() - start


def run_local(est, root: Path, out: Path, batch_size: int) -> float:
    from depthrt.batch.listing import list_inputs, make_jobs
    from depthrt.batch.local import LocalRun

    jobs = make_jobs(*list_inputs(str(root)), out, ["png16", "color"], normals=False)
    run = LocalRun(est, jobs, force=False, batch_size=batch_size)
    start = time.perf_counter()
    run.run()
    seconds = time.perf_counter() - start
    assert run.done == len(jobs) and not run.errors, run.errors
    return seconds


def run_ray(bundle: Path, root: Path, out: Path, backend: str, batch_size: int, threads: int) -> tuple[float, float]:
    """(wall seconds, steady seconds per image between the first and the last map)."""
    from depthrt import batch

    start = time.perf_counter()
    summary = batch.run(bundle, str(root), out, backend=backend, batch_size=batch_size, ray="", workers=1,
                        cpus_per_worker=1, threads=threads, progress=False, log=lambda m: None)
    wall = time.perf_counter() - start
    assert summary.done == summary.total and not summary.failed, summary.errors
    stamps = sorted(p.stat().st_mtime for p in out.rglob("*.color.png"))
    steady = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    return wall, steady


def stage_costs(est, path: Path, out: Path, repeat: int = 5) -> dict:
    """Median cost of each stage for one image at a time: wall ms, and CPU ms (all threads), which a
    busy machine inflates far less and which says how many cores a stage needs per image/s."""
    import numpy as np

    from depthrt.imageio import read_image
    from depthrt.outputs import suffixes, write_map

    suffix = suffixes()
    names = ("decode + preprocess", "inference", "postprocess + encode + write")
    wall: dict = {k: [] for k in names}
    cpu: dict = {k: [] for k in names}
    for i in range(repeat):
        marks = [(time.perf_counter(), time.process_time())]
        tensor, meta = est.preprocess(read_image(path))
        marks.append((time.perf_counter(), time.process_time()))
        row = est.infer_each([tensor])[0]
        marks.append((time.perf_counter(), time.process_time()))
        pred = est.postprocess(row, meta)
        for kind in ("png16", "color"):
            write_map(kind, out / f"s{i}{suffix[kind]}", pred)
        marks.append((time.perf_counter(), time.process_time()))
        for k, (a, b) in zip(names, zip(marks, marks[1:])):
            wall[k].append((b[0] - a[0]) * 1000)
            cpu[k].append((b[1] - a[1]) * 1000)
    return {k: {"wall_ms": float(np.median(wall[k])), "cpu_ms": float(np.median(cpu[k]))} for k in names}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="bundle to time (default: a real-size random-weight DA-V2 Small, made once)")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--size", default="640x480", help="photo WIDTHxHEIGHT (default 640x480)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--batch-size", type=int, help="local and ray batches (default: batch's own default)")
    parser.add_argument("--rounds", type=int, default=2, help="loop and local run take turns on this many "
                        "slices of the images, so a busy machine slows both alike (default 2)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray run")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))

    import depthrt
    from depthrt.backends import usable_cores
    from depthrt.batch.core import batch_limit
    from depthrt.imageio import read_image

    bundle = Path(args.bundle) if args.bundle else make_bundle(ROOT / "bundles" / "bench-da-v2-small-random")
    cores = usable_cores()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_images(tmp / "in", args.images, width, height, args.rounds)
        est = depthrt.load(bundle, backend=args.backend)
        size = batch_limit(est, args.batch_size)
        print(f"[bench] {args.images} {width}x{height} JPEGs, {est.manifest['model']['name']} on {est.backend} fp32, "
              f"{cores} core(s), batch size {size}; warming up ...", file=sys.stderr)
        for _ in range(2):  # the shape's fast path (OpenVINO's per-shape model) before any timing
            est.infer_each([est.preprocess(read_image(paths[0]))[0]] * size, size)
        (tmp / "stages").mkdir()
        stages = stage_costs(est, paths[0], tmp / "stages")
        rows = {"predict loop": 0.0, "batch (local)": 0.0}
        for r in range(args.rounds):
            print(f"[bench] round {r + 1}/{args.rounds}: loop, then local batch ...", file=sys.stderr)
            rows["predict loop"] += run_loop(est, [p for p in paths if p.parent.parent.name == f"r{r}"], tmp / "loop")
            rows["batch (local)"] += run_local(est, tmp / "in" / f"r{r}", tmp / "local" / f"r{r}", size)
        steady = None
        if not args.no_ray:
            print("[bench] batch --ray ...", file=sys.stderr)
            del est  # the Ray actor loads its own copy
            rows["batch --ray"], steady = run_ray(bundle, tmp / "in", tmp / "ray", args.backend, size, cores)
            same = all((tmp / "ray" / p.relative_to(tmp / "local")).read_bytes() == p.read_bytes()
                       for p in (tmp / "local").rglob("*.png"))
            print(f"[bench] --ray maps identical to the local run's: {same}", file=sys.stderr)
    base = args.images / rows["predict loop"]
    print(f"{'mode':16}{'images':>8}{'seconds':>10}{'images/s':>10}{'vs loop':>9}")
    for name, seconds in rows.items():
        rate = args.images / seconds
        print(f"{name:16}{args.images:8d}{seconds:10.1f}{rate:10.3f}{rate / base:8.2f}x")
    if steady:
        print(f"batch --ray steady rate (first to last map, without Ray's start and model load): "
              f"{1 / steady:.3f} images/s ({1 / steady / base:.2f}x the loop)")
    print(f"one image at a time, ms wall / ms CPU (decode and write on one thread, inference on {cores}): "
          + ", ".join(f"{k} {v['wall_ms']:.1f} / {v['cpu_ms']:.1f}" for k, v in stages.items()))
    ratio = rows["predict loop"] / rows["batch (local)"]
    print(f"local batch / loop: {ratio:.2f}x (target >= 1.5x: {'met' if ratio >= 1.5 else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"images": args.images, "size": [width, height], "cores": cores,
                                               "backend": args.backend, "batch_size": size, "seconds": rows,
                                               "ray_steady_s_per_image": steady, "stage_ms": stages,
                                               "local_vs_loop": ratio}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
