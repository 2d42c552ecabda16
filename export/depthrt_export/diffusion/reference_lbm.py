"""PyTorch reference of LBM's inference, line by line after ``evaluate()`` and ``LBMModel.sample``.

Used only by ``depthrt check`` and the tests. The deliberate differences are marked
``DIFFERENCE``: the VAE posterior's mean instead of a sample; the aspect buckets may be scaled
(``resolution``; 1024 is upstream's); the result is resized back to the input's size and converted
to depth / unit normals (upstream returns the bucket-sized PIL image); the bridge noise comes from
the caller (``noise``) so that the runtime can be fed the very same draws. The decode is
upstream's: ``AutoencoderKLDiffusers.decode`` with ``Tiler`` (:func:`tiled_decode`, torch, written
after LBM's ``src/lbm/models/utils.py``), or one call with ``tile=None``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .lbm import BUCKET_BASE, DECODER_TILES, bucket_size

# get_model: AutoencoderKLDiffusersConfig(tiling_size=(128, 128)) with the config's default tiling_overlap (16, 16).
TILE, OVERLAP = DECODER_TILES["latent_tile"], DECODER_TILES["overlap"]


def _gaussian_tile_weights(height: int, width: int, batch: int, channels: int):
    """Tiler._gaussian_weights: per-axis normal profiles (variance 0.01, in units of the size squared),
    column midpoint (width - 1) / 2, row midpoint height / 2; float64, tiled to (batch, channels)."""
    import torch

    var = 0.01

    def profile(n: int, mid: float):
        d = torch.arange(n, dtype=torch.float64) - mid
        return torch.exp(-d * d / (n * n) / (2 * var)) / (2 * torch.pi * var) ** 0.5

    w = torch.outer(profile(height, height / 2), profile(width, (width - 1) / 2))
    return w.repeat(batch, channels, 1, 1)


def tiled_decode(decode, z, factor: int, tile: int = TILE, overlap: int = OVERLAP):
    """AutoencoderKLDiffusers.decode's tiling for unscaled latents ``z`` [B, C, h, w]; ``decode`` maps a
    latent batch to images [B, 3, h * factor, w * factor]. Above ``tile`` in either side, per sample:
    Tiler.get_tiles (origins every tile - overlap, no overlap on an axis that fits one tile), each tile
    F.pad-ed with zeros to the tile size, decoded and cropped, then Tiler.merge_tiles("gaussian")."""
    import torch
    import torch.nn.functional as F

    _, _, h, w = z.shape
    if not (h > tile or w > tile):
        return decode(z)
    over_h, over_w = (overlap if h > tile else 0), (overlap if w > tile else 0)
    samples = []
    for k in range(z.shape[0]):
        zk = z[k:k + 1]
        # get_tiles
        tiles = [[zk[:, :, i:i + tile, j:j + tile] for j in range(0, w, tile - over_w)]
                 for i in range(0, h, tile - over_h)]
        # decode each: pad to a multiple of the tile (the tile itself), decode, crop to the tile's own size
        for row in tiles:
            for n, t in enumerate(row):
                th, tw = t.shape[2], t.shape[3]
                padded = F.pad(t, (0, -(-tw // tile) * tile - tw, 0, -(-th // tile) * tile - th))
                row[n] = decode(padded)[:, :, :th * factor, :tw * factor]
        # merge_tiles("gaussian"): float32 sums of tile x weight and of weight, then their ratio
        out = torch.zeros(1, 3, h * factor, w * factor)
        weights = torch.zeros(1, 3, h * factor, w * factor)
        step_h, step_w = (tile - over_h) * factor, (tile - over_w) * factor
        for a, i in enumerate(range(0, h * factor, step_h)):
            for b, j in enumerate(range(0, w * factor, step_w)):
                t = tiles[a][b]
                g = _gaussian_tile_weights(t.shape[2], t.shape[3], 1, 3)
                out[:, :, i:i + tile * factor, j:j + tile * factor] += t * g
                weights[:, :, i:i + tile * factor, j:j + tile * factor] += g
        samples.append(out / weights)
    return torch.cat(samples, dim=0)


def run_lbm_reference(unet, vae, ckpt, image: np.ndarray, task: str, num_steps: int = 1,
                      noise: np.ndarray | None = None, resolution: int = BUCKET_BASE,
                      tile: int | None = TILE, overlap: int = OVERLAP) -> np.ndarray:
    """LBM on one HxWx3 uint8 image -> depth [H, W] (mean of channels) or unit normals [H, W, 3].

    ``noise``: the bridge noise, [num_steps - 1, 1, C, h, w] (one draw per step but the last).
    ``tile``/``overlap``: the decoder tiles in latent pixels (upstream's 128/16); ``tile=None`` decodes
    in one call.
    """
    import torch
    import torch.nn.functional as F

    height, width = image.shape[:2]
    # evaluate(): closest aspect bucket, source_image.resize(bucket) (PIL's default filter: bicubic)
    bh, bw = bucket_size(height, width, resolution)
    source = Image.fromarray(image).resize((bw, bh))
    # ToTensor()(image).unsqueeze(0) * 2 - 1
    x = torch.from_numpy(np.array(source)).permute(2, 0, 1).float().div(255).unsqueeze(0) * 2 - 1
    with torch.no_grad():
        # AutoencoderKLDiffusers.encode: latent_dist.sample(), (z - shift_factor) * scaling_factor
        # DIFFERENCE: the posterior's mean (deterministic)
        z = vae.encode(x).latent_dist.mean
        z_source = (z - ckpt.shift_factor) * ckpt.scaling_factor
        # LBMModel.sample: set_timesteps(sigmas=np.linspace(1, 1 / num_steps, num_steps))
        sigmas = np.linspace(1, 1 / num_steps, num_steps).astype(np.float32)
        timesteps = torch.from_numpy(sigmas) * ckpt.num_train_timesteps
        sigmas = torch.cat([torch.from_numpy(sigmas), torch.zeros(1)])
        sample = z_source
        for i, t in enumerate(timesteps):
            # no scale_model_input on FlowMatchEulerDiscreteScheduler; conditioning is empty
            pred = unet(sample, t.repeat(sample.shape[0]), encoder_hidden_states=None, return_dict=False)[0]
            # scheduler.step: prev_sample = sample + (sigma_next - sigma) * model_output (float32)
            sample = sample.float() + (sigmas[i + 1] - sigmas[i]) * pred
            if i < len(timesteps) - 1:
                # bridge noise at the next timestep's sigma
                sigma_next = sigmas[i + 1]
                draw = torch.from_numpy(np.asarray(noise[i], np.float32))
                sample = sample + ckpt.bridge_noise_sigma * (sigma_next * (1.0 - sigma_next)) ** 0.5 * draw
        # AutoencoderKLDiffusers.decode: z / scaling_factor + shift_factor (no latents_mean/std in SDXL's VAE)
        # upstream tiles latents above 128 in either side (tiling_size from get_model)
        z = sample / ckpt.scaling_factor + ckpt.shift_factor
        factor = ckpt.vae_scale_factor
        decoded = vae.decode(z).sample if tile is None else \
            tiled_decode(lambda t: vae.decode(t).sample, z, factor, tile, overlap)
        # evaluate(): .clamp(-1, 1), then (x + 1) / 2
        decoded = (decoded.clamp(-1, 1) + 1) / 2
        # DIFFERENCE: back to the input's size (bilinear, antialiased when shrinking), as float
        decoded = F.interpolate(decoded, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        pred_np = decoded[0].permute(1, 2, 0).numpy()
    if task == "depth":
        return pred_np.mean(axis=-1).astype(np.float32)
    normals = pred_np * 2.0 - 1.0
    norm = np.linalg.norm(normals, axis=-1, keepdims=True)
    return (normals / np.maximum(norm, 1e-6)).astype(np.float32)


# What `depthrt export` checks by default (small, to prove the graphs and the loop in seconds).
EXPORT_CHECK = {"processing_resolution": 256, "steps": (1,)}
DEFAULT_SIZES = ((517, 333), (240, 401))  # (height, width): portrait and landscape


def run_check(bundle, weights: str | None = None, backend: str = "ort-cpu", precision: str = "fp32",
              sizes=DEFAULT_SIZES, processing_resolution: int | None = None, steps=(1, 2), seed: int = 0,
              verify: bool = True) -> dict:
    """Run this reference and the bundle on the same images and bridge noise; the report in
    ``check_marigold``'s format (``passed`` is the verdict)."""
    from pathlib import Path

    from depthrt.diffusion import load_diffusion
    from depthrt.samples import synthetic_image

    from .check_marigold import compare, loop_report, read_family_manifest
    from .lbm import load_unet, load_vae, read_checkpoint, resolve_lbm

    bundle = Path(bundle)
    manifest = read_family_manifest(bundle, "lbm", "an LBM", verify)
    loop = manifest["loop"]
    ckpt = read_checkpoint(resolve_lbm(weights or manifest["source"]["id"])[0])
    unet, vae = load_unet(ckpt), load_vae(ckpt)
    estimator = load_diffusion(bundle, manifest, backend, precision)
    resolution = loop["processing_resolution"] if processing_resolution is None else processing_resolution
    task, f = loop["task"], loop["vae_scale_factor"]
    rows = []
    for i, (h, w) in enumerate(sizes):
        image = synthetic_image(h, w, seed=i)
        bh, bw = bucket_size(h, w, resolution)
        for n in steps:
            noise = np.random.default_rng(seed + i).standard_normal(
                (n - 1, loop["latent_channels"], bh // f, bw // f)).astype(np.float32)
            ref = run_lbm_reference(unet, vae, ckpt, image, task, n, noise[:, None], resolution=resolution,
                                    tile=estimator.tile, overlap=estimator.overlap)  # the bundle's, or upstream's
            pred = estimator.predict(image, num_inference_steps=n, processing_resolution=resolution, latents=noise)
            ours = pred.normals if task == "normals" else pred.depth
            rows.append({"image": f"synthetic {w}x{h}", "size": f"{w}x{h}", "steps": n, "ensemble": 1,
                         **compare(ours, ref, task)})
    return loop_report("LBM evaluate() + LBMModel.sample reference loop (PyTorch, posterior mean, same bridge noise)",
                       weights or manifest["source"]["id"], estimator, precision, resolution, rows)


def format_report(report: dict) -> str:
    """The same table as Marigold's check."""
    from .check_marigold import format_report as marigold_format

    return marigold_format(report)
