"""Load a monocular Depth Anything 3 checkpoint in the published layout.

Layout (as on the hub for depth-anything/DA3MONO-LARGE and depth-anything/DA3METRIC-LARGE)::

    config.json        {"model_name": "da3mono-large"}    (or "da3metric-large")
    model.safetensors  model.backbone.pretrained.*  and  model.head.*

Where each size comes from:

* From the model name (it selects upstream's yaml): the ViT family (DINOv2 "vitl": 64-wide
  attention heads, so ``num_heads = embed_dim // 64``), the published block count (24) and out
  layers (4, 11, 17, 23), and the head type (plain DPT with a sky branch).
* From the tensors: embedding width (``cls_token``), position-table grid (``pos_embed``), MLP width
  (``blocks.0.mlp.fc1``), head widths (``projects.*``, ``scratch.layer1_rn``,
  ``scratch.output_conv2.0``) and the number of blocks (the ``blocks.<i>.`` indices present).

Out layers rule: with D blocks present and the name's published depth N and out layers L,
``out_layers = [l * D // N for l in L]``. At D = N that is exactly L (4, 11, 17, 23); for the
tiny checkpoints (D = 4) it is (0, 1, 2, 3). D must be 4..N, and the four indices distinct.

Keys must match exactly: any missing or unexpected key, or a tensor of the wrong shape, is a
``WeightsError`` that names them. Only safetensors is read (no pickle).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from depthrt.errors import WeightsError

from .model import PATCH_SIZE, DA3Config, DA3Mono

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PREFIX = "model."
_VIT = PREFIX + "backbone.pretrained."
_HEAD = PREFIX + "head."


@dataclass(frozen=True)
class _NameSpec:
    depth: int
    out_layers: tuple[int, int, int, int]
    head_dim: int
    embed_dim: int  # the published width; used only when the checkpoint lacks the tensor


_VITL = _NameSpec(depth=24, out_layers=(4, 11, 17, 23), head_dim=64, embed_dim=1024)

#: model names this port reads (upstream yaml names) -> their architecture.
KNOWN_MODELS: dict[str, _NameSpec] = {
    "da3mono-large": _VITL,
    "da3metric-large": _VITL,
}


def _list(keys, limit: int = 5) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def resolve_checkpoint(path_or_dir: str | Path) -> tuple[Path, Path]:
    """(config.json, model.safetensors) of a checkpoint directory, or of one of its two files."""
    path = Path(path_or_dir)
    if path.is_file():
        if path.name not in (CONFIG_NAME, WEIGHTS_NAME):
            raise WeightsError(
                f"{path} is not a Depth Anything 3 checkpoint: give the directory that holds "
                f"{CONFIG_NAME} and {WEIGHTS_NAME} (only safetensors weights are read)"
            )
        path = path.parent
    if not path.is_dir():
        raise WeightsError(f"{path} does not exist: give a directory with {CONFIG_NAME} and {WEIGHTS_NAME}")
    config, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not weights.is_file():
        pickles = sorted(p.name for p in path.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        hint = f" ({', '.join(pickles)} found: pickle checkpoints are refused)" if pickles else ""
        raise WeightsError(f"{path} has no {WEIGHTS_NAME}{hint}; download the safetensors checkpoint")
    if not config.is_file():
        raise WeightsError(f"{path} has no {CONFIG_NAME}; it should hold {{\"model_name\": ...}}")
    return config, weights


def read_model_name(config_path: Path) -> str:
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{config_path} is not readable JSON ({exc}); re-download the checkpoint") from exc
    name = data.get("model_name") if isinstance(data, dict) else None
    if not isinstance(name, str):
        raise WeightsError(f"{config_path} has no \"model_name\" string; known: {', '.join(sorted(KNOWN_MODELS))}")
    key = name.strip().lower()
    if key not in KNOWN_MODELS:
        raise WeightsError(
            f"model_name {name!r} in {config_path} is not supported; known: "
            f"{', '.join(sorted(KNOWN_MODELS))} (the multi-view DA3 models are not ported)"
        )
    return key


def out_layers_for(model_name: str, depth: int) -> tuple[int, int, int, int]:
    """The rule of the module docstring."""
    spec = KNOWN_MODELS[model_name]
    if not 4 <= depth <= spec.depth:
        raise WeightsError(
            f"the checkpoint has {depth} transformer blocks; {model_name} needs between 4 and {spec.depth}"
        )
    layers = tuple(layer * depth // spec.depth for layer in spec.out_layers)
    if len(set(layers)) != 4:  # cannot happen for depth >= 4 with (4, 11, 17, 23); kept as a guard
        raise WeightsError(f"{depth} blocks give repeated out layers {layers} for {model_name}")
    return layers  # type: ignore[return-value]


def config_from_tensors(model_name: str, tensors: dict[str, torch.Tensor]) -> DA3Config:
    """Sizes from the model name and the tensors (see the module docstring).

    A size whose tensor is absent falls back to the published value, so that the strict key check
    that follows reports the absent key rather than failing here.
    """
    spec = KNOWN_MODELS[model_name]

    def dim(key: str, axis: int, default: int) -> int:
        t = tensors.get(key)
        return int(t.shape[axis]) if t is not None and t.dim() > axis else default

    embed = dim(_VIT + "cls_token", -1, spec.embed_dim)
    if embed % spec.head_dim:
        raise WeightsError(
            f"embedding width {embed} (from {_VIT}cls_token) is not a multiple of the "
            f"{spec.head_dim}-wide attention heads of {model_name}"
        )
    patch = tensors.get(_VIT + "patch_embed.proj.weight")
    if patch is not None and tuple(patch.shape[-2:]) != (PATCH_SIZE, PATCH_SIZE):
        raise WeightsError(f"{_VIT}patch_embed.proj.weight has patch {tuple(patch.shape[-2:])}, expected 14x14")
    n_pos = dim(_VIT + "pos_embed", 1, 1 + 37 * 37) - 1
    grid = int(round(n_pos**0.5))
    if grid * grid != n_pos or grid < 1:
        raise WeightsError(f"{_VIT}pos_embed holds {n_pos} patch positions, not a square grid")
    blocks = {int(m.group(1)) for k in tensors if (m := re.match(re.escape(_VIT) + r"blocks\.(\d+)\.", k))}
    depth = max(blocks) + 1 if blocks else spec.depth
    out_channels = tuple(dim(f"{_HEAD}projects.{i}.weight", 0, c) for i, c in enumerate((256, 512, 1024, 1024)))
    return DA3Config(
        embed_dim=embed,
        depth=depth,
        num_heads=embed // spec.head_dim,
        mlp_hidden=dim(_VIT + "blocks.0.mlp.fc1.weight", 0, 4 * embed),
        pos_grid=grid,
        out_layers=out_layers_for(model_name, depth),
        features=dim(_HEAD + "scratch.layer1_rn.weight", 0, 256),
        out_channels=out_channels,  # type: ignore[arg-type]
        head_hidden=dim(_HEAD + "scratch.output_conv2.0.weight", 0, 32),
    )


def build_from_tensors(model_name: str, tensors: dict[str, torch.Tensor]) -> DA3Mono:
    """A model with ``tensors`` (published key names) loaded under strict key and shape checks."""
    cfg = config_from_tensors(model_name, tensors)
    model = DA3Mono(cfg)
    expected = {PREFIX + k: v for k, v in model.state_dict().items()}
    missing = expected.keys() - tensors.keys()
    unexpected = tensors.keys() - expected.keys()
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_list(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_list(unexpected)}")
    if problems:
        raise WeightsError(
            f"the checkpoint does not match {model_name} ({'; '.join(problems)}); "
            "is it a monocular DA3 checkpoint in the published layout?"
        )
    bad = [
        f"{k} {tuple(tensors[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if tuple(tensors[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise WeightsError(f"{len(bad)} tensor(s) of the wrong shape for {model_name}: {_list(bad)}")
    not_float = [k for k, t in tensors.items() if not t.is_floating_point()]
    if not_float:
        raise WeightsError(f"non-floating-point tensor(s) in the checkpoint: {_list(not_float)}")
    state = {k[len(PREFIX):]: t.to(torch.float32) for k, t in tensors.items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_da3(path_or_dir: str | Path) -> tuple[DA3Mono, str]:
    """(model in eval mode, float32, CPU; its model name) from a published-layout checkpoint."""
    config_path, weights_path = resolve_checkpoint(path_or_dir)
    model_name = read_model_name(config_path)
    try:
        from safetensors.torch import load_file

        tensors = load_file(str(weights_path), device="cpu")
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise WeightsError(f"{weights_path} is not a readable safetensors file ({exc}); re-download it") from exc
    return build_from_tensors(model_name, tensors), model_name
