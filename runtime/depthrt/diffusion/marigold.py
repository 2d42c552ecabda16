"""Marigold (depth, normals; DDIM or LCM) without torch, step for step as diffusers' pipelines.

Follows ``MarigoldDepthPipeline`` / ``MarigoldNormalsPipeline`` (diffusers 0.3x-0.4x):

1. RGB / 255 * 2 - 1; the long edge resized to ``processing_resolution`` (sizes floored,
   ``F.interpolate(bilinear, antialias=True)``); replicate-padded bottom/right to x8.
2. Image latent = VAE posterior mean x scaling factor; the prediction latent starts as noise
   (``latents``: diffusers' shape ``(ensemble_size, 4, h/8, w/8)``).
3. Per timestep: UNet on concat(image latent, prediction latent) with the empty-prompt embedding,
   then the scheduler step (DDIM v-prediction, trailing timesteps, zero-SNR coefficients; or LCM).
4. Decode; depth = mean of the 3 channels, clipped to [-1, 1], mapped to [0, 1]; normals = clipped,
   z mapped to [0, 1] when the model predicts only the visible half-space, normalised.
5. Un-pad; ensemble (depth: scale-and-shift alignment + median; normals: member closest to the
   mean); resize to the input size with bilinear interpolation (no antialias); normals normalised
   again.

Depth output (``kind`` ``relative_depth``): affine-invariant depth in [0, 1], 0 near and 1 far.
Normals output: HxWx3 float32 unit vectors in Marigold's camera frame, channels (x, y, z):
x points right in the image, y up, z out of the image towards the camera (so a wall facing the
camera is about (0, 0, 1)); to save as RGB use ``(n + 1) / 2``.

Ensembling differs from diffusers for depth: diffusers fits each member's scale and shift with
scipy's BFGS (2 iterations, pairwise RMS cost plus a unit-range regulariser); we fit them by
alternating least squares against the running median (numpy only), then take the median and
rescale it to [0, 1] as diffusers does. Diffusers' fit cannot be reproduced exactly: BFGS takes
its gradient by finite differences with an absolute step of 1.5e-8, and the parameters are cast
to float32 before use, so about half the gradient's components are exactly zero and the rest are
rounding noise (measured: parameters move by at most 1.2e-2 from their min-max start, ensembles
of 2 to 10). On synthetic ensembles (a shared map under random scale/shift plus noise) the two
results differ by centred rel-L2 1e-2 to 2e-1, and ours is as close to the true map or closer.
Normals ensembling is the same as diffusers' ("closest").
"""

from __future__ import annotations

import numpy as np

from ..errors import BundleError, InputError
from ..estimator import Prediction
from ..processing import check_target_size
from .base import DiffusionEstimator, normalize_normals, pad_to_multiple, resize, resize_antialias, to_unit_range, \
    unpad
from .loops import make_scheduler

_F32 = np.float32
ALIGN_ITERATIONS = 4
ALIGN_MAX_PIXELS = 1 << 20


def ensemble_depth(depths: np.ndarray, scale_invariant: bool = True, shift_invariant: bool = True) -> np.ndarray:
    """[E,H,W] affine-invariant depths -> one [H,W] map in [0, 1] (aligned, median, rescaled)."""
    e = len(depths)
    flat = depths.reshape(e, -1).astype(np.float64)
    if flat.shape[1] > ALIGN_MAX_PIXELS:  # fit on a regular subsample, like diffusers' max_res
        flat = flat[:, :: int(np.ceil(flat.shape[1] / ALIGN_MAX_PIXELS))]
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    if shift_invariant:
        s = 1.0 / np.maximum(hi - lo, 1e-6)
        t = -s * lo
    else:
        s, t = 1.0 / np.maximum(hi, 1e-6), np.zeros(e)
    for _ in range(ALIGN_ITERATIONS):
        ref = np.median(flat * s[:, None] + t[:, None], axis=0)
        for i in range(e):
            if shift_invariant:
                a = np.stack([flat[i], np.ones_like(flat[i])], axis=1)
                (s[i], t[i]), *_ = np.linalg.lstsq(a, ref, rcond=None)
            else:
                s[i] = float(flat[i] @ ref / max(flat[i] @ flat[i], 1e-12))
    aligned = depths.astype(np.float64) * s[:, None, None] + t[:, None, None]
    merged = np.median(aligned, axis=0)
    lo = merged.min() if shift_invariant else 0.0
    return ((merged - lo) / max(merged.max() - lo, 1e-6)).astype(_F32)


def ensemble_normals(normals: np.ndarray) -> np.ndarray:
    """[E,3,H,W] unit normals -> [3,H,W]: per pixel, the member closest to the normalised mean."""
    mean = normalize_normals(normals.mean(axis=0, keepdims=True))
    cos = np.clip(np.sum(mean * normals, axis=1), -1.0, 1.0)  # [E,H,W]
    best = np.argmax(cos, axis=0)  # first maximum, as torch.argmax
    return np.take_along_axis(normals, best[None, None], axis=0)[0]


class Estimator(DiffusionEstimator):
    """Marigold depth or normals; see the module docstring for the steps and conventions."""

    def __init__(self, bundle, manifest, backend, precision="fp32", threads=None):
        super().__init__(bundle, manifest, backend, precision, threads)
        loop = self.loop
        self.task = loop.get("task")
        if self.task not in ("depth", "normals"):
            raise BundleError(f"Marigold bundle '{bundle}' has task {self.task!r}, not depth or normals; re-export it")
        if self.text_embedding is None:
            raise BundleError(f"Marigold bundle '{bundle}' has no empty-prompt embedding; re-export it")
        self.scheduler = make_scheduler(loop["scheduler"])
        self.factor = int(loop.get("vae_scale_factor", 8))
        self.latent_channels = int(loop.get("latent_channels", 4))
        pre = manifest.get("preprocessing", {})
        post = manifest.get("postprocessing", {})
        self.resample_input = pre.get("resample", "bilinear")
        self.resample_output = post.get("resample", "bilinear")

    def _prepare(self, image: np.ndarray, resolution: int, where: str):
        h0, w0 = image.shape[:2]
        if resolution % self.factor:
            raise InputError(f"processing_resolution must be a multiple of {self.factor} (or 0), not {resolution}")
        x = to_unit_range(image)
        if resolution > 0:
            edge = max(h0, w0)
            h, w = h0 * resolution // edge, w0 * resolution // edge
            if h == 0 or w == 0:
                raise InputError(f"{where} ({w0}x{h0}) has an extreme aspect ratio: at processing_resolution "
                                 f"{resolution} its short side would be 0 pixels; crop it, or raise "
                                 "processing_resolution")
            check_target_size(h, w, (h0, w0))  # before the resize allocates it; the limits hold after padding
            x = resize_antialias(x, (h, w), self.resample_input)
        x, padding = pad_to_multiple(x, self.factor)
        self.check_image_size(x.shape[2], x.shape[3], where, (h0, w0))
        return x, padding

    def predict_one(self, image, steps, ensemble_size, resolution, rng, latents, where):
        h0, w0 = image.shape[:2]
        timesteps = self.scheduler.timesteps(steps)
        x, padding = self._prepare(image, resolution, where)
        image_latent = self.encode(x)  # [1,C,h,w]
        shape = (ensemble_size, *image_latent.shape[1:])
        pred = self.initial_noise(latents, shape, rng, where,
                                  f"this image at processing_resolution {resolution} with ensemble_size {shape[0]} "
                                  f"needs {shape} (ensemble, channels, height/8, width/8 of the padded image)")
        image_latent = np.repeat(image_latent, ensemble_size, axis=0)
        for i, t in enumerate(timesteps):
            out = self.unet(np.concatenate([image_latent, pred], axis=1), t)
            pred = self.scheduler.step(out, pred, timesteps, i, rng)
        decoded = self.decode(pred)  # [E,3,H,W]
        if self.task == "depth":
            result = (np.clip(decoded.mean(axis=1, keepdims=True), -1.0, 1.0) + _F32(1)) / _F32(2)
        else:
            result = np.clip(decoded, -1.0, 1.0)
            if not self.loop.get("use_full_z_range", True):
                result[:, 2] = result[:, 2] * _F32(0.5) + _F32(0.5)
            result = normalize_normals(result)
        result = unpad(result, padding)
        if ensemble_size > 1:
            if self.task == "depth":
                result = ensemble_depth(result[:, 0], self.loop.get("scale_invariant", True),
                                        self.loop.get("shift_invariant", True))[None, None]
            else:
                result = ensemble_normals(result)[None]
        result = resize(result[:1], (h0, w0), self.resample_output)[0]  # [C,H,W]
        if self.task == "depth":
            return Prediction(depth=np.ascontiguousarray(result[0], dtype=_F32), kind=self.kind, units=self.units)
        normals = normalize_normals(result[None])[0].transpose(1, 2, 0)
        return Prediction(depth=None, kind=self.kind, units=self.units, normals=np.ascontiguousarray(normals))
