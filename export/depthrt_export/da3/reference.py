"""The PyTorch reference pipeline for monocular Depth Anything 3 (the parity target of exports).

Steps, following upstream (``InputProcessor`` with ``upper_bound_resize`` at 504,
``DepthAnything3Net._process_mono_sky_estimation``, ``OutputProcessor``, README metric rule):

1. ``preprocess``: RGB uint8. (a) If the long side is not 504, resize so that it is 504; the other
   side is ``max(1, round(side * 504 / long))`` with Python's round (halves to even); OpenCV
   INTER_CUBIC when growing, INTER_AREA otherwise. (b) Resize each side to its nearest multiple
   of 14 (a tie goes up); INTER_CUBIC if either side grows, else INTER_AREA. Both resizes work on
   the uint8 image (so the intermediate is rounded to uint8). (c) /255, ImageNet mean/std.
   A side under 7 pixels after (a) would round to 0; upstream then uses 1 and its network
   fails; we use 14 instead.
2. ``model(pixel_values)`` -> depth = exp(logits), sky = relu(logits), at the processed size.
3. ``apply_sky``: non-sky = sky < 0.3. Unless there are <= 10 non-sky or <= 10 sky pixels
   (upstream then leaves the depth as is), sky pixels get the 0.99 quantile (linear
   interpolation, ``torch.quantile``) of the non-sky depth, computed exactly per image (upstream
   subsamples 100000 random pixels when there are more, and pools the views of a batch).
   Sky mask = sky >= 0.5.
4. Back to the input size (depthrt's choice; upstream returns the processed size): the filled
   depth and the sky score are resized with bilinear interpolation (align_corners=False, no
   antialiasing), and the mask is taken on the resized score (>= 0.5).
5. DA3METRIC: metres = depth * focal / 300, focal = (fx' + fy') / 2 with fx' = fx * w/W and
   fy' = fy * h/H the intrinsics of the processed (w x h) image given those of the W x H input.

Resizing uses OpenCV when it is importable (what upstream runs); otherwise ``cvresize``, which is
bit-exact for INTER_AREA and within one grey level on ~1e-5 of the pixels for INTER_CUBIC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from depthrt.errors import InputError

from depthrt import cvresize

PROCESS_RES = 504
PATCH = 14
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
NON_SKY_BELOW = 0.3
SKY_AT_LEAST = 0.5
SKY_QUANTILE = 0.99
MIN_PIXELS = 10
METRIC_FOCAL_DIVISOR = 300.0


@dataclass(frozen=True)
class ResizePlan:
    """The two resizes of step 1: ((w, h), interpolation) each, or None when skipped."""

    first: tuple[tuple[int, int], str] | None
    second: tuple[tuple[int, int], str] | None
    size: tuple[int, int]  # final (h, w), multiples of 14


def _nearest_multiple(x: int, p: int = PATCH) -> int:
    down = (x // p) * p
    up = down + p
    return up if abs(up - x) <= abs(x - down) else down


def plan_resize(height: int, width: int, process_res: int = PROCESS_RES) -> ResizePlan:
    if height < 1 or width < 1:
        raise InputError(f"image of size {width}x{height} is empty")
    w, h = width, height
    first = None
    longest = max(w, h)
    if longest != process_res:
        scale = process_res / float(longest)
        nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
        first = ((nw, nh), "cubic" if scale > 1.0 else "area")
        w, h = nw, nh
    nw, nh = max(PATCH, _nearest_multiple(w)), max(PATCH, _nearest_multiple(h))
    second = None
    if (nw, nh) != (w, h):
        second = ((nw, nh), "cubic" if (nw > w or nh > h) else "area")
    return ResizePlan(first, second, (nh, nw))


def _resize_u8(img: np.ndarray, size: tuple[int, int], interp: str, impl: str) -> np.ndarray:
    if impl in ("auto", "cv2"):
        try:
            import cv2  # type: ignore[import-not-found]
        except ImportError:
            if impl == "cv2":
                raise
        else:
            flag = cv2.INTER_CUBIC if interp == "cubic" else cv2.INTER_AREA
            return cv2.resize(np.ascontiguousarray(img), size, interpolation=flag)
    return cvresize.resize(img, size, interp)


def to_rgb_u8(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 from (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 (alpha dropped)."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise InputError(f"expected a uint8 image, got {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise InputError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3])


def preprocess(image: np.ndarray, process_res: int = PROCESS_RES, resize_impl: str = "auto") -> np.ndarray:
    """(1, 3, h, w) float32 pixel values for an RGB uint8 image (step 1)."""
    img = to_rgb_u8(image)
    plan = plan_resize(img.shape[0], img.shape[1], process_res)
    for step in (plan.first, plan.second):
        if step is not None:
            img = _resize_u8(img, step[0], step[1], resize_impl)
    x = (img.astype(np.float32) / np.float32(255.0) - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def apply_sky(depth: torch.Tensor, sky: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 3 for one image: (filled depth, sky mask), same shape as the inputs."""
    non_sky = sky < NON_SKY_BELOW
    n_non_sky = int(non_sky.sum())
    if n_non_sky <= MIN_PIXELS or non_sky.numel() - n_non_sky <= MIN_PIXELS:
        return depth.clone(), sky >= SKY_AT_LEAST
    far = torch.quantile(depth[non_sky].to(torch.float64), SKY_QUANTILE).to(depth.dtype)
    return torch.where(non_sky, depth, far), sky >= SKY_AT_LEAST


def resize_back(depth: torch.Tensor, sky: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 4: (depth, sky score) of shape (h, w) to ``size`` = (H, W), bilinear."""
    if tuple(depth.shape) == tuple(size):
        return depth, sky
    both = torch.stack([depth, sky])[None]
    out = F.interpolate(both, size=size, mode="bilinear", align_corners=False)[0]
    return out[0], out[1]


def processed_focal(fx: float, fy: float, in_size: tuple[int, int], proc_size: tuple[int, int]) -> float:
    """(fx' + fy') / 2 for the processed image; sizes are (H, W) and (h, w)."""
    (big_h, big_w), (h, w) = in_size, proc_size
    return 0.5 * (fx * w / big_w + fy * h / big_h)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    image: np.ndarray,
    *,
    metric: bool = False,
    fx: float | None = None,
    fy: float | None = None,
    process_res: int = PROCESS_RES,
    resize_impl: str = "auto",
) -> dict[str, np.ndarray | float | tuple[int, int]]:
    """Run steps 1-5 on one RGB uint8 image.

    Returns ``depth`` (H, W) float32 at the input size (relative for da3mono; metres for
    da3metric when ``fx``/``fy`` are given, else the network's value before the focal scaling),
    ``sky`` (H, W) bool, the processed-size ``depth_processed`` / ``sky_score_processed``, the
    ``processed_size`` (h, w), and for metric models ``focal_processed`` (or None).
    """
    rgb = to_rgb_u8(image)
    in_size = (rgb.shape[0], rgb.shape[1])
    pixels = torch.from_numpy(preprocess(rgb, process_res, resize_impl))
    depth, sky = model(pixels)
    depth, sky = depth[0].float(), sky[0].float()
    filled, _ = apply_sky(depth, sky)
    out_depth, out_sky = resize_back(filled, sky, in_size)
    focal = None
    if metric and fx is not None and fy is not None:
        focal = processed_focal(fx, fy, in_size, tuple(depth.shape))
        out_depth = out_depth * (focal / METRIC_FOCAL_DIVISOR)
    elif metric and (fx is None) != (fy is None):
        raise InputError("give both fx and fy (pixels of the input image) for metric depth")
    result: dict[str, np.ndarray | float | tuple[int, int]] = {
        "depth": out_depth.numpy().astype(np.float32),
        "sky": (out_sky >= SKY_AT_LEAST).numpy(),
        "depth_processed": filled.numpy(),
        "sky_score_processed": sky.numpy(),
        "processed_size": tuple(depth.shape),
    }
    if metric:
        result["focal_processed"] = focal
    return result
