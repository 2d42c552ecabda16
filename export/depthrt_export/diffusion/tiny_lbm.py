"""Tiny random-weight LBM folders in the published layout (tests, offline demo).

Same files as ``jasperai/LBM_depth`` / ``LBM_normals``: one yaml of ``get_model``'s settings and one
``model.safetensors`` holding an ``LBMModel`` state dict (``denoiser.*``, ``vae.vae_model.*``,
``num_iterations``). The UNet keeps SDXL's structure (DownBlock2D + two CrossAttnDownBlock2D,
64-wide heads, 32 groups, more transformer layers in the deepest block) at tiny widths; the VAE
keeps SDXL's four levels at 32 channels. ``depthrt_export.diffusion.lbm`` derives both back from
the tensors' shapes, exactly as it does for the real checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

VARIANTS = {"lbm-depth": "depth", "lbm-normals": "normals"}

# The settings get_model reads (examples/training/config/surface.yaml's model part).
YAML_TEMPLATE = """\
backbone_signature: stabilityai/stable-diffusion-xl-base-1.0
vae_num_channels: 4
unet_input_channels: 4
timestep_sampling: custom_timesteps
selected_timesteps: [250, 500, 750, 1000]
prob: [0.25, 0.25, 0.25, 0.25]
conditioning_images_keys: []
conditioning_masks_keys: []
source_key: image
target_key: {target}
bridge_noise_sigma: 0.005
pixel_loss_type: lpips
pixel_loss_weight: 10.0
latent_loss_type: l2
latent_loss_weight: 1.0
"""


# Gains that make the tiny VAE's decoder overflow fp16 as SDXL's does (the reason for diffusers'
# force_upcast and madebyollin/sdxl-vae-fp16-fix): its mid-block attention output and the residual
# stream of the last two up-blocks reach ~4e4 and ~4e5 on a real image's latent, while GroupNorm keeps
# the decoded image at its usual scale.
HOT_VAE_GAINS = {"mid_attention": 1e5, "up_conv2": 6e4}


def make_vae_hot(vae, gains: dict = HOT_VAE_GAINS):
    """Scale ``vae``'s decoder in place (see HOT_VAE_GAINS): fp32 stays fine, plain fp16 overflows."""
    import torch

    with torch.no_grad():
        out = vae.decoder.mid_block.attentions[0].to_out[0]
        out.weight.mul_(gains["mid_attention"])
        out.bias.mul_(gains["mid_attention"])
        for block in vae.decoder.up_blocks[-2:]:
            for resnet in block.resnets:
                resnet.conv2.weight.mul_(gains["up_conv2"])
                resnet.conv2.bias.mul_(gains["up_conv2"])
    return vae


def write_tiny_lbm(variant: str, folder: str | Path, seed: int = 0, hot_vae: bool = False) -> Path:
    """Write the tiny LBM ``variant`` (lbm-depth or lbm-normals) to ``folder``; returns the folder.

    ``hot_vae``: a decoder whose activations exceed fp16's range, as SDXL's (:func:`make_vae_hot`)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file

    from .lbm import shipped_config, sdxl_unet_config

    if variant not in VARIANTS:
        raise KeyError(f"unknown tiny LBM variant '{variant}' (known: {', '.join(VARIANTS)})")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**sdxl_unet_config(widths=[64, 64, 128], depths=[1, 1, 2], layers=1)).eval()
    vae_config = {k: v for k, v in shipped_config("sdxl_vae_config.json").items() if not k.startswith("_")}
    vae_config.update(block_out_channels=[32, 32, 32, 32], layers_per_block=1)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**vae_config).eval()
    if hot_vae:
        make_vae_hot(vae)
    state = {"num_iterations": torch.tensor(0.0)}
    state.update({f"denoiser.{k}": v.contiguous() for k, v in unet.state_dict().items()})
    state.update({f"vae.vae_model.{k}": v.contiguous() for k, v in vae.state_dict().items()})
    save_file(state, str(folder / "model.safetensors"))
    (folder / f"LBM_{VARIANTS[variant]}.yaml").write_text(YAML_TEMPLATE.format(target=VARIANTS[variant]))
    (folder / "depthrt_untrained.json").write_text(json.dumps(
        {"untrained": True, "variant": variant, "seed": seed, "hot_vae": hot_vae,
         "note": "random weights written by depthrt_export.diffusion.tiny_lbm; outputs are meaningless"},
        indent=2) + "\n")
    return folder
