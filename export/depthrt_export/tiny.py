"""Tiny random-weight checkpoints, written in each model's published Hugging Face layout.

The tests and the offline demo use them: ``config.json`` + ``preprocessor_config.json`` +
``model.safetensors`` exactly as the hub repositories hold them, with the architecture shrunk
(narrow, shallow) but every structural feature kept (backbone kind, readout, hybrid stem,
relative position bias, bin heads, metric head). A ``depthrt_untrained.json`` marker says plainly
that the weights are random; the exporter records it in the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

_IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
_HALF = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}

# preprocessor_config.json as published (the values of the real repositories).
_DPT_PP = {"image_processor_type": "DPTImageProcessor", "do_normalize": True, "do_rescale": True,
           "do_resize": True, "rescale_factor": 1 / 255, "resample": 3, "keep_aspect_ratio": False,
           "ensure_multiple_of": 1, "size": {"height": 384, "width": 384}, **_HALF}
_BEIT_PP = {**_DPT_PP, "keep_aspect_ratio": True, "ensure_multiple_of": 32, "size": {"height": 512, "width": 512}}
_DA_PP = {"image_processor_type": "DPTImageProcessor", "do_normalize": True, "do_pad": False, "do_rescale": True,
          "do_resize": True, "ensure_multiple_of": 14, "keep_aspect_ratio": True, "resample": 3,
          "rescale_factor": 1 / 255, "size": {"height": 518, "width": 518}, "size_divisor": None, **_IMAGENET}
_ZOE_PP = {"image_processor_type": "ZoeDepthImageProcessor", "do_normalize": True, "do_pad": True,
           "do_rescale": True, "do_resize": True, "ensure_multiple_of": 32, "keep_aspect_ratio": True,
           "resample": 2, "rescale_factor": 1 / 255, "size": {"height": 384, "width": 512}, **_HALF}


def _vit_dpt():
    from transformers import DPTConfig

    return DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                     image_size=384, patch_size=16, backbone_out_indices=[0, 1, 2, 3],
                     neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, use_auxiliary_head=False)


def _hybrid_dpt():
    from transformers import BitConfig, DPTConfig

    # BiT uses GroupNorm; 8 groups (32 in the real model) suit the narrow tiny widths.
    bit = BitConfig(global_padding="same", layer_type="bottleneck", depths=[1, 1, 1], hidden_sizes=[32, 64, 128],
                    embedding_size=32, out_features=["stage1", "stage2", "stage3"], embedding_dynamic_padding=True,
                    num_groups=8)
    return DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                     image_size=384, patch_size=16, is_hybrid=True, backbone_config=bit,
                     backbone_featmap_shape=[1, 128, 24, 24], backbone_out_indices=[0, 1, 2, 3],
                     neck_hidden_sizes=[32, 64, 32, 32], fusion_hidden_size=16, readout_type="project",
                     use_auxiliary_head=False)


def _beit_backbone():
    from transformers import BeitConfig

    return BeitConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                      image_size=384, patch_size=16, use_relative_position_bias=True,
                      use_absolute_position_embeddings=False, use_mask_token=False, layer_scale_init_value=0.1,
                      out_indices=[1, 2, 3, 4], reshape_hidden_states=False)


def _beit_dpt():
    from transformers import DPTConfig

    backbone = _beit_backbone()
    backbone.image_size = 512
    return DPTConfig(backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
                     use_auxiliary_head=False, hidden_size=32, image_size=512)


def _zoe(bins):
    from transformers import ZoeDepthConfig

    return ZoeDepthConfig(backbone_config=_beit_backbone(), neck_hidden_sizes=[8, 16, 32, 32],
                          fusion_hidden_size=16, bottleneck_features=16, num_relative_features=8,
                          bin_embedding_dim=16, num_attractors=[4, 2, 2, 1], bin_configurations=bins,
                          num_patch_transformer_layers=4 if len(bins) > 1 else None,  # forward loops over 4
                          patch_transformer_hidden_size=128 if len(bins) > 1 else None,  # classifier expects 128
                          patch_transformer_intermediate_size=128 if len(bins) > 1 else None,
                          patch_transformer_num_attention_heads=2 if len(bins) > 1 else None)


_NYU = {"n_bins": 16, "min_depth": 1e-3, "max_depth": 10.0, "name": "nyu"}
_KITTI = {"n_bins": 16, "min_depth": 1e-3, "max_depth": 80.0, "name": "kitti"}


def _depth_anything(v2: bool, metric: str | None = None):
    from transformers import DepthAnythingConfig, Dinov2Config

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2,
                            image_size=518, patch_size=14, out_indices=[1, 2, 3, 4], reshape_hidden_states=False,
                            apply_layernorm=True)
    extra = {}
    if metric:
        extra = {"depth_estimation_type": "metric", "max_depth": 20 if metric == "indoor" else 80}
    return DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, patch_size=14,
                               neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
                               **extra)


# Tiny Depth Anything 3 checkpoints come from depthrt_export.da3.tiny (same published layout).
DA3_VARIANTS = ("da3mono-large", "da3metric-large")

# Latent-diffusion tiny pipelines: variant -> (module in depthrt_export.diffusion, writer function).
DIFFUSION_VARIANTS = {
    "marigold-depth": ("tiny_marigold", "write_tiny_marigold"),
    "marigold-normals": ("tiny_marigold", "write_tiny_marigold"),
    "marigold-depth-lcm": ("tiny_marigold", "write_tiny_marigold"),
    **{v: ("tiny_lotus", "write_tiny_lotus") for v in ("lotus-depth-g", "lotus-depth-d", "lotus-normal-g",
                                                       "lotus-normal-d")},
    **{v: ("tiny_lbm", "write_tiny_lbm") for v in ("lbm-depth", "lbm-normals")},
}

VARIANTS = {
    "dpt-vit": ("DPTForDepthEstimation", _vit_dpt, _DPT_PP),
    "dpt-hybrid": ("DPTForDepthEstimation", _hybrid_dpt, _DPT_PP),
    "dpt-beit": ("DPTForDepthEstimation", _beit_dpt, _BEIT_PP),
    "zoedepth-nyu": ("ZoeDepthForDepthEstimation", lambda: _zoe([_NYU]), _ZOE_PP),
    "zoedepth-kitti": ("ZoeDepthForDepthEstimation", lambda: _zoe([_KITTI]), _ZOE_PP),
    "zoedepth-nyu-kitti": ("ZoeDepthForDepthEstimation", lambda: _zoe([_NYU, _KITTI]), _ZOE_PP),
    "depth-anything-v1": ("DepthAnythingForDepthEstimation", lambda: _depth_anything(False), _DA_PP),
    "depth-anything-v2": ("DepthAnythingForDepthEstimation", lambda: _depth_anything(True), _DA_PP),
    "depth-anything-v2-metric-indoor": ("DepthAnythingForDepthEstimation",
                                        lambda: _depth_anything(True, "indoor"), _DA_PP),
    "depth-anything-v2-metric-outdoor": ("DepthAnythingForDepthEstimation",
                                         lambda: _depth_anything(True, "outdoor"), _DA_PP),
}


def _spread_weights(model) -> None:
    """Re-draw conv and linear weights with PyTorch's default (fan-in scaled) initialisation.

    transformers initialises with std 0.02, which in a narrow random network collapses the output
    to a near-constant map (metric heads end in sigmoid/softplus bins): parity figures that are
    relative to the map's spread would then measure float32 rounding, not the export.
    """
    import torch

    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
            module.reset_parameters()


def _centre_final_conv(model, conv) -> None:
    """Shift the last conv's bias so its output is positive on most pixels of a sample image.

    Depth Anything's relative head ends in ReLU: with re-drawn random weights its pre-activation
    can be negative everywhere, and an all-zero map tests nothing. A trained head is positive.
    """
    import torch

    from depthrt.samples import synthetic_image

    seen = {}
    hook = conv.register_forward_hook(lambda mod, args, out: seen.setdefault("out", out))
    image = torch.from_numpy(synthetic_image(182, 238)).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        model(pixel_values=image)
        out = seen["out"]
        conv.bias += out.std() - out.mean()
    hook.remove()


def write_tiny(variant: str, folder: str | Path, seed: int = 0, pickle: bool = False) -> Path:
    """Write a tiny random-weight checkpoint of ``variant`` to ``folder`` (published layout).

    ``pickle=True`` writes ``pytorch_model.bin`` instead of safetensors (to test the refusal).
    """
    if variant in DIFFUSION_VARIANTS:  # diffusers / published-yaml layouts
        import importlib

        module_name, function = DIFFUSION_VARIANTS[variant]
        writer = getattr(importlib.import_module(f"{__package__}.diffusion.{module_name}"), function)
        return Path(writer(variant, folder, seed=seed))
    if variant.startswith("da3"):  # Depth Anything 3: not a transformers model
        from .da3.tiny import write_tiny_da3

        folder = write_tiny_da3(folder, model_name=variant, seed=seed)
        _mark_untrained(Path(folder), variant, seed)
        return Path(folder)
    if variant not in VARIANTS:
        raise KeyError(f"unknown tiny variant '{variant}' (known: {', '.join(VARIANTS)})")
    arch, make_config, pp = VARIANTS[variant]
    # ZoeDepth's bin head averages bin centres; with random weights the map stays within 0.02%
    # of its mean, so centred parity figures would measure float32 rounding. Amplifying the
    # neck 3x makes the map vary 25x more (about 0.5% of its mean) while its fp16 variant
    # stays finite (5x overflowed fp16 in the neck's fusion convolutions).
    neck_scale = 3.0 if arch.startswith("ZoeDepth") else 1.0
    return write_random_transformers(arch, make_config(), pp, folder, variant, seed, pickle, neck_scale)


def write_random_transformers(arch: str, config, preprocessor: dict, folder: str | Path, label: str,
                              seed: int = 0, pickle: bool = False, neck_scale: float = 1.0) -> Path:
    """A random-weight transformers ``arch`` built from ``config``, saved in the published layout
    (weights, config.json, ``preprocessor`` as preprocessor_config.json) and marked untrained as
    ``label``. Weights are spread so the map is not near-constant; ``neck_scale`` multiplies the
    neck's weights (see write_tiny for ZoeDepth)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, arch)(config).eval()
    _spread_weights(model)
    if arch.startswith("DepthAnything"):
        _centre_final_conv(model, model.head.conv3)
    if neck_scale != 1.0:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.startswith("neck.") and name.endswith("weight"):
                    param.mul_(neck_scale)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=not pickle)
    if pickle:
        for extra in folder.glob("*.safetensors"):
            extra.unlink()
        if not (folder / "pytorch_model.bin").exists():
            torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    _mark_untrained(folder, label, seed)
    return folder


def _mark_untrained(folder: Path, variant: str, seed: int) -> None:
    (folder / "depthrt_untrained.json").write_text(json.dumps(
        {"untrained": True, "variant": variant, "seed": seed,
         "note": "random weights written by depthrt_export.tiny; outputs are meaningless"}, indent=2) + "\n")
