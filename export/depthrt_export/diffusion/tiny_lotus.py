"""Tiny random-weight Lotus folders in the published diffusers layout (tests, offline demo).

Same files as ``jingheya/lotus-*``: model_index.json (LotusGPipeline / LotusDPipeline), unet/ (a
UNet2DConditionModel with the projection class embedding, 8 or 4 input channels), vae/
(AutoencoderKL with four levels, so the latent is 1/8 of the image as in SD 2), text_encoder/
(CLIPTextModel), tokenizer/ (CLIPTokenizer) and scheduler/ (DDIMScheduler), all shrunk.
"""

from __future__ import annotations

import json
from pathlib import Path

VARIANTS = {  # tiny variant -> (mode, task)
    "lotus-depth-g": ("g", "depth"),
    "lotus-depth-d": ("d", "depth"),
    "lotus-normal-g": ("g", "normal"),
    "lotus-normal-d": ("d", "normal"),
}
TEXT_DIM = 32


def _byte_chars() -> list[str]:
    """The 256 printable characters byte-level BPE maps bytes to (GPT-2 / CLIP's bytes_to_unicode)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(extra))]


def write_tiny_clip(folder: Path, seed: int) -> None:
    """A tiny CLIPTextModel + CLIPTokenizer (byte-level vocabulary, no merges) in text_encoder/, tokenizer/."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok_dir = folder / "tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    tokenizer.save_pretrained(tok_dir)
    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, projection_dim=TEXT_DIM,
                            bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                            pad_token_id=vocab["<|endoftext|>"], hidden_act="gelu")
    CLIPTextModel(config).eval().save_pretrained(folder / "text_encoder", safe_serialization=True)


def tiny_vae(seed: int, scaling_factor: float = 0.18215):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    blocks = 4  # four levels: a latent of 1/8 the image, as the real VAEs
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32,) * blocks,
                         down_block_types=("DownEncoderBlock2D",) * blocks,
                         up_block_types=("UpDecoderBlock2D",) * blocks, layers_per_block=1,
                         norm_num_groups=8, sample_size=64, scaling_factor=scaling_factor).eval()


def write_tiny_lotus(variant: str, folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny Lotus ``variant`` (see VARIANTS) to ``folder``; returns the folder."""
    import torch
    from diffusers import DDIMScheduler, UNet2DConditionModel

    if variant not in VARIANTS:
        raise KeyError(f"unknown tiny Lotus variant '{variant}' (known: {', '.join(VARIANTS)})")
    mode, task = VARIANTS[variant]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    # SD 2's UNet shrunk: linear projections, heads of the real head size are not needed here.
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=8 if mode == "g" else 4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=TEXT_DIM, attention_head_dim=(2, 4),
        use_linear_projection=True, norm_num_groups=16, class_embed_type="projection",
        projection_class_embeddings_input_dim=4).eval()
    with torch.no_grad():  # random weights: keep the x0 prediction in the range a trained model's has
        unet.conv_out.weight.mul_(0.5)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    tiny_vae(seed + 1).save_pretrained(folder / "vae", safe_serialization=True)
    from .lotus import quiet

    with quiet():  # no "Writing model shards" progress bars
        write_tiny_clip(folder, seed + 2)
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
                  timestep_spacing="leading").save_pretrained(folder / "scheduler")
    index = {"_class_name": "LotusGPipeline" if mode == "g" else "LotusDPipeline", "_diffusers_version": "0.28.0",
             "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
             "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    (folder / "depthrt_untrained.json").write_text(json.dumps(
        {"untrained": True, "variant": variant, "seed": seed,
         "note": "random weights written by depthrt_export.diffusion.tiny_lotus; outputs are meaningless"},
        indent=2) + "\n")
    return folder
