"""PyTorch reference of Lotus' inference, line by line after ``pipeline.py`` and ``infer.py``.

Used only by ``depthrt check`` and the tests. Each step names the upstream line it follows; the
two deliberate differences are marked ``DIFFERENCE``: the VAE posterior's mean instead of a sample
(deterministic), and the conversion of the [0, 1] image to depth / unit normals at the end.
torchvision is not needed: its tensor ``resize`` is ``F.interpolate(..., antialias=True)`` for
bilinear and ``F.interpolate(mode="nearest-exact")`` for nearest-exact, which is what runs here.
"""

from __future__ import annotations

import numpy as np

from .lotus import PROCESSING_RESOLUTION, TIMESTEP, LotusParts, task_embedding


def _resize_max_res(img, max_edge_resolution: int):
    """utils/image_utils.py resize_max_res with resample_method bilinear (infer.py's default)."""
    import torch.nn.functional as F

    original_height, original_width = img.shape[-2:]
    downscale_factor = min(max_edge_resolution / original_width, max_edge_resolution / original_height)
    new_width = int(original_width * downscale_factor)
    new_height = int(original_height * downscale_factor)
    return F.interpolate(img, size=(new_height, new_width), mode="bilinear", align_corners=False, antialias=True)


def run_lotus_reference(parts: LotusParts, image: np.ndarray, latents: np.ndarray | None = None,
                        processing_res: int | None = None) -> np.ndarray:
    """Lotus on one HxWx3 uint8 image -> depth [H, W] (mean of channels) or unit normals [H, W, 3].

    ``latents``: the G pipeline's initial noise, diffusers' shape [1, 4, h/8, w/8] (required for G).
    """
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        # infer.py: np.array(image).astype(float32) -> tensor [1, 3, H, W] / 127.5 - 1
        test_image = torch.tensor(image.astype(np.float32)).permute(2, 0, 1).unsqueeze(0)
        rgb_in = test_image / 127.5 - 1.0
        # infer.py: task_emb = cat(sin([1, 0]), cos([1, 0]))
        task_emb = torch.from_numpy(task_embedding())
        # pipeline __call__: processing_res None -> default_processing_resolution
        if processing_res is None:
            processing_res = PROCESSING_RESOLUTION
        input_size = rgb_in.shape
        if processing_res > 0:
            rgb_in = _resize_max_res(rgb_in, processing_res)
        height, width = rgb_in.shape[2:]
        # encode_prompt('') with padding "do_not_pad" (computed once by the loader)
        prompt_embeds = parts.text_embedding
        timesteps = torch.tensor([TIMESTEP]).long()
        # rgb_latents = vae.encode(rgb_in).latent_dist.sample() * scaling_factor
        # DIFFERENCE: the posterior's mean, not a sample (deterministic; depthrt's export does the same)
        rgb_latents = parts.vae.encode(rgb_in).latent_dist.mean
        rgb_latents = rgb_latents * parts.vae.config.scaling_factor
        t = timesteps[0]
        if parts.mode == "g":
            # prepare_latents: shape [B, in_channels // 2, H // 8, W // 8], times init_noise_sigma
            f = parts.vae_scale_factor
            shape = (1, parts.unet.config.in_channels // 2, int(height) // f, int(width) // f)
            if latents is None or tuple(latents.shape) != shape:
                raise ValueError(f"Lotus-G needs latents of shape {shape}")
            noise = torch.from_numpy(np.asarray(latents, np.float32)) * parts.init_noise_sigma
            # scheduler.scale_model_input is the identity for DDIM; cat([rgb_latents, latents])
            latent_model_input = torch.cat([rgb_latents, noise], dim=1)
        else:
            latent_model_input = rgb_latents
        pred = parts.unet(latent_model_input, t, encoder_hidden_states=prompt_embeds, return_dict=False,
                          class_labels=task_emb)[0]
        # one timestep: latents = x0_pred; then vae.decode(latents / scaling_factor)
        decoded = parts.vae.decode(pred / parts.vae.config.scaling_factor, return_dict=False)[0]
        # image_processor.postprocess(output_type="np"): denormalize (x / 2 + 0.5).clamp(0, 1), to NHWC
        decoded = (decoded / 2 + 0.5).clamp(0, 1)
        # resize_back(image, input_size[-2:], nearest-exact) (match_input_res defaults to True)
        decoded = F.interpolate(decoded, size=tuple(input_size[-2:]), mode="nearest-exact")
        pred_np = decoded.permute(0, 2, 3, 1).numpy()[0]
    # infer.py: depth = pred.mean(axis=-1); normals are saved as the [0, 1] image
    if parts.task == "depth":
        return pred_np.mean(axis=-1).astype(np.float32)
    # DIFFERENCE: depthrt returns unit normals, 2 x - 1 renormalised
    normals = pred_np * 2.0 - 1.0
    norm = np.linalg.norm(normals, axis=-1, keepdims=True)
    return (normals / np.maximum(norm, 1e-6)).astype(np.float32)


# What `depthrt export` checks by default (small, to prove the graphs and the loop in seconds).
EXPORT_CHECK = {"processing_resolution": 128}
DEFAULT_SIZES = ((517, 333), (240, 401))  # (height, width): portrait and landscape, not multiples of 8


def run_check(bundle, weights: str | None = None, backend: str = "ort-cpu", precision: str = "fp32",
              sizes=DEFAULT_SIZES, processing_resolution: int | None = None, seed: int = 0, verify: bool = True,
              parts: LotusParts | None = None) -> dict:
    """Run this reference and the bundle on the same images (and, for G, the same noise); the report
    in ``check_marigold``'s format (``passed`` is the verdict)."""
    from pathlib import Path

    from depthrt.diffusion import load_diffusion
    from depthrt.samples import synthetic_image

    from .check_marigold import compare, loop_report, read_family_manifest
    from .lotus import load_lotus, processing_size

    bundle = Path(bundle)
    manifest = read_family_manifest(bundle, "lotus", "a Lotus", verify)
    loop = manifest["loop"]
    if parts is None:
        parts = load_lotus(weights or manifest["source"]["id"], loop["task"])
    estimator = load_diffusion(bundle, manifest, backend, precision)
    resolution = loop["processing_resolution"] if processing_resolution is None else processing_resolution
    task = "normals" if loop["task"] == "normal" else "depth"
    rows = []
    for i, (h, w) in enumerate(sizes):
        image = synthetic_image(h, w, seed=i)
        ph, pw = processing_size(h, w, resolution)
        f = loop["vae_scale_factor"]
        latents = (np.random.default_rng(seed + i).standard_normal((1, loop["latent_channels"], ph // f, pw // f))
                   .astype(np.float32) if loop["mode"] == "g" else None)
        ref = run_lotus_reference(parts, image, latents, processing_res=resolution)
        pred = estimator.predict(image, processing_resolution=resolution, latents=latents)
        ours = pred.normals if task == "normals" else pred.depth
        rows.append({"image": f"synthetic {w}x{h}", "size": f"{w}x{h}", "steps": 1, "ensemble": 1,
                     **compare(ours, ref, task)})
    return loop_report("Lotus pipeline.py reference loop (PyTorch, posterior mean)",
                       weights or manifest["source"]["id"], estimator, precision, resolution, rows)


def format_report(report: dict) -> str:
    """The same table as Marigold's check."""
    from .check_marigold import format_report as marigold_format

    return marigold_format(report)
