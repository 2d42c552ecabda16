"""Parity of every preset family on tiny random-weight checkpoints, as one table.

    python scripts/parity_table.py [--presets dpt-large,zoedepth-nyu-kitti,...] [--json FILE]

Writes each preset's tiny checkpoint in its published layout, exports it (one bundle per preset)
and runs `depthrt check` at portrait, landscape and odd sizes; prints centred rel-L2 per size.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

DEFAULT = ("dpt-large", "dpt-hybrid-midas", "dpt-beit-large-512", "zoedepth-nyu", "zoedepth-nyu-kitti",
           "depth-anything-small", "depth-anything-v2-small", "depth-anything-v2-metric-indoor-small",
           "da3-mono-large", "da3-metric-large")
SIZES = ((517, 333), (360, 480), (701, 250))  # (height, width): 333x517, 480x360, 250x701 as WxH


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(DEFAULT))
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()

    from depthrt.presets import find_preset
    from depthrt_export.check import run_check
    from depthrt_export.exporter import export_bundle
    from depthrt_export.tiny import write_tiny

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets.split(","):
            preset = find_preset(name)
            ckpt = write_tiny(preset.tiny, Path(tmp) / "ckpt" / name)
            bundle, _ = export_bundle(name, weights=str(ckpt), out=Path(tmp) / "bundles" / name, check=False)
            report = run_check(bundle, sizes=SIZES)
            rows.append({"preset": name, "passed": report["passed"],
                         **{r["size"]: r["rel_l2"] for r in report["images"]}})
    sizes = [f"{w}x{h}" for h, w in SIZES]
    print(f"{'preset (tiny checkpoint)':<40}" + "".join(f"{s:>12}" for s in sizes) + "  result")
    for row in rows:
        print(f"{row['preset']:<40}" + "".join(f"{row[s]:>12.2e}" for s in sizes)
              + f"  {'ok' if row['passed'] else 'FAIL'}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
