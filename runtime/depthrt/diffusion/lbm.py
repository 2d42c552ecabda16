"""LBM (depth, normals) without torch, step for step as LBM's ``evaluate()`` and ``LBMModel.sample``.

1. The image is resized to the closest aspect bucket (width/height; SDXL's buckets at
   ``processing_resolution`` 1024, scaled proportionally otherwise, multiples of 8) with PIL's
   bicubic filter, then ``/ 255 * 2 - 1``.
2. Source latent = VAE posterior mean x scaling factor (upstream samples the posterior; the mean is
   deterministic), in one encoder call at any size (upstream tiles only the decode). The bridge starts there: no initial noise.
3. N flow-matching Euler steps: sigmas ``linspace(1, 1/N, N)`` then 0, timestep ``sigma * 1000``;
   ``x <- x + (sigma_next - sigma) * unet(x, t)``; after every step but the last, the bridge noise
   ``bridge_noise_sigma * sqrt(sigma_next (1 - sigma_next)) * noise``. ``latents`` (optional) are
   those noise draws, shape ``(N - 1, 4, h/8, w/8)``; otherwise they come from ``seed``.
4. Decode as upstream's ``AutoencoderKLDiffusers.decode`` does: a latent larger than the tile
   (``loop.decoder_tiles``: 128 latent pixels, overlap 16, as ``get_model`` sets them) in either
   side is cut into overlapping tiles (:func:`decode_tiled`), each zero-padded to the full tile,
   decoded, cropped and merged with Gaussian weights; smaller latents in one call. Then clamp to
   [-1, 1], ``(x + 1) / 2``, and, unlike upstream, back to the input's size (bilinear, antialiased
   when shrinking). ``predict(..., tiled_decode=False)`` decodes every latent in one call instead:
   fewer decoder pixels (tiles are padded to 128 x 128 and overlap), but the VAE's mid-block
   attention is quadratic in the latent's pixels (its fp32 score matrix alone is 1 GiB for a 128 x
   128 tile, 16 GiB for the 256 x 256 latent of ``processing_resolution=2048``), and the result
   differs from upstream's at every non-square bucket (the decoder sees the whole image, not tiles).
5. Depth = mean of the 3 channels in [0, 1]; normals = ``2 x - 1`` normalised, HxWx3 (x, y, z).
"""

from __future__ import annotations

import contextvars

import numpy as np
from PIL import Image

from ..errors import BundleError, InputError
from .base import DiffusionEstimator, resize_antialias

_F32 = np.float32


def bucket_size(height: int, width: int, buckets, resolution: int, base: int = 1024) -> tuple[int, int]:
    """evaluate()'s closest (width, height) bucket by width/height (first on ties), scaled by
    resolution / base and rounded to multiples of 8; returns (height, width)."""
    ratio = width / height
    bw, bh = min(buckets, key=lambda b: abs(b[0] / b[1] - ratio))
    scale = resolution / base
    return max(8, int(round(bh * scale / 8)) * 8), max(8, int(round(bw * scale / 8)) * 8)


# get_model's tiling_size (128, 128) and AutoencoderKLDiffusersConfig's tiling_overlap (16, 16), in latent pixels.
UPSTREAM_TILES = {"latent_tile": 128, "overlap": 16}
_TILED = contextvars.ContextVar("lbm_tiled_decode", default=True)  # this call's tiled_decode (thread-safe)
_GAUSS_VAR = 0.01  # Tiler._gaussian_weights: variance in units of the tile's size squared


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tiler.get_tiles' tile origins along one axis: every ``tile - overlap`` from 0 while below
    ``size`` (the last tiles may be short); no overlap on an axis that fits in one tile."""
    return list(range(0, size, tile - (overlap if size > tile else 0)))


def gaussian_weights(height: int, width: int) -> np.ndarray:
    """Tiler._gaussian_weights for a decoded tile of (height, width): float64 (height, width).

    A normal profile with variance 0.01 x size^2 per axis; as upstream, the column midpoint is
    ``(width - 1) / 2`` but the row midpoint ``height / 2``."""
    def profile(n: int, mid: float) -> np.ndarray:
        d = np.arange(n, dtype=np.float64) - mid
        return np.exp(-d * d / (n * n) / (2 * _GAUSS_VAR)) / np.sqrt(2 * np.pi * _GAUSS_VAR)

    return np.outer(profile(height, height / 2), profile(width, (width - 1) / 2))


def decode_tiled(decode, latent: np.ndarray, tile: int, overlap: int, factor: int) -> np.ndarray:
    """Upstream's tiled VAE decode of ``latent`` [B, C, h, w] with ``decode`` (one call per tile).

    Each tile of at most ``tile`` x ``tile`` latents is zero-padded (bottom/right) to the full tile,
    decoded, cropped back to its own ``factor``-times size and added with :func:`gaussian_weights`;
    the sum is divided by the summed weights. A latent that fits in one tile is decoded whole."""
    b, _, h, w = latent.shape
    if h <= tile and w <= tile:
        return decode(latent)
    total = np.zeros((b, 3, h * factor, w * factor), np.float64)
    weight = np.zeros((h * factor, w * factor), np.float64)
    gauss: dict[tuple[int, int], np.ndarray] = {}  # once per tile shape: full, short right/bottom, corner
    for y in tile_starts(h, tile, overlap):
        for x in tile_starts(w, tile, overlap):
            part = latent[:, :, y:y + tile, x:x + tile]
            th, tw = part.shape[2] * factor, part.shape[3] * factor
            padded = np.zeros((*part.shape[:2], tile, tile), _F32)
            padded[:, :, :part.shape[2], :part.shape[3]] = part
            if (th, tw) not in gauss:
                gauss[th, tw] = gaussian_weights(th, tw)
            g = gauss[th, tw]
            rows, cols = slice(y * factor, y * factor + th), slice(x * factor, x * factor + tw)
            total[:, :, rows, cols] += decode(padded)[:, :, :th, :tw] * g
            weight[rows, cols] += g
    return (total / weight).astype(_F32)


class FlowMatchEuler:
    """diffusers' FlowMatchEulerDiscreteScheduler as LBM uses it: shift 1, sigmas given, no stochastic step."""

    def __init__(self, num_train_timesteps: int = 1000):
        self.num_train_timesteps = int(num_train_timesteps)

    def sigmas(self, steps) -> np.ndarray:
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise InputError(f"num_inference_steps must be a whole number of at least 1, not {steps!r}")
        sigmas = np.linspace(1, 1 / steps, steps).astype(_F32)
        return np.append(sigmas, _F32(0.0)).astype(_F32)

    def timesteps(self, sigmas: np.ndarray) -> np.ndarray:
        return (sigmas[:-1] * _F32(self.num_train_timesteps)).astype(_F32)

    @staticmethod
    def step(model_output: np.ndarray, sample: np.ndarray, sigmas: np.ndarray, index: int) -> np.ndarray:
        return (sample + (sigmas[index + 1] - sigmas[index]) * model_output).astype(_F32, copy=False)


class Estimator(DiffusionEstimator):
    """LBM depth or normals; see the module docstring for the steps."""

    def __init__(self, bundle, manifest, backend, precision="fp32", threads=None):
        super().__init__(bundle, manifest, backend, precision, threads)
        loop = self.loop
        try:
            self.task = loop["task"]
            self.scheduler = FlowMatchEuler(loop["scheduler"].get("num_train_timesteps", 1000))
            self.bridge_noise_sigma = _F32(loop["bridge_noise_sigma"])
            self.buckets = [tuple(int(v) for v in b) for b in loop["aspect_buckets"]]
            self.bucket_base = int(loop.get("bucket_base", 1024))
            self.factor = int(loop["vae_scale_factor"])
            self.channels = int(loop["latent_channels"])
            # Bundles exported before depthrt tiled the decode record null: upstream's tiles apply to them too.
            tiles = loop.get("decoder_tiles") or UPSTREAM_TILES
            self.tile, self.overlap = int(tiles["latent_tile"]), int(tiles["overlap"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"LBM bundle '{bundle}' has no valid loop field {exc}; re-export it") from None
        if self.task not in ("depth", "normals") or not self.buckets:
            raise BundleError(f"LBM bundle '{bundle}' has task {self.task!r} / no aspect buckets; re-export it")
        if not 0 <= self.overlap < self.tile:
            raise BundleError(f"LBM bundle '{bundle}' has decoder tiles of {self.tile} latents overlapping by "
                              f"{self.overlap}; the overlap must be smaller than the tile: re-export it")

    def predict(self, image, *args, tiled_decode: bool = True, **kwargs):
        """:meth:`DiffusionEstimator.predict <depthrt.diffusion.base.DiffusionEstimator.predict>`, plus
        ``tiled_decode``: True (default) decodes latents above the bundle's tile (128) in overlapping
        tiles as upstream LBM does; False decodes each latent in one call (see the module docstring for
        its memory cost and how it differs from upstream)."""
        if not isinstance(tiled_decode, (bool, np.bool_)):
            raise InputError(f"tiled_decode must be True or False, not {tiled_decode!r}")
        token = _TILED.set(bool(tiled_decode))
        try:
            return super().predict(image, *args, **kwargs)
        finally:
            _TILED.reset(token)

    def predict_one(self, image, steps, ensemble_size, resolution, rng, latents, where):
        sigmas = self.scheduler.sigmas(steps)
        if ensemble_size != 1:
            raise InputError("LBM does not ensemble: ensemble_size must be 1")
        if resolution < 8 * self.factor:
            raise InputError(f"LBM resizes every image to an aspect bucket whose long side is about "
                             f"processing_resolution; it must be at least {8 * self.factor}, not {resolution}")
        h0, w0 = image.shape[:2]
        bh, bw = bucket_size(h0, w0, self.buckets, resolution, self.bucket_base)
        self.check_image_size(bh, bw, where, (h0, w0))
        resized = np.asarray(Image.fromarray(image).resize((bw, bh), Image.Resampling.BICUBIC))
        x = resized.transpose(2, 0, 1)[None].astype(_F32) / _F32(255) * _F32(2) - _F32(1)
        sample = self.encode(x)  # [1, C, bh / f, bw / f]
        shape = (steps - 1, *sample.shape[1:])
        latents = self.initial_noise(latents, shape, rng, where,
                                     f"LBM with {steps} step(s) on this image needs the bridge noise {shape} "
                                     f"(num_inference_steps - 1, channels, height/{self.factor}, width/{self.factor} "
                                     f"of the {bw}x{bh} aspect bucket)")
        timesteps = self.scheduler.timesteps(sigmas)
        for i, t in enumerate(timesteps):
            sample = self.scheduler.step(self.unet(sample, t), sample, sigmas, i)
            if i < len(timesteps) - 1:
                s = sigmas[i + 1]
                sample = sample + self.bridge_noise_sigma * np.sqrt(s * (_F32(1) - s)) * latents[i][None]
        sample = sample.astype(_F32, copy=False)
        raw = decode_tiled(self.decode, sample, self.tile, self.overlap, self.factor) if _TILED.get() \
            else self.decode(sample)
        decoded = (np.clip(raw, -1.0, 1.0) + _F32(1)) / _F32(2)
        return self.rgb_prediction(resize_antialias(decoded, (h0, w0), "bilinear")[0])  # [3, H, W]
