"""LBM (depth, normals) without torch, step for step as LBM's ``evaluate()`` and ``LBMModel.sample``.

1. The image is resized to the closest aspect bucket (width/height; SDXL's buckets at
   ``processing_resolution`` 1024, scaled proportionally otherwise, multiples of 8) with PIL's
   bicubic filter, then ``/ 255 * 2 - 1``.
2. Source latent = VAE posterior mean x scaling factor (upstream samples the posterior; the mean is
   deterministic). The bridge starts there: no initial noise.
3. N flow-matching Euler steps: sigmas ``linspace(1, 1/N, N)`` then 0, timestep ``sigma * 1000``;
   ``x <- x + (sigma_next - sigma) * unet(x, t)``; after every step but the last, the bridge noise
   ``bridge_noise_sigma * sqrt(sigma_next (1 - sigma_next)) * noise``. ``latents`` (optional) are
   those noise draws, shape ``(N - 1, 4, h/8, w/8)``; otherwise they come from ``seed``.
4. Decode in one call (upstream tiles latents above 128; we do not), clamp to [-1, 1],
   ``(x + 1) / 2``, and, unlike upstream, back to the input's size (bilinear, antialiased when
   shrinking).
5. Depth = mean of the 3 channels in [0, 1]; normals = ``2 x - 1`` normalised, HxWx3 (x, y, z).
"""

from __future__ import annotations

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
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"LBM bundle '{bundle}' has no valid loop field {exc}; re-export it") from None
        if self.task not in ("depth", "normals") or not self.buckets:
            raise BundleError(f"LBM bundle '{bundle}' has task {self.task!r} / no aspect buckets; re-export it")

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
        decoded = (np.clip(self.decode(sample.astype(_F32, copy=False)), -1.0, 1.0) + _F32(1)) / _F32(2)
        return self.rgb_prediction(resize_antialias(decoded, (h0, w0), "bilinear")[0])  # [3, H, W]
