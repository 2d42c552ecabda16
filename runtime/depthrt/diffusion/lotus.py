"""Lotus (G and D; depth and normals) without torch, step for step as Lotus' ``pipeline.py``.

1. RGB ``/ 127.5 - 1``; scaled by ``min(R/W, R/H)`` with sizes floored (upscaling included),
   ``F.interpolate(bilinear, antialias=True)``; **no padding**: the latent is ``floor(size / 8)``.
2. Image latent = VAE posterior mean x scaling factor (upstream samples the posterior; the mean is
   deterministic).
3. One UNet call at ``loop.timestep`` (999) with the empty-prompt embedding and the task switcher
   (``class_labels``); G feeds ``concat(image latent, noise x init_noise_sigma)`` (``latents``:
   diffusers' shape ``(1, 4, h/8, w/8)``), D the image latent alone. The output is x0.
4. Decode; ``x / 2 + 0.5`` clamped to [0, 1]; back to the input size with nearest-exact.
5. Depth (``kind`` from the manifest; the disparity models are ``relative_inverse_depth``) = mean
   of the 3 channels, in [0, 1]. Normals = ``2 x - 1`` normalised, HxWx3 (x, y, z) in Lotus' axes.

Lotus is a one-step model: ``num_inference_steps`` must be 1 and ``ensemble_size`` 1.
"""

from __future__ import annotations

import numpy as np

from ..errors import BundleError, InputError
from .base import DiffusionEstimator, resize, resize_antialias

_F32 = np.float32


def processing_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """resize_max_res of Lotus' utils: scale min(R/W, R/H), sizes floored; 0 keeps the size."""
    if resolution <= 0:
        return height, width
    scale = min(resolution / width, resolution / height)
    return int(height * scale), int(width * scale)


class Estimator(DiffusionEstimator):
    """Lotus G or D, depth or normals; see the module docstring for the steps."""

    def __init__(self, bundle, manifest, backend, precision="fp32", threads=None):
        super().__init__(bundle, manifest, backend, precision, threads)
        loop = self.loop
        try:
            self.mode = loop["mode"]
            self.task = loop["task"]
            self.timestep = float(loop["timestep"])
            self.switch = np.asarray(loop["task_embedding"], _F32).reshape(1, -1)
            self.factor = int(loop["vae_scale_factor"])
            self.channels = int(loop["latent_channels"])
            self.init_noise_sigma = _F32(loop.get("init_noise_sigma", 1.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"Lotus bundle '{bundle}' has no valid loop field {exc}; re-export it") from None
        if self.mode not in ("g", "d") or self.task not in ("depth", "normal"):
            raise BundleError(f"Lotus bundle '{bundle}' has mode {self.mode!r} / task {self.task!r}; re-export it")
        if self.text_embedding is None:
            raise BundleError(f"Lotus bundle '{bundle}' has no empty-prompt embedding; re-export it")

    def predict_one(self, image, steps, ensemble_size, resolution, rng, latents, where):
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise InputError(f"num_inference_steps must be a whole number of at least 1, not {steps!r}")
        if steps != 1:
            raise InputError(f"Lotus predicts in one step (x0 at t={int(self.timestep)}); num_inference_steps must "
                             f"be 1, not {steps}")
        if ensemble_size != 1:
            raise InputError("Lotus does not ensemble: ensemble_size must be 1 (Lotus-G with several noise draws "
                             "can be run by calling predict with different seeds)")
        h0, w0 = image.shape[:2]
        x = (image.astype(_F32).transpose(2, 0, 1)[None] / _F32(127.5)) - _F32(1.0)
        h, w = processing_size(h0, w0, resolution)
        if h < 1 or w < 1:
            raise InputError(f"{where} ({w0}x{h0}) has an extreme aspect ratio: at processing_resolution {resolution} "
                             "its short side would be 0 pixels; crop it, or raise processing_resolution")
        self.check_image_size(h, w, where, (h0, w0))
        if resolution > 0:
            x = resize_antialias(x, (h, w), "bilinear")
        image_latent = self.encode(x)  # [1, C, h // f, w // f]
        shape = (1, self.channels, h // self.factor, w // self.factor)
        if self.mode == "g":
            latents = self.initial_noise(latents, shape, rng, where,
                                         f"this image at processing_resolution {resolution} needs {shape} (1, "
                                         f"channels, floor(height/{self.factor}), floor(width/{self.factor}) of the "
                                         f"resized {w}x{h} image)")
            sample = np.concatenate([image_latent, latents * self.init_noise_sigma], axis=1)
        else:
            if latents is not None:
                raise InputError("Lotus-D is deterministic and takes no latents; pass latents=None")
            sample = image_latent
        x0 = self.unet(sample, self.timestep, class_labels=np.repeat(self.switch, len(sample), axis=0))
        decoded = np.clip(self.decode(x0) / _F32(2) + _F32(0.5), 0.0, 1.0)
        return self.rgb_prediction(resize(decoded, (h0, w0), "nearest-exact")[0])  # [3, H, W]
