"""What `depthrt predict` and `depthrt batch` write per image: the ``--save`` kinds, their file names
and the writers (atomic, via :mod:`depthrt.imageio`). One place, so both commands name and encode
their maps the same way."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError

# normals: the RGB normal map; depth bundles derive it from the depth map (depthrt.normals, the MiDaS
# normal-map preprocessor with its defaults), as the ComfyUI DepthrtNormalMap node does.
SAVE_KINDS = ("png16", "color", "npy", "controlnet", "normals")


def parse_save(text: str | None, normals: bool) -> list[str]:
    """What to write per image; normals bundles write an RGB normal map and/or the raw array."""
    if text is None:
        return ["color", "npy"] if normals else ["png16", "color"]
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in SAVE_KINDS]
    if bad or not kinds:
        raise InputError(f"--save {text!r}: choose from {', '.join(SAVE_KINDS)} (comma-separated)")
    if normals and "png16" in kinds:
        raise InputError("--save png16 writes depth maps; this bundle predicts surface normals: use --save "
                         "color (RGB normal map, also used for controlnet) and/or npy (HxWx3 float32)")
    if normals:  # a normals bundle's normal map is its color map: one file
        kinds = list(dict.fromkeys("color" if k == "normals" else k for k in kinds))
    return kinds


def suffixes(normals: bool = False) -> dict[str, str]:
    """File-name suffix per save kind (``photo.jpg`` -> ``photo.depth.png``, ...)."""
    suffix = {"png16": ".depth.png", "color": ".color.png", "npy": ".depth.npy", "controlnet": ".controlnet.png",
              "normals": ".normals.png"}
    if normals:
        suffix.update(color=".normals.png", npy=".normals.npy")
    return suffix


def output_names(images: list[str], out: Path, kinds: list[str], normals: bool = False) -> list[dict[str, Path]]:
    """Output file paths per image; inputs with the same file stem get distinct names."""
    suffix = suffixes(normals)
    seen: dict[str, int] = {}
    names = []
    for image in images:
        stem = Path(image).stem
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        base = stem if n == 0 else f"{stem}-{n}"
        names.append({k: out / (base + suffix[k]) for k in kinds})
    return names


def write_map(kind: str, dest, pred, overwrite: bool = False) -> Path:
    """Write one save kind of a :class:`~depthrt.estimator.Prediction` to ``dest`` (atomically)."""
    from . import imageio

    if pred.normals is not None:  # color and controlnet: the (n + 1) / 2 RGB normal map
        if kind == "npy":
            return imageio.write_npy(dest, pred.normals, overwrite=overwrite)
        return imageio.write_normals_png(dest, pred.normals, overwrite=overwrite)
    if kind == "png16":
        return imageio.write_depth_png16(dest, pred.depth, overwrite=overwrite)
    if kind == "color":
        return imageio.write_color_png(dest, pred.depth, kind=pred.kind, overwrite=overwrite)
    if kind == "npy":
        return imageio.write_npy(dest, pred.depth, overwrite=overwrite)
    if kind == "normals":
        from .normals import normals_from_depth

        return imageio.write_normals_png(dest, normals_from_depth(pred.depth, pred.kind), overwrite=overwrite)
    return imageio.write_controlnet_png(dest, pred.depth, pred.kind, overwrite=overwrite)
