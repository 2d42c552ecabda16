"""Tiny random-weight Marigold pipelines in the published diffusers layout (tests, offline demo).

``write_tiny_marigold(variant, folder)`` saves a real ``MarigoldDepthPipeline`` /
``MarigoldNormalsPipeline`` with diffusers' ``save_pretrained``: model_index.json, unet/, vae/,
scheduler/, text_encoder/, tokenizer/ (with a tiny vocab.json + merges.txt written here, so no
download is needed). Architecture sizes are tiny; everything the loop depends on is as published:
the scheduler configs, the pipeline's model_index fields, an 8x VAE, an 8-channel UNet input,
SD2-style linear-projection attention.
"""

from __future__ import annotations

import json
from pathlib import Path

# The published scheduler configs (prs-eth model repositories, scheduler/scheduler_config.json).
_DDIM_V1_1 = {  # marigold-depth-v1-1, marigold-normals-v1-1
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
    "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
    "steps_offset": 1, "timestep_spacing": "trailing", "rescale_betas_zero_snr": True,
}
_LCM_V1_0 = {  # marigold-depth-lcm-v1-0
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
    "clip_sample_range": 1.0, "num_train_timesteps": 1000, "original_inference_steps": 50,
    "prediction_type": "v_prediction", "rescale_betas_zero_snr": False, "set_alpha_to_one": False,
    "steps_offset": 1, "timestep_scaling": 10.0, "timestep_spacing": "leading",
}
VARIANTS = {
    # variant: (task, scheduler class, scheduler config, default steps)
    "marigold-depth": ("depth", "DDIMScheduler", _DDIM_V1_1, 4),
    "marigold-normals": ("normals", "DDIMScheduler", _DDIM_V1_1, 4),
    "marigold-depth-lcm": ("depth", "LCMScheduler", _LCM_V1_0, 1),
}
_SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def _write_tokenizer_files(folder: Path) -> None:
    """A tiny CLIP BPE vocabulary: letters, letters at word end, a few merges, the two special tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": len(letters) + i for i, c in enumerate(letters)})
    merges = ["d e", "p t", "de pt"]
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    for tok in _SPECIAL:
        vocab[tok] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"model_max_length": 77, "tokenizer_class": "CLIPTokenizer", "bos_token": _SPECIAL[0],
         "eos_token": _SPECIAL[1], "unk_token": _SPECIAL[1], "pad_token": _SPECIAL[1]}))


def write_tiny_marigold(variant: str, folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny ``variant`` (see VARIANTS) to ``folder``; returns the folder."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    task, scheduler_class, scheduler_config, steps = VARIANTS[variant]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tok_dir = folder / "tokenizer"
    _write_tokenizer_files(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    unet = diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=8, sample_size=64, scaling_factor=0.18215)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=32, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    scheduler = getattr(diffusers, scheduler_class)(**scheduler_config)
    common = {"default_denoising_steps": steps, "default_processing_resolution": 768}
    if task == "depth":
        pipe = diffusers.MarigoldDepthPipeline(unet=unet, vae=vae, scheduler=scheduler, text_encoder=text_encoder,
                                               tokenizer=tokenizer, prediction_type="depth", scale_invariant=True,
                                               shift_invariant=True, **common)
    else:
        pipe = diffusers.MarigoldNormalsPipeline(unet=unet, vae=vae, scheduler=scheduler, text_encoder=text_encoder,
                                                 tokenizer=tokenizer, prediction_type="normals", use_full_z_range=True,
                                                 **common)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    _write_tokenizer_files(tok_dir)  # keep the published vocab.json + merges.txt beside what save_pretrained wrote
    (folder / "depthrt_untrained.json").write_text(json.dumps({"untrained": True, "variant": variant}))
    return folder
