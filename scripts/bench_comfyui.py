"""What the ComfyUI nodes add over calling the runtime directly, on one batch of video frames.

    .venv/bin/python scripts/bench_comfyui.py [--bundle DIR] [--frames 16] [--size 512x384] [--rounds 5]

Both sides in one run, alternating, on the same frames and the same loaded model:
  direct: ``est.predict(frames)`` on uint8 arrays + ``to_controlnet`` per map (what `depthrt predict
          --save controlnet` computes);
  node:   ``DepthrtDepthMap.run`` on the ComfyUI IMAGE tensor (B x H x W x 3 float) -> IMAGE and MASK
          tensors (conversion, chunking, progress and cancel checks included).
Prints the best (least disturbed: other processes only ever add time) and the median round of each, and
their ratios (target: the nodes add at most 5%). Without --bundle a tiny
untrained Depth Anything V2 bundle is exported first: its small graph makes the nodes' share look
larger than with a real model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def tiny_bundle(folder: Path) -> Path:
    from depthrt_export.exporter import export_bundle
    from depthrt_export.tiny import write_tiny

    weights = write_tiny("depth-anything-v2", folder / "weights", seed=0)
    bundle, _ = export_bundle("depth-anything-v2-small", weights=str(weights), out=folder / "bundle", check=False)
    return bundle


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="a depth bundle (default: export a tiny Depth Anything V2 one)")
    parser.add_argument("--backend", default="ort-cpu")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", default="512x384", help="frame WIDTHxHEIGHT (default 512x384)")
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds per side (default 9)")
    args = parser.parse_args()

    import torch

    import depthrt
    from comfyui import nodes
    from depthrt.imageio import to_controlnet
    from depthrt.samples import synthetic_image

    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(args.bundle) if args.bundle else tiny_bundle(Path(tmp))
        est = depthrt.load(bundle, backend=args.backend)
        frames = [synthetic_image(height, width, seed=i) for i in range(args.frames)]
        image = torch.from_numpy(np.stack(frames).astype(np.float32) / 255.0)  # as LoadImage / video loaders give

        def direct():
            return [to_controlnet(p.depth, p.kind) for p in est.predict(frames)]

        def node():
            return nodes.DepthrtDepthMap().run(est, image, 0, 0, 1, 0)

        maps, preds = direct(), est.predict(frames)

        def conversions():  # what the node does beyond the direct path: short, so less disturbed
            nodes.images_from_tensor(image)
            nodes.tensor_from_rgb(maps)
            nodes.mask_from(preds, maps[0].shape[:2])

        direct(), node()  # warm-up: per-shape compilation, allocator
        times: dict[str, list[float]] = {"direct": [], "node": [], "conversions": []}
        for _ in range(args.rounds):
            for name, run in (("direct", direct), ("node", node), ("conversions", conversions)):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    print(f"{est.manifest['model']['name']} on {est.backend}, {args.frames} frames of {width}x{height}, "
          f"{args.rounds} rounds each")
    for label, pick in (("best", min), ("median", statistics.median)):
        d, n = pick(times["direct"]), pick(times["node"])
        print(f"  {label:6s} runtime directly {d * 1000:8.1f} ms ({d * 1000 / args.frames:.1f} ms/frame), ComfyUI node "
              f"{n * 1000:8.1f} ms ({n * 1000 / args.frames:.1f} ms/frame): node / direct = {n / d:.3f} "
              f"({100 * (n / d - 1):+.1f}%; target <= +5%)")
    c, d = min(times["conversions"]), min(times["direct"])
    print(f"  the node's own work (IMAGE -> uint8 frames, maps -> IMAGE, MASK): {c * 1000:.1f} ms = "
          f"{100 * c / d:.1f}% of the best direct run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
