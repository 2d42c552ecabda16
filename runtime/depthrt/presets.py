"""The model presets of depthrt: one row per public checkpoint we support or plan to.

This table is pure data so that `depthrt models` works without torch. Export code maps a
preset's ``family`` to the spec that knows how to load and export it; the ``tiny`` field names
the tiny-checkpoint variant that the tests and the offline demo write in the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    hub_id: str
    family: str
    kind: str  # what the output means: relative_inverse_depth, metric_depth, relative_depth, normals
    units: str  # "relative", "metres", "unit vectors"
    licence: str
    status: str = "supported"  # "supported", or the issue that brings it ("planned: ...")
    tiny: str | None = None  # tiny-checkpoint variant (see depthrt_export.tiny)


_REL = ("relative_inverse_depth", "relative")
_METRIC = ("metric_depth", "metres")

PRESETS: tuple[Preset, ...] = (
    Preset("dpt-large", "Intel/dpt-large", "dpt", *_REL, "apache-2.0", tiny="dpt-vit"),
    Preset("dpt-hybrid-midas", "Intel/dpt-hybrid-midas", "dpt", *_REL, "apache-2.0", tiny="dpt-hybrid"),
    Preset("dpt-beit-large-512", "Intel/dpt-beit-large-512", "dpt", *_REL, "mit", tiny="dpt-beit"),
    Preset("zoedepth-nyu", "Intel/zoedepth-nyu", "zoedepth", *_METRIC, "mit", tiny="zoedepth-nyu"),
    Preset("zoedepth-kitti", "Intel/zoedepth-kitti", "zoedepth", *_METRIC, "mit", tiny="zoedepth-kitti"),
    Preset("zoedepth-nyu-kitti", "Intel/zoedepth-nyu-kitti", "zoedepth", *_METRIC, "mit",
           tiny="zoedepth-nyu-kitti"),
    Preset("depth-anything-small", "LiheYoung/depth-anything-small-hf", "depth_anything", *_REL,
           "apache-2.0", tiny="depth-anything-v1"),
    Preset("depth-anything-base", "LiheYoung/depth-anything-base-hf", "depth_anything", *_REL,
           "apache-2.0", tiny="depth-anything-v1"),
    Preset("depth-anything-large", "LiheYoung/depth-anything-large-hf", "depth_anything", *_REL,
           "apache-2.0", tiny="depth-anything-v1"),
    Preset("depth-anything-v2-small", "depth-anything/Depth-Anything-V2-Small-hf", "depth_anything",
           *_REL, "apache-2.0", tiny="depth-anything-v2"),
    Preset("depth-anything-v2-base", "depth-anything/Depth-Anything-V2-Base-hf", "depth_anything",
           *_REL, "cc-by-nc-4.0", tiny="depth-anything-v2"),
    Preset("depth-anything-v2-large", "depth-anything/Depth-Anything-V2-Large-hf", "depth_anything",
           *_REL, "cc-by-nc-4.0", tiny="depth-anything-v2"),
    *(
        Preset(f"depth-anything-v2-metric-{scene.lower()}-{size.lower()}",
               f"depth-anything/Depth-Anything-V2-Metric-{scene}-{size}-hf", "depth_anything", *_METRIC,
               "apache-2.0" if size == "Small" else "cc-by-nc-4.0",
               tiny=f"depth-anything-v2-metric-{scene.lower()}")
        for scene in ("Indoor", "Outdoor") for size in ("Small", "Base", "Large")
    ),
    Preset("da3-mono-large", "depth-anything/DA3MONO-LARGE", "da3", "relative_depth", "relative",
           "apache-2.0", tiny="da3mono-large"),
    Preset("da3-metric-large", "depth-anything/DA3METRIC-LARGE", "da3", "metric_depth",
           "metres (with focal_px)", "apache-2.0", tiny="da3metric-large"),
    Preset("marigold-depth-v1-1", "prs-eth/marigold-depth-v1-1", "marigold", "relative_depth",
           "affine-invariant [0,1]", "apache-2.0", tiny="marigold-depth"),
    Preset("marigold-normals-v1-1", "prs-eth/marigold-normals-v1-1", "marigold", "normals",
           "unit vectors", "apache-2.0", tiny="marigold-normals"),
    Preset("marigold-depth-lcm-v1-0", "prs-eth/marigold-depth-lcm-v1-0", "marigold", "relative_depth",
           "affine-invariant [0,1]", "apache-2.0", tiny="marigold-depth-lcm"),
    Preset("lotus-depth-g-v2-1-disparity", "jingheya/lotus-depth-g-v2-1-disparity", "lotus",
           "relative_inverse_depth", "relative", "apache-2.0", tiny="lotus-depth-g"),
    Preset("lotus-depth-d-v2-0-disparity", "jingheya/lotus-depth-d-v2-0-disparity", "lotus",
           "relative_inverse_depth", "relative", "apache-2.0", tiny="lotus-depth-d"),
    Preset("lotus-normal-g-v1-1", "jingheya/lotus-normal-g-v1-1", "lotus", "normals", "unit vectors",
           "apache-2.0", tiny="lotus-normal-g"),
    Preset("lotus-normal-d-v1-1", "jingheya/lotus-normal-d-v1-1", "lotus", "normals", "unit vectors",
           "apache-2.0", tiny="lotus-normal-d"),
    Preset("lbm-depth", "jasperai/LBM_depth", "lbm", "relative_depth", "relative", "cc-by-nc-4.0",
           tiny="lbm-depth"),
    Preset("lbm-normals", "jasperai/LBM_normals", "lbm", "normals", "unit vectors", "cc-by-nc-4.0",
           tiny="lbm-normals"),
)


# Not presets, listed so `depthrt models` says why: the multi-view ("any-view") Depth Anything 3
# models estimate depth and camera poses from several images jointly; depthrt runs single images.
LEFT_OUT = ("depth-anything/DA3-GIANT, DA3-LARGE, DA3-BASE, DA3-SMALL, DA3NESTED-GIANT-LARGE: multi-view "
            "(any-view) Depth Anything 3 models, out of scope: depthrt estimates depth from single images")


def find_preset(model: str) -> Preset | None:
    """The preset named ``model`` (a preset name or a hub id, case-insensitive), or None."""
    key = model.strip().lower()
    for preset in PRESETS:
        if key in (preset.name.lower(), preset.hub_id.lower()):
            return preset
    return None


def format_table(presets: tuple[Preset, ...] = PRESETS) -> str:
    """A plain-text table for `depthrt models`."""
    header = ("name", "hub id", "family", "output", "units", "licence", "status")
    rows = [header] + [(p.name, p.hub_id, p.family, p.kind, p.units, p.licence, p.status) for p in presets]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
