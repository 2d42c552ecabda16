"""The depthrt demo: export a model, predict on the bundled sample image, write depth PNGs.

It exports Depth Anything V2 Small from the Hugging Face hub. Where the hub cannot be reached
(or the weights are not cached) it says so and runs the same pipeline on a small checkpoint it
writes itself in the published layout: that checkpoint is UNTRAINED (random weights), so its depth
maps show that the pipeline works, not what the model sees.

    python scripts/demo.py [--out demo_out] [--model depth-anything-v2-small] [--weights DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "scripts" / "data" / "sample.jpg"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "demo_out"), help="demo folder (default: demo_out)")
    parser.add_argument("--model", default="depth-anything-v2-small", help="preset to export")
    parser.add_argument("--weights", help="local checkpoint folder, if you have one")
    args = parser.parse_args()

    from depthrt.cli import main as depthrt
    from depthrt.errors import WeightsError
    from depthrt.presets import find_preset

    out = Path(args.out)
    preset = find_preset(args.model)
    if preset is None or preset.tiny is None:
        print(f"demo: '{args.model}' is not an exportable preset; see `depthrt models`", file=sys.stderr)
        return 2
    weights = args.weights
    if weights is None:
        from depthrt_export.weights import resolve_weights

        try:
            resolve_weights(preset.hub_id)
            weights = preset.hub_id
        except WeightsError as exc:
            from depthrt_export.tiny import write_tiny

            tiny = out / "untrained-tiny-checkpoint"
            print(f"demo: the weights of {preset.hub_id} are not available here:\n  {exc}\n"
                  f"demo: so this demo writes a SMALL UNTRAINED checkpoint (random weights, published "
                  f"layout) to {tiny}\n      and runs the full pipeline on it: its depth maps are NOT "
                  "meaningful, they only show that export, check and predict work.", file=sys.stderr)
            write_tiny(preset.tiny, tiny, seed=0)
            weights = str(tiny)
    bundle = out / "bundle"
    code = depthrt(["export", args.model, "--weights", weights, "--out", str(bundle), "--force"])
    if code != 0:
        return code
    maps = out / "depth"
    code = depthrt(["predict", str(bundle), str(SAMPLE), "--out", str(maps), "--save", "png16,color,npy,controlnet",
                    "--force"])
    if code != 0:
        return code
    print(f"\ndemo: depth maps of {SAMPLE.name} are in {maps.resolve()}:")
    for path in sorted(maps.iterdir()):
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
