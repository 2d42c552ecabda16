"""Latent-diffusion families (Marigold, Lotus, LBM): weights -> VAE/UNet graphs + loop description.

Design (shared by every family; keep it this simple)
----------------------------------------------------
Graphs. Every bundle of these families holds the same three ONNX graphs, each described once by a
:class:`~depthrt_export.diffusion.common.GraphSpec` (names, shapes, dynamic dims with ranges, a
sample input at a given size, a torch ``module`` that computes it) and exported by
:func:`~depthrt_export.diffusion.common.export_graph` (TorchScript tracing, opset >= 17, weights
always in external data ``<graph>.onnx.data`` so the 3-5 GB UNets and the tiny ones take one path):

* ``vae_encoder``: ``image`` [batch, 3, height, width], RGB in [-1, 1]
  -> ``latent`` [batch, C, latent_height, latent_width] = posterior *mean* x ``scaling_factor``
  (the mode; deterministic). ``latent_height`` = ceil(height / vae_scale_factor).
* ``unet``: ``sample`` [batch, in_channels, latent_height, latent_width], ``timestep`` [batch]
  float32, ``encoder_hidden_states`` [batch, seq, dim] (+ family extras such as Lotus'
  ``class_labels``) -> ``model_output`` [batch, out_channels, latent_height, latent_width].
  One UNet call; the runtime concatenates conditioning latents and does the scheduler step.
* ``vae_decoder``: ``latent`` [batch, C, latent_height, latent_width] (scaled latents, the graph
  divides by ``scaling_factor``) -> ``decoded`` [batch, 3, latent_height*f, latent_width*f], raw.
  Family post-processing (channel mean, clip, normalise) happens in the numpy runtime.

The family modules write fp32 graphs. ``export_diffusion_bundle`` then adds an fp16 variant of each
(``<graph>.fp16.onnx`` + ``.data``; manifest entry of the same name with ``"precision": "fp16"``,
picked by ``depthrt.backends.select_graph`` on ort-cuda / trt at ``precision="fp16"``): fp16 with
fp32 islands that are *calibrated*, because SD/SDXL VAE decoders carry activations far above fp16's
65504 (conv outputs and residual sums in the up-blocks, the mid-block attention). The fp32 graphs run
on realistic inputs (synthetic photos, their latents, unit Gaussian latents, the UNet at several
timesteps) and every node reading or writing a tensor above 65504/4 stays fp32, plus the usual norm /
softmax / attention-score islands; ``fp32_islands`` records the rule, the largest fp32 magnitude
seen and the pinned nodes (``depthrt_export.fp16.diffusion_variants``). ``python -m
depthrt_export.fp16 BUNDLE`` does the same for a bundle exported without them.

Conditioning. The empty-prompt text embedding is computed once at export with the pipeline's own
tokenizer + text encoder and stored as ``empty_prompt.npy`` (float32 [1, seq, dim]); the manifest's
``loop.text_embedding`` names it (file, shape, sha256, bytes). No text encoder at run time.

Loop. The manifest's top-level ``loop`` object drives the runtime; ``loop.type`` picks the runtime
module (``depthrt.diffusion.<type>``); common fields::

    {"type": "marigold",                     # marigold | lotus | lbm
     "scheduler": {"class": "DDIMScheduler", # DDIMScheduler | LCMScheduler | (LBM: flow matching)
                   "prediction_type": "v_prediction", "timestep_spacing": "trailing",
                   "num_train_timesteps": 1000, "steps_offset": 1, ...config as published...,
                   "alphas_cumprod": [1000 floats], "final_alpha_cumprod": float},
     "default_steps": 4, "processing_resolution": 768,
     "vae_scale_factor": 8, "latent_channels": 4, "scaling_factor": 0.18215,
     "text_embedding": {"file": "empty_prompt.npy", "shape": [1, 2, 1024], "dtype": "float32",
                        "sha256": "...", "bytes": n},
     ...family fields (Marigold: "task", "use_full_z_range"; Lotus: task switcher; LBM: "task",
        "bridge_noise_sigma", "aspect_buckets", "decoder_tiles": {"latent_tile": 128, "overlap": 16, ...},
        the tiles upstream decodes larger latents in (null in bundles from before: the same); ...)}

The coefficients (``alphas_cumprod``) are taken from diffusers' scheduler object at export, so a
C++ reader needs no beta-schedule code; timesteps for N steps follow ``timestep_spacing``
(see ``depthrt.diffusion.loops``).

Entry point for depthrt export (exporter.py calls it for families marigold / lotus / lbm)::

    fields = export_diffusion_bundle(preset, weights, staging_dir, opset)

``preset``: a :class:`depthrt.presets.Preset`; ``weights``: hub id or local folder (None: the
preset's hub id); writes the graphs and ``empty_prompt.npy`` into ``staging_dir`` and returns the
manifest fields ``model, output, graphs, preprocessing, postprocessing, loop, source``; the caller
adds ``schema_version, created, tools, parity`` and writes manifest.json. Each family module
(``marigold``, ``lotus``, ``lbm``) exposes ``export(preset, weights, staging_dir, opset) -> dict``
with those fields; this package only dispatches on ``preset.family``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

_FAMILY_MODULES = {"marigold": "marigold", "lotus": "lotus", "lbm": "lbm"}
DIFFUSION_FAMILIES = tuple(_FAMILY_MODULES)
# Parity checks (run_check, format_report, EXPORT_CHECK): Marigold against diffusers' pipelines,
# Lotus and LBM against PyTorch loops that follow their published code.
_CHECK_MODULES = {"marigold": "check_marigold", "lotus": "reference_lotus", "lbm": "reference_lbm"}


def export_diffusion_bundle(preset, weights: str | None, out_staging_dir: str | Path, opset: int = 17,
                            fp16: bool = True) -> dict:
    """Export the graphs of a latent-diffusion preset into ``out_staging_dir``; return manifest fields.

    ``fp16``: also write the fp16 variants with calibrated fp32 islands (see the module docstring)."""
    from depthrt.errors import WeightsError
    from depthrt.progress import step

    if preset.family not in _FAMILY_MODULES:
        raise WeightsError(f"preset '{preset.name}' (family {preset.family}) is not a latent-diffusion model")
    module = importlib.import_module(f"{__name__}.{_FAMILY_MODULES[preset.family]}")
    fields = module.export(preset, weights or preset.hub_id, Path(out_staging_dir), opset)
    if fp16:
        from ..fp16 import diffusion_variants, release_memory

        release_memory()  # the UNet export's freed buffers, before the calibration run allocates its own
        with step("making the fp16 variants (fp32 islands: norms, softmax, and what overflows on a calibration run)"):
            fields["graphs"] = fields["graphs"] + diffusion_variants(out_staging_dir, fields["graphs"], fields["loop"])
    return fields


def checker_for(family: str):
    """The parity-check module of a latent-diffusion family (``run_check``, ``format_report``)."""
    from depthrt.errors import BundleError

    if family not in _FAMILY_MODULES:
        raise BundleError(f"family '{family}' is not a latent-diffusion family")
    try:
        return importlib.import_module(f"{__name__}.{_CHECK_MODULES[family]}")
    except ModuleNotFoundError:
        raise BundleError(f"depthrt check has no PyTorch reference for family '{family}' yet") from None
