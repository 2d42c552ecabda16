"""Marigold export: a diffusers Marigold pipeline folder -> vae_encoder, unet, vae_decoder + loop.

The pipeline class comes from model_index.json (``MarigoldDepthPipeline`` /
``MarigoldNormalsPipeline``), the scheduler (DDIM or LCM) from scheduler/scheduler_config.json,
the defaults (steps, processing resolution) from the pipeline's model_index fields. The runtime
side is ``depthrt.diffusion.marigold``; parity is ``depthrt_export.diffusion.check_marigold``.
"""

from __future__ import annotations

from pathlib import Path

from depthrt.errors import WeightsError
from depthrt.progress import step

from .common import (empty_prompt_embedding, export_graph, image_dynamic, resolve_pipeline, save_text_embedding,
                     scheduler_entry, unet_spec, vae_decoder_spec, vae_encoder_spec)

COMPONENTS = ("unet", "vae", "scheduler", "text_encoder", "tokenizer")
PIPELINES = {"MarigoldDepthPipeline": "depth", "MarigoldNormalsPipeline": "normals"}
DEFAULT_RESOLUTION = 768
# Odd latent sizes: the UNet then takes its "upsample to the skip's size" path, which traces
# into size-dependent ops; at multiples of its down factor it would bake in "x2", wrong elsewhere.
TRACE_LATENT = (11, 13)

NORMALS_DESCRIPTION = ("unit surface normals, HxWx3 (x, y, z) in Marigold's camera frame: x right, y up, "
                       "z towards the camera; RGB = (n + 1) / 2")
DEPTH_DESCRIPTION = "affine-invariant depth in [0, 1]: 0 is the nearest point, 1 the farthest"


def load_pipeline(folder):
    """The diffusers Marigold pipeline in a resolved folder, fp32 on the CPU."""
    import diffusers
    import torch
    import transformers

    diffusers.utils.logging.disable_progress_bar()  # depthrt's own progress lines say what happens
    transformers.logging.disable_progress_bar()
    class_name = folder.index.get("_class_name")
    if class_name == "MarigoldPipeline":  # older Marigold repos: the task is in prediction_type
        class_name = "MarigoldNormalsPipeline" if folder.index.get("prediction_type") == "normals" \
            else "MarigoldDepthPipeline"
    if class_name not in PIPELINES:
        raise WeightsError(f"'{folder.path}' holds a {class_name} pipeline, not a Marigold depth or normals one")
    try:
        pipe = getattr(diffusers, class_name).from_pretrained(str(folder.path), dtype=torch.float32,
                                                              use_safetensors=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"cannot load {class_name} from '{folder.path}': {first[:300]}") from None
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.eval()
    return pipe, PIPELINES[class_name]


def export(preset, weights: str, out_dir: Path, opset: int) -> dict:
    """Write the Marigold graphs and embedding into ``out_dir``; return the manifest fields."""
    with step(f"resolving pipeline {weights}"):
        folder = resolve_pipeline(weights, COMPONENTS)
    with step("loading the diffusers Marigold pipeline"):
        pipe, task = load_pipeline(folder)
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    resolution = int(pipe.default_processing_resolution or DEFAULT_RESOLUTION)
    dynamic = image_dynamic(resolution or DEFAULT_RESOLUTION, factor)
    lh, lw = TRACE_LATENT
    embedding = empty_prompt_embedding(pipe.tokenizer, pipe.text_encoder)
    specs = [
        vae_encoder_spec(pipe.vae, dynamic, (lh * factor, lw * factor)),
        unet_spec(pipe.unet, dynamic, (lh, lw), tuple(embedding.shape)),
        vae_decoder_spec(pipe.vae, dynamic, (lh * factor, lw * factor), factor),
    ]
    graphs = []
    for spec in specs:
        with step(f"exporting {spec.name} to ONNX (opset {opset})"):
            graphs.append(export_graph(spec, out_dir, opset))
    text = save_text_embedding(embedding, out_dir)
    scheduler = scheduler_entry(pipe.scheduler)
    default_steps = int(pipe.default_denoising_steps or (1 if scheduler["class"] == "LCMScheduler" else 4))
    loop = {
        "type": "marigold",
        "task": task,
        "scheduler": scheduler,
        "default_steps": default_steps,
        "processing_resolution": resolution,
        "vae_scale_factor": factor,
        "latent_channels": int(pipe.vae.config.latent_channels),
        "scaling_factor": float(pipe.vae.config.scaling_factor),
        "text_embedding": text,
        "ensemble": {"depth": "scale-and-shift alignment + median", "normals": "closest to the mean"}[task],
    }
    if task == "depth":
        loop["scale_invariant"] = bool(pipe.scale_invariant)
        loop["shift_invariant"] = bool(pipe.shift_invariant)
        inverse = folder.index.get("prediction_type") == "disparity"
        kind = "relative_inverse_depth" if inverse else "relative_depth"
        output = {"kind": kind, "units": preset.units if preset is not None else "affine-invariant [0,1]",
                  "description": DEPTH_DESCRIPTION if not inverse else "affine-invariant disparity in [0, 1]"}
    else:
        loop["use_full_z_range"] = bool(pipe.use_full_z_range)
        output = {"kind": "normals", "units": "unit vectors", "description": NORMALS_DESCRIPTION}
    return {
        "model": {"name": preset.name if preset is not None else str(weights), "family": "marigold",
                  "architecture": type(pipe).__name__,
                  "variant": "lcm" if scheduler["class"] == "LCMScheduler" else "ddim"},
        "output": output,
        "graphs": graphs,
        "preprocessing": {"rule": "marigold", "range": [-1.0, 1.0], "resize": "long_edge",
                          "resample": "bilinear", "antialias": True, "multiple_of": factor, "pad": "replicate",
                          "pad_sides": "bottom_right"},
        "postprocessing": {"resample": "bilinear", "antialias": False, "remove_padding": True},
        "loop": loop,
        "source": folder.source(),
    }
