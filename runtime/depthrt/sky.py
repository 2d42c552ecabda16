"""Sky handling of Depth Anything 3 (data-dependent, so it lives in the runtime, not the graph).

Upstream (``_process_mono_sky_estimation``): pixels whose sky score is below 0.3 are non-sky;
sky pixels get the 0.99 quantile of the non-sky depth, unless there are 10 or fewer pixels of
either kind. Upstream takes that quantile over a random 100k-pixel subsample of large images; we
take it exactly (linear interpolation, float64, as ``torch.quantile``). The returned mask is
score >= 0.5, taken after the score is resized to the input's size.
"""

from __future__ import annotations

import numpy as np

from .processing import interpolate


def fill_sky(depth: np.ndarray, score: np.ndarray, spec: dict) -> np.ndarray:
    """The depth map (processed size) with sky pixels set to the far quantile of the rest."""
    non_sky = score < spec["non_sky_below"]
    n_non_sky = int(non_sky.sum())
    if n_non_sky <= spec["min_pixels"] or non_sky.size - n_non_sky <= spec["min_pixels"]:
        return depth
    far = np.quantile(depth[non_sky].astype(np.float64), spec["quantile"], method="linear")
    return np.where(non_sky, depth, np.float32(far)).astype(np.float32)


def postprocess_sky(depth: np.ndarray, score: np.ndarray, input_size: tuple[int, int], post: dict):
    """(depth, sky mask) at the input's size from the processed-size depth and sky score."""
    spec = post["sky"]
    filled = fill_sky(depth, score, spec)
    if filled.shape != tuple(input_size):
        both = interpolate(np.stack([filled, score]), input_size, post.get("resize", "bilinear"),
                           bool(post.get("align_corners", False)))
        filled, score = both[0], both[1]
    return np.ascontiguousarray(filled, dtype=np.float32), score >= spec["mask_at_least"]
