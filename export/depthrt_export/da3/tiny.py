"""Tiny random-weight Depth Anything 3 checkpoints in the published layout (tests, offline demo).

Same files and key names as the hub checkpoints (``config.json`` with only ``model_name``,
``model.safetensors`` with ``model.backbone.pretrained.*`` and ``model.head.*``), but small:
embedding 128 (two 64-wide heads, as the name's ViT family requires), 4 blocks (so out layers
(0, 1, 2, 3) by the loader's rule), position grid 37 x 37 as published, head widths 16..64.
The loader reads every one of those sizes back from the tensors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .loader import CONFIG_NAME, KNOWN_MODELS, PREFIX, WEIGHTS_NAME, out_layers_for
from .model import DA3Config, DA3Mono

TINY_DEPTH = 4


def tiny_config(model_name: str = "da3mono-large") -> DA3Config:
    spec = KNOWN_MODELS[model_name]
    embed = 2 * spec.head_dim
    return DA3Config(
        embed_dim=embed,
        depth=TINY_DEPTH,
        num_heads=embed // spec.head_dim,
        mlp_hidden=2 * embed,
        pos_grid=37,
        out_layers=out_layers_for(model_name, TINY_DEPTH),
        features=32,
        out_channels=(16, 32, 64, 64),
        head_hidden=8,
    )


def tiny_state_dict(model_name: str = "da3mono-large", seed: int = 0) -> dict[str, torch.Tensor]:
    """Published-name tensors with weights scaled to keep activations of order one, so that
    depth and sky vary over the image (both sides of the sky thresholds)."""
    model = DA3Mono(tiny_config(model_name))
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, ref in model.state_dict().items():
        shape = ref.shape

        def randn(std: float) -> torch.Tensor:
            return torch.randn(shape, generator=gen) * std

        if name.endswith("gamma"):
            t = 0.5 + randn(0.1)
        elif ".norm" in name and name.endswith("weight"):
            t = 1.0 + randn(0.1)
        elif name.endswith("bias"):
            t = randn(0.05)
        elif name.endswith(("pos_embed", "cls_token")):
            t = randn(0.5)
        else:  # conv / linear / transposed-conv weights
            fan_in = shape[1] * math.prod(shape[2:]) if len(shape) > 1 else shape[0]
            if "resize_layers.0" in name or "resize_layers.1" in name:  # ConvTranspose2d: (in, out, k, k)
                fan_in = shape[0]
            t = randn(1.0 / math.sqrt(fan_in))
        out[PREFIX + name] = t.to(torch.float32).contiguous()
    return out


def write_tiny_da3(directory: str | Path, model_name: str = "da3mono-large", seed: int = 0) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory``; returns the directory."""
    from safetensors.torch import save_file

    if model_name not in KNOWN_MODELS:
        raise ValueError(f"unknown model_name {model_name!r}; known: {', '.join(sorted(KNOWN_MODELS))}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tiny_state_dict(model_name, seed), str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    (directory / CONFIG_NAME).write_text(json.dumps({"model_name": model_name}) + "\n", encoding="utf-8")
    return directory
