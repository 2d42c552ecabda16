"""Image pre- and post-processing for depth models, in numpy and Pillow only.

Reproduces what Hugging Face transformers' PIL image processors do for DPT / Depth
Anything (``DPTImageProcessorPil``) and ZoeDepth (``ZoeDepthImageProcessorPil``),
including ``post_process_depth_estimation``, without importing torch or transformers.
Everything is driven by two plain JSON-able dicts stored in a bundle's manifest
(built from a ``preprocessor_config.json`` by ``depthrt_export.hf_processing``):

preprocessing::

    {"order": ["resize", "rescale", "normalize", "pad"],     # DPT; Zoe: rescale, pad, resize, normalize
     "resize": {"enabled": true, "height": 518, "width": 518, "keep_aspect": true,
                "multiple_of": 14, "backend": "pil", "resample": "bicubic",
                "align_corners": null},
     "rescale": {"enabled": true, "factor": 0.00392156862745098},
     "normalize": {"enabled": true, "mean": [..3], "std": [..3]},
     "pad": {"enabled": false, "rule": "size_divisor", "mode": "constant",
             "size_divisor": null, "value": 0.0, "factor": null}}

``order`` lists the steps in the order they run; a step whose ``enabled`` is false is
skipped. resize: target ``height``/``width``; ``keep_aspect`` keeps the scale closer to
1 for both sides; sides are rounded (half to even) to ``multiple_of`` (int, or ZoeDepth's
default 1/32); ``backend`` "pil" = PIL.Image.resize on the uint8 image with ``resample``
in nearest|bilinear|bicubic|lanczos|box|hamming, "torch" = torch-style interpolate on
float with ``resample`` in bilinear|bicubic and ``align_corners``. pad: ``rule``
"zoedepth" pads int(sqrt(side / 2) * factor) on each side, "size_divisor" centres the
image in the next multiple of ``size_divisor`` (no pad when null); ``mode`` is a
numpy pad mode (constant uses ``value``).

postprocessing::

    {"resize": "bicubic", "align_corners": false, "remove_padding": false}

``resize``: bicubic|bilinear, torch semantics without antialias; ``remove_padding``
crops what the pad step added (ZoeDepth's post-process does; DPT's does not).

Every step reproduces transformers' dtype handling too (uint8 into PIL, float64 rescale
then a float32 cast, float32 normalize), so DPT pixel values match bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from depthrt.errors import InputError

STEPS = ("resize", "rescale", "normalize", "pad")
PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
TORCH_MODES = ("bilinear", "bicubic")
_F32 = np.float32


# --------------------------------------------------------------------------- interpolation
def _fma(a, b, c) -> np.ndarray:
    """float32 fused multiply-add: the float64 product of float32 values is exact."""
    return (np.float64(a) * np.asarray(b, np.float64) + np.float64(c)).astype(_F32)


def _cubic_weights(t: np.ndarray) -> list[np.ndarray]:
    """torch's get_cubic_upsample_coefficients (A = -0.75) in float32, as ATen's x86 build
    evaluates them: the compiler fuses two of cubic_convolution2's multiply-adds into FMAs
    (found by matching torch's weights bit for bit; plain float32 is off by a few ulp).
    """
    a, one = _F32(-0.75), _F32(1.0)

    def conv1(x):  # |x| <= 1: ((A + 2) x - (A + 3)) x x + 1
        return ((a + _F32(2)) * x - (a + _F32(3))) * x * x + one

    def conv2(x):  # 1 < |x| < 2: ((A x - 5A) x + 8A) x - 4A
        return _fma(_fma(a, x, -(_F32(5) * a)), x, _F32(8) * a) * x - _F32(4) * a

    x2 = one - t
    return [conv2(t + one), conv1(t), conv1(x2), conv2(x2 + one)]


def _axis_taps(n_in: int, n_out: int, mode: str, align_corners: bool):
    """Source indices and weights along one axis, as ATen's UpSampleKernel computes them.

    Scale, source coordinate and weights are computed in float32 (torch's opmath for
    float32 tensors) so that floor() picks the same taps as torch does.
    """
    if mode == "bilinear" and n_in == n_out:  # ATen short-cuts linear identity resizes
        return [np.arange(n_out)], [np.ones(n_out, _F32)]
    dst = np.arange(n_out, dtype=_F32)
    if align_corners:
        scale = _F32(n_in - 1) / _F32(n_out - 1) if n_out > 1 else _F32(0)
        real = scale * dst
    else:
        scale = _F32(n_in) / _F32(n_out)
        # ATen's compiled kernel fuses this multiply-add (FMA: one rounding). Emulate it:
        # the float64 product of two float32 values is exact, then round once to float32.
        # A plain float32 multiply-then-subtract picks other taps near integers (~3e-5 off).
        real = _fma(scale, dst + _F32(0.5), _F32(-0.5))
        if mode == "bilinear":  # linear modes clamp negative coordinates, cubic does not
            real = np.maximum(real, _F32(0))
    # guard_index_and_lambda: index <= n_in - 1, lambda clamped to [0, 1]
    idx = np.minimum(np.floor(real).astype(np.int64), n_in - 1)
    lam = np.clip(real - idx.astype(_F32), _F32(0), _F32(1)).astype(_F32)
    if mode == "bilinear":
        idx1 = idx + (idx < n_in - 1)
        return [idx, idx1], [(_F32(1) - lam).astype(_F32), lam]
    taps = [np.clip(idx - 1 + k, 0, n_in - 1) for k in range(4)]
    return taps, [w.astype(_F32) for w in _cubic_weights(lam)]


def _resample_axis(src: np.ndarray, taps, weights, axis: int, exact: bool) -> np.ndarray:
    """One separable pass: out = sum_k weights[k] * src gathered at taps[k] along ``axis``.

    Buffers are reused (``np.take(out=..., mode="clip")``, in-place ufuncs) because fresh
    multi-megabyte temporaries cost more in page faults than the arithmetic itself.
    Taps are summed in ATen's order (tap 1, then 0, 2, 3). ``exact`` also reproduces
    ATen's fused multiply-adds (float64 product + add, one rounding to float32).
    """
    order = [1, 0, 2, 3][:len(taps)] if len(taps) > 1 else [0]
    shape = list(src.shape)
    shape[axis] = len(taps[0])
    view = (lambda w: w) if axis == -1 else (lambda w: w[:, None])
    acc = np.take(src, taps[order[0]], axis=axis, mode="clip")
    acc *= view(weights[order[0]])
    if len(order) == 1:
        return acc
    gathered = np.empty(shape, _F32)
    wide = np.empty(shape, np.float64) if exact else None
    for k in order[1:]:
        np.take(src, taps[k], axis=axis, out=gathered, mode="clip")
        if exact:
            np.multiply(gathered, view(weights[k]), out=wide, dtype=np.float64)
            wide += acc
            np.copyto(acc, wide, casting="same_kind")
        else:
            gathered *= view(weights[k])
            acc += gathered
    return acc


def interpolate(x: np.ndarray, size: tuple[int, int], mode: str = "bicubic",
                align_corners: bool = False, exact: bool = False) -> np.ndarray:
    """numpy twin of ``torch.nn.functional.interpolate`` (no antialias) on the last 2 axes.

    ``x`` is (..., H, W) float; returns float32 (..., h, w). Bicubic is cubic convolution
    with A = -0.75 and edge-clamped taps, bilinear the usual 2-tap kernel, both with
    ATen's coordinate rules. Separable: width pass, then height pass, which is the
    evaluation order of ATen's nested kernel (height taps outside, width taps inside).
    Default: plain float32 sums, within a few float32 ulp of torch (about 1e-7 relative;
    518x518 -> 1080x1920 takes about 15 ms on one core). ``exact=True`` emulates the
    fused multiply-adds of torch's x86 build too: bit-identical to torch for nearly all
    pixels, about 2.5x slower.
    """
    if mode not in TORCH_MODES:
        raise InputError(f"interpolation mode {mode!r} is not supported; use one of {TORCH_MODES}")
    out_h, out_w = int(size[0]), int(size[1])
    if out_h < 1 or out_w < 1:
        raise InputError(f"cannot resize to {out_h}x{out_w}: both sides must be at least 1")
    x = np.asarray(x, dtype=_F32)
    if x.ndim < 2 or x.shape[-2] < 1 or x.shape[-1] < 1:
        raise InputError(f"cannot resize an array of shape {tuple(x.shape)}")
    in_h, in_w = x.shape[-2:]
    taps, weights = _axis_taps(in_w, out_w, mode, align_corners)
    tmp = _resample_axis(x, taps, weights, -1, exact)
    taps, weights = _axis_taps(in_h, out_h, mode, align_corners)
    return _resample_axis(tmp, taps, weights, -2, exact)


# --------------------------------------------------------------------------- preprocessing
def _round_to_multiple(val: float, multiple: float) -> int:
    """constrain_to_multiple_of of DPT/Zoe: round half to even, then (Zoe) truncate to int.

    ``multiple`` may be fractional (ZoeDepth's class default is 1/32).
    """
    return int(np.round(val / multiple) * multiple)


def resize_output_size(height: int, width: int, resize: dict) -> tuple[int, int]:
    """get_resize_output_image_size of DPT and ZoeDepth (both are the same formula)."""
    scale_h = resize["height"] / height
    scale_w = resize["width"] / width
    if resize.get("keep_aspect", False):
        # "scale as little as possible": keep the scale that is closer to 1
        if abs(1 - scale_w) < abs(1 - scale_h):
            scale_h = scale_w
        else:
            scale_w = scale_h
    multiple = resize.get("multiple_of", 1) or 1
    return (_round_to_multiple(scale_h * height, multiple),
            _round_to_multiple(scale_w * width, multiple))


# The most pixels a resize may produce: Pillow's decompression-bomb limit, which read_image applies
# to input files too. Far above what a model runs; below it no resize can exhaust memory.
MAX_PIXELS = 89_478_485


def check_target_size(height: int, width: int, original: tuple[int, int]) -> None:
    """Refuse a resize target above MAX_PIXELS (a huge processing_resolution) before allocating it."""
    if height * width > MAX_PIXELS:
        raise InputError(f"an image of {original[1]}x{original[0]} pixels would be resized to {width}x{height} "
                         f"({height * width / 1e6:.0f} megapixels) for the model, more than depthrt processes "
                         f"({MAX_PIXELS / 1e6:.0f}); use a smaller processing_resolution")


def _check_image(image) -> None:
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"image must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image must have shape (height, width, 3), got {tuple(image.shape)}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"image is empty ({image.shape[0]}x{image.shape[1]} pixels)")


def _zoe_pad_amounts(height: int, width: int, factor: float) -> tuple[int, int]:
    """ZoeDepth pads int(sqrt(side / 2) * 3) on each side, from the size at pad time."""
    return int(np.sqrt(height / 2) * factor), int(np.sqrt(width / 2) * factor)


def _nearest_multiple(x: int, multiple: int) -> int:
    """The multiple of ``multiple`` nearest to ``x`` (a tie goes up), at least ``multiple``."""
    down = (x // multiple) * multiple
    up = down + multiple
    return max(multiple, up if abs(up - x) <= abs(x - down) else down)


def long_side_plan(height: int, width: int, spec: dict) -> list[tuple[int, int, str]]:
    """The resizes of the ``long_side`` rule (Depth Anything 3), each (h, w, "area"|"cubic").

    First the long side goes to ``long_side`` (the other side ``round()``-ed, halves to even),
    then each side to its nearest multiple; OpenCV INTER_AREA when shrinking, INTER_CUBIC when
    growing (either side), each resize on the uint8 image as upstream does it.
    """
    plan = []
    h, w = height, width
    target, multiple = int(spec["long_side"]), int(spec.get("multiple_of", 14))
    if max(h, w) != target:
        scale = target / float(max(h, w))
        h, w = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        plan.append((h, w, "cubic" if scale > 1.0 else "area"))
    nh, nw = _nearest_multiple(h, multiple), _nearest_multiple(w, multiple)
    if (nh, nw) != (h, w):
        plan.append((nh, nw, "cubic" if (nh > h or nw > w) else "area"))
    return plan


def _opencv_resize():
    """OpenCV's resize when it is installed (what upstream runs), else our numpy twin of it.

    ``cvresize`` is bit-exact for INTER_AREA and within one grey level on ~1e-5 of the pixels for
    INTER_CUBIC, so results agree across machines to that level either way.
    """
    try:
        import cv2
    except ImportError:
        from . import cvresize

        return cvresize.resize
    flags = {"area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC}
    return lambda img, size, method: cv2.resize(img, size, interpolation=flags[method])


def _resize_long_side(img: np.ndarray, spec: dict) -> np.ndarray:
    if img.dtype != np.uint8:
        raise InputError("the long_side resize must come before rescale/normalize in preprocessing.order")
    resize = _opencv_resize()
    hwc = np.ascontiguousarray(img.transpose(1, 2, 0))
    plan = long_side_plan(hwc.shape[0], hwc.shape[1], spec)
    for h, w, _ in plan:
        check_target_size(h, w, hwc.shape[:2])
    for h, w, method in plan:
        hwc = resize(hwc, (w, h), method)
    return hwc.transpose(2, 0, 1)


def with_resolution(resize: dict, resolution: int | None) -> dict:
    """The resize step with a user's processing resolution in place of the model's.

    ``fit`` rules (DPT, Depth Anything, ZoeDepth) scale the target box so its height is
    ``resolution`` (keeping ZoeDepth's 384:512 box shape); ``long_side`` (DA3) sets the long side.
    """
    if resolution is None:
        return resize
    if isinstance(resolution, (bool, np.bool_)) or not isinstance(resolution, (int, float, np.integer, np.floating)) \
            or not math.isfinite(resolution) or resolution != int(resolution):
        raise InputError(f"processing resolution must be a whole number of pixels, not {resolution!r}")
    resolution = int(resolution)
    if resolution < 1:
        raise InputError(f"processing resolution must be a positive number of pixels, got {resolution}")
    multiple = int(resize.get("multiple_of", 1) or 1)
    if resolution < multiple:  # sizes round to the multiple: below it every image would become 0 pixels
        raise InputError(f"processing resolution {resolution} is smaller than this model's size step "
                         f"({multiple} pixels); use at least {multiple}")
    if resize.get("rule") == "long_side":
        return {**resize, "long_side": resolution}
    ratio = resize["width"] / resize["height"]
    return {**resize, "height": resolution, "width": max(1, int(round(resolution * ratio)))}


def _resize(img: np.ndarray, spec: dict, original: tuple[int, int]) -> np.ndarray:
    if spec.get("rule") == "long_side":
        return _resize_long_side(img, spec)
    h, w = img.shape[-2:]
    out_h, out_w = resize_output_size(h, w, spec)
    if out_h < 1 or out_w < 1:
        raise InputError(
            f"image of {original[0]}x{original[1]} pixels is too small or too thin for this model "
            f"(it would be resized to {out_h}x{out_w}); use a larger image")
    check_target_size(out_h, out_w, original)
    backend = spec.get("backend", "pil")
    if backend == "pil":
        # transformers hands uint8 images to PIL as-is (and PIL antialiases when shrinking).
        # A float image would be scaled by 255 and back, which no supported layout does.
        if img.dtype != np.uint8:
            raise InputError("the PIL resize must come before rescale/normalize in preprocessing.order")
        flt = PIL_FILTERS[spec.get("resample", "bicubic")]
        pil = Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)))
        return np.asarray(pil.resize((out_w, out_h), resample=flt)).transpose(2, 0, 1)
    if backend == "torch":
        # ZoeDepth: torch interpolate on the float image, no antialias.
        # exact=True: bit-level parity with torch is cheap at model-input sizes
        return interpolate(img.astype(_F32, copy=False), (out_h, out_w),
                           spec.get("resample", "bilinear"), bool(spec.get("align_corners", False)),
                           exact=True)
    raise InputError(f"unknown resize backend {backend!r}; expected 'pil' or 'torch'")


def _pad(img: np.ndarray, spec: dict) -> tuple[np.ndarray, list[int]]:
    """Return the padded CHW image and [top, bottom, left, right] in its own pixels."""
    h, w = img.shape[-2:]
    rule = spec.get("rule", "size_divisor")
    if rule == "zoedepth":
        ph, pw = _zoe_pad_amounts(h, w, spec.get("factor", 3) or 3)
        pads = [ph, ph, pw, pw]
    elif rule == "size_divisor":
        div = spec.get("size_divisor")
        if not div:  # DPT pads only when do_pad and size_divisor is not None
            return img, [0, 0, 0, 0]
        ph, pw = math.ceil(h / div) * div - h, math.ceil(w / div) * div - w
        pads = [ph // 2, ph - ph // 2, pw // 2, pw - pw // 2]  # centred, extra pixel after
    else:
        raise InputError(f"unknown padding rule {rule!r}; expected 'zoedepth' or 'size_divisor'")
    width = ((0, 0), (pads[0], pads[1]), (pads[2], pads[3]))
    mode = spec.get("mode", "constant")
    if mode == "constant":
        return np.pad(img, width, mode="constant", constant_values=spec.get("value", 0.0)), pads
    if mode in ("reflect", "edge", "symmetric"):
        return np.pad(img, width, mode=mode), pads
    raise InputError(f"unknown padding mode {mode!r}")


def _lookup(img: np.ndarray, table: np.ndarray, normalize: dict | None) -> np.ndarray:
    """Map a uint8 CHW image through ``table`` (and, folded in, ``normalize``), channel by channel.

    Folding normalisation into one 256-entry table per channel gives the same float32 values as
    rescaling and then computing ``(x - mean) / std`` elementwise, at a fifth of the cost: the
    image is read once, contiguously, and no float temporaries are made.
    """
    channels = img.shape[0]
    tables = np.broadcast_to(table, (channels, 256))
    if normalize is not None:
        mean = np.broadcast_to(np.asarray(normalize["mean"], dtype=_F32).reshape(-1), (channels,))
        std = np.broadcast_to(np.asarray(normalize["std"], dtype=_F32).reshape(-1), (channels,))
        tables = (tables - mean[:, None]) / std[:, None]
    src = np.ascontiguousarray(img)
    out = np.empty(src.shape, dtype=_F32)
    for c in range(channels):
        np.take(tables[c], src[c], out=out[c])
    return out


def preprocess(image: np.ndarray, spec: dict, resolution: int | None = None) -> tuple[np.ndarray, dict]:
    """Turn an (H, W, 3) uint8 RGB image into the model's float32 (3, h, w) input.

    Returns ``(pixel_values, meta)``; ``meta`` holds what :func:`postprocess` needs:
    ``input_size`` [H, W], ``model_size`` [h, w], ``pad`` [top, bottom, left, right] (in
    the pixels of the array the pad was applied to), ``pad_stage_size`` (that array's
    [h, w] before padding) and ``pad_rule``. All plain ints/strings: JSON-able.
    ``resolution`` overrides the resize target (see :func:`with_resolution`).
    """
    _check_image(image)
    original = (int(image.shape[0]), int(image.shape[1]))
    img = image.transpose(2, 0, 1)  # CHW, as transformers processes it
    meta = {"input_size": list(original), "pad": [0, 0, 0, 0], "pad_stage_size": None,
            "pad_rule": None}
    steps = [s for s in spec.get("order", STEPS) if (spec.get(s) or {}).get("enabled", False)]
    fused = False
    for i, step in enumerate(steps):
        cfg = spec[step]
        if step == "resize":
            img = _resize(img, with_resolution(cfg, resolution), original)
        elif step == "rescale":
            # transformers: astype(float64) * factor, then cast to float32. For uint8 a
            # 256-entry table of those very values is bit-identical and much faster.
            factor = float(cfg["factor"])
            if img.dtype == np.uint8:
                table = (np.arange(256, dtype=np.float64) * factor).astype(_F32)
                fused = i + 1 < len(steps) and steps[i + 1] == "normalize"
                img = _lookup(img, table, spec["normalize"] if fused else None)
            else:
                img = (img.astype(np.float64) * factor).astype(_F32)
        elif step == "normalize":
            if fused:  # already folded into the rescale tables
                continue
            mean = np.asarray(cfg["mean"], dtype=_F32).reshape(-1, 1, 1)
            std = np.asarray(cfg["std"], dtype=_F32).reshape(-1, 1, 1)
            img = (img.astype(_F32, copy=False) - mean) / std  # float32, like transformers
        elif step == "pad":
            meta["pad_stage_size"] = [int(img.shape[1]), int(img.shape[2])]
            img, meta["pad"] = _pad(img, cfg)
            meta["pad_rule"] = cfg.get("rule", "size_divisor")
        else:
            raise InputError(f"unknown preprocessing step {step!r}; expected one of {STEPS}")
    out = np.ascontiguousarray(img, dtype=_F32)
    meta["model_size"] = [int(out.shape[1]), int(out.shape[2])]
    return out, meta


# --------------------------------------------------------------------------- postprocessing
def postprocess(depth: np.ndarray, meta: dict, spec: dict,
                target_size: tuple[int, int] | None = None) -> np.ndarray:
    """Bring the model's (h, w) depth map back to the input image size (or ``target_size``).

    DPT / Depth Anything: one bicubic resize (align_corners=False) to the target size.
    ZoeDepth (``remove_padding`` with the ``zoedepth`` pad rule): resize to the padded
    source size (H + 2*pad_h, W + 2*pad_w), crop the padding, then resize to the target
    (a no-op when it is the source size), as ``post_process_depth_estimation`` does with
    ``source_sizes=[(H, W)]``. Leading size-1 axes of ``depth`` are dropped.
    """
    depth = np.asarray(depth)
    while depth.ndim > 2 and depth.shape[0] == 1:
        depth = depth[0]
    if depth.ndim != 2 or depth.shape[0] < 1 or depth.shape[1] < 1:
        raise InputError(f"depth must be a 2-D (height, width) array, got shape {tuple(depth.shape)}")
    if not np.issubdtype(depth.dtype, np.floating):
        raise InputError(f"depth must be a float array, got dtype {depth.dtype}")
    depth = depth.astype(_F32, copy=False)
    mode = spec.get("resize", "bicubic")
    align = bool(spec.get("align_corners", False))
    src_h, src_w = (int(v) for v in meta["input_size"])
    top, bottom, left, right = (int(v) for v in meta.get("pad") or (0, 0, 0, 0))
    if spec.get("remove_padding", False) and any((top, bottom, left, right)):
        if meta.get("pad_rule") == "zoedepth" and meta.get("pad_stage_size") == [src_h, src_w]:
            # pads were computed on the source size (pad precedes resize): resize the whole
            # map to the padded source size, then cut the pads away
            depth = interpolate(depth, (src_h + top + bottom, src_w + left + right), mode, align)
            depth = depth[top:depth.shape[0] - bottom, left:depth.shape[1] - right]
        else:
            # pad applied after resize: crop its share of the map (not done by transformers)
            ph, pw = meta["pad_stage_size"]
            h, w = depth.shape
            fh, fw = h / (ph + top + bottom), w / (pw + left + right)
            depth = depth[round(top * fh):h - round(bottom * fh), round(left * fw):w - round(right * fw)]
    out_h, out_w = (int(v) for v in (target_size if target_size is not None else (src_h, src_w)))
    if depth.shape != (out_h, out_w):  # torchvision skips equal-size resizes; bicubic is exact there
        depth = interpolate(depth, (out_h, out_w), mode, align)
    return np.ascontiguousarray(depth, dtype=_F32)
