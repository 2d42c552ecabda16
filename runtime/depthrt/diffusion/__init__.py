"""Latent-diffusion runtime (Marigold, Lotus, LBM): numpy loops around three ONNX graphs, no torch.

Design (shared by every family)
-------------------------------
A bundle of these families has the graphs ``vae_encoder``, ``unet``, ``vae_decoder`` and a
top-level manifest ``loop`` object (written by ``depthrt_export.diffusion``; see that package's
docstring for the graph contracts and the loop fields). ``loop.type`` names the module here that
runs it: ``depthrt.diffusion.marigold``, ``.lotus``, ``.lbm``; each defines a subclass of
:class:`depthrt.diffusion.base.DiffusionEstimator` called ``Estimator``.

``base.DiffusionEstimator`` (shared) does everything that is not the family's loop:

* opens the three graphs (their fp32 manifest entries) with ``depthrt.backends.open_graph``
  (runner.run(feeds) -> dict); at ``precision="fp16"`` the GPU backends pick each graph's fp16
  variant (calibrated fp32 islands, made at export) through ``select_graph``, ort-cpu and openvino
  refuse fp16; and
  runs them in chunks of the graph's batch range: ``encode(image) -> scaled latent``,
  ``unet(**feeds) -> model_output``, ``decode(latent) -> raw decoder output``;
* loads and checks the empty-prompt embedding (``self.text_embedding``, float32 [1, seq, dim]);
* ``predict(image | list, num_inference_steps=None, ensemble_size=1, processing_resolution=None,
  seed=None, latents=None)``: checks arguments (typed ``InputError`` with what to do), resolves the
  defaults from ``loop`` and calls the subclass's ``predict_one(image, steps, ensemble_size,
  resolution, rng, latents) -> Prediction`` per image; ``rng`` is ``numpy.random.default_rng(seed)``
  (our noise is not torch's: pass ``latents`` for bit-comparable runs);
* image helpers (torch-free, matching the diffusers/torch ops the pipelines use):
  ``to_unit_range``, ``resize_antialias`` (F.interpolate(..., antialias=True) bilinear/bicubic),
  ``resize`` (F.interpolate without antialias: bilinear, bicubic, nearest, nearest-exact),
  ``pad_to_multiple`` (replicate, bottom/right) and ``unpad``, ``normalize_normals``.

``loops`` holds the schedulers, built from ``loop["scheduler"]`` by ``make_scheduler``:
DDIM (epsilon / v_prediction / sample, leading / trailing / linspace, zero-SNR via the stored
``alphas_cumprod``) and LCM. A scheduler has ``timesteps(n) -> int64 array`` and
``step(model_output, sample, timesteps, index, rng) -> sample``; LBM's flow-matching Euler may be added there.

Entry point (``depthrt.load`` dispatches here for families marigold / lotus / lbm)::

    load_diffusion(bundle, manifest, backend, precision, threads) -> DiffusionEstimator

``backend`` must already be resolved (``depthrt.backends.resolve_backend``); ``manifest`` is the
validated manifest (``depthrt.manifest.read_manifest``).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from ..errors import BundleError

LOOP_TYPES = ("marigold", "lotus", "lbm")


def load_diffusion(bundle: str | os.PathLike, manifest: dict, backend: str, precision: str = "fp32",
                   threads: int | None = None):
    """The estimator of a latent-diffusion bundle (its ``loop.type`` picks the family module)."""
    loop = manifest.get("loop")
    if not isinstance(loop, dict) or loop.get("type") not in LOOP_TYPES:
        raise BundleError(f"bundle '{bundle}' is a {manifest['model']['family']} bundle without a valid 'loop' "
                          "in its manifest; re-export it with this depthrt (depthrt export ... --force)")
    module = importlib.import_module(f"{__name__}.{loop['type']}")
    return module.Estimator(Path(bundle), manifest, backend, precision, threads)
