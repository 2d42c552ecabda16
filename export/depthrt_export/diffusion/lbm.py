"""LBM (gojasper/LBM, Latent Bridge Matching): SDXL-shaped UNet, flow-matching Euler with bridge noise.

The published checkpoints (``jasperai/LBM_depth``, ``jasperai/LBM_normals``) are one ``*.yaml`` plus
one ``*.safetensors`` holding the whole ``LBMModel`` state dict (``denoiser.*`` the UNet,
``vae.vae_model.*`` the SDXL VAE). Facts from ``src/lbm/inference/utils.py`` (``get_model``):

* The yaml holds no sizes. The UNet's architecture is hard-coded there: SDXL's (DownBlock2D,
  2x CrossAttnDownBlock2D, widths 320/640/1280, transformer depths 1/2/10, 64-wide heads,
  linear projections, 32 GroupNorm groups) with ``cross_attention_dim`` = each block's own width
  and no text encoder, so ``encoder_hidden_states`` is None and the "cross" attention attends to
  the block's own tokens. depthrt keeps the hard-coded structure but reads widths, depths, layer
  counts and channels from the tensors' shapes (head size 64 and 32 groups kept), so one loader
  reads the real checkpoint and the tiny test ones.
* The VAE and the scheduler configs come from ``stabilityai/stable-diffusion-xl-base-1.0``; they are
  shipped in ``data/`` as facts so loading works offline. The scheduler is
  ``FlowMatchEulerDiscreteScheduler`` built from SDXL's Euler config: only ``num_train_timesteps``
  (1000) applies; shift 1.
* Sampling (``LBMModel.sample``): sigmas ``linspace(1, 1/N, N)`` then 0, timesteps ``sigma * 1000``;
  ``x <- x + (sigma_next - sigma) * unet(x, t)``; between steps the bridge noise
  ``bridge_noise_sigma * sqrt(sigma_next * (1 - sigma_next)) * randn`` is added. The start is the
  source image's latent (no noise).
* ``evaluate()`` resizes the image to the closest SDXL aspect bucket (PIL bicubic), maps it to
  [-1, 1], and never resizes the result back; depthrt returns the input's size (bilinear with
  antialias). Upstream decodes latents above 128 (1024 px) in either side in overlapping
  128-latent tiles (``AutoencoderKLDiffusers.decode`` with ``Tiler``: overlap 16, tiles zero-padded
  to 128, Gaussian-weighted merge); so does depthrt by default (``loop.decoder_tiles``). The
  SDXL VAE's mid-block attention sees a whole tile, so one-shot decoding differs everywhere, not
  only near tile borders.

Upstream encodes with a *sample* of the VAE posterior; depthrt uses its mean (deterministic).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from depthrt.errors import WeightsError

DATA = Path(__file__).with_name("data")
SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
UNET_PREFIX = "denoiser."
VAE_PREFIX = "vae.vae_model."
HEAD_SIZE = 64  # SDXL: attention_head_dim (= heads) [5, 10, 20] for widths [320, 640, 1280]
NORM_GROUPS = 32
# (width, height) buckets of evaluate(), at 1024 px.
ASPECT_BUCKETS = ((512, 2048), (1024, 1024), (2048, 512), (896, 1152), (1152, 896), (512, 1920), (640, 1536),
                  (768, 1280), (1280, 768), (1536, 640), (1920, 512))
BUCKET_BASE = 1024
# get_model's AutoencoderKLDiffusersConfig(tiling_size=(128, 128)) and the config's default tiling_overlap
# (16, 16), in latent pixels: what the runtime reads from loop.decoder_tiles.
DECODER_TILES = {"latent_tile": 128, "overlap": 16, "pad": "zeros, bottom and right, to the full tile",
                 "merge": "gaussian (Tiler._gaussian_weights, variance 0.01 of the tile size squared)"}
# get_model's yaml keys (the arguments of _get_model_from_config); anything else is another model's yaml.
YAML_KEYS = {"backbone_signature", "vae_num_channels", "unet_input_channels", "timestep_sampling",
             "selected_timesteps", "prob", "conditioning_images_keys", "conditioning_masks_keys", "source_key",
             "target_key", "bridge_noise_sigma", "logit_mean", "logit_std", "pixel_loss_type", "latent_loss_type",
             "latent_loss_weight", "pixel_loss_weight"}
TRAINING_KEYS = {"wandb_project", "train_shards", "validation_shards", "batch_size", "learning_rate", "optimizer",
                 "num_steps", "log_interval", "resume_from_checkpoint", "max_epochs", "save_interval",
                 "save_ckpt_path"}


def shipped_config(name: str) -> dict:
    """A config shipped in data/ (SDXL's VAE or scheduler config), without our provenance note."""
    config = json.loads((DATA / name).read_text())
    config.pop("_source", None)
    return config


@dataclass
class LbmCheckpoint:
    """An LBM folder, read without loading the weights: its settings and the derived configs."""

    path: Path
    yaml_file: Path
    weights_file: Path
    settings: dict
    unet_config: dict
    vae_config: dict
    scheduler_config: dict
    files: list = field(default_factory=list)

    @property
    def bridge_noise_sigma(self) -> float:
        return float(self.settings.get("bridge_noise_sigma", 0.0))  # _get_model_from_config's default

    @property
    def scaling_factor(self) -> float:
        return float(self.vae_config["scaling_factor"])

    @property
    def shift_factor(self) -> float:
        return float(self.vae_config.get("shift_factor") or 0.0)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_config["block_out_channels"]) - 1)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise WeightsError(f"'{path}' is not valid YAML ({str(exc).splitlines()[0]}); download it again") from None
    if not isinstance(data, dict):
        raise WeightsError(f"'{path}' is not an LBM model config (a YAML mapping of get_model's settings)")
    return data


def check_settings(settings: dict, where: Path) -> None:
    """Refuse yamls of other models: not LBM at all, or LBM with conditioning (relighting) or another backbone."""
    known = set(settings) & YAML_KEYS
    if not known or "bridge_noise_sigma" not in settings and "unet_input_channels" not in settings:
        raise WeightsError(f"'{where}' is not an LBM model config (none of get_model's keys such as "
                           "bridge_noise_sigma, unet_input_channels); pass the folder of jasperai/LBM_depth or "
                           "jasperai/LBM_normals")
    cond = list(settings.get("conditioning_images_keys") or []) + list(settings.get("conditioning_masks_keys") or [])
    if cond:
        raise WeightsError(f"'{where}' is the config of a conditional LBM model (conditioning on {', '.join(cond)}, "
                           "e.g. LBM_relighting); depthrt exports the depth and normals models only")
    backbone = settings.get("backbone_signature", SDXL_BASE)
    if backbone != SDXL_BASE:
        raise WeightsError(f"'{where}' builds LBM on '{backbone}'; depthrt ships only {SDXL_BASE}'s VAE and "
                           "scheduler configs (the depth and normals models use it)")
    vae_ch, unet_ch = int(settings.get("vae_num_channels", 4)), int(settings.get("unet_input_channels", 4))
    if unet_ch != vae_ch:
        raise WeightsError(f"'{where}': the UNet takes {unet_ch} channels for a {vae_ch}-channel latent, so the model "
                           "is conditioned on extra inputs (not depth or normals); depthrt cannot export it")


def _indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def unet_config_from_shapes(shapes: dict, where: Path) -> dict:
    """get_model's hard-coded UNet2DConditionModel arguments, with sizes read from the tensors' shapes."""
    keys = list(shapes)
    try:
        downs = _indices(keys, r"down_blocks\.(\d+)\.")
        widths = [shapes[f"down_blocks.{i}.resnets.0.conv1.weight"][0] for i in downs]
        layers = len(_indices(keys, r"down_blocks\.0\.resnets\.(\d+)\."))
        attn = [bool(_indices(keys, rf"down_blocks\.{i}\.attentions\.(\d+)\.")) for i in downs]
        depths = [len(_indices(keys, rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\.")) or 1
                  for i in downs]
        in_ch = shapes["conv_in.weight"][1]
        out_ch = shapes["conv_out.weight"][0]
        up_attn = [bool(_indices(keys, rf"up_blocks\.{i}\.attentions\.(\d+)\.")) for i in range(len(downs))]
        mid_depth = len(_indices(keys, r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\."))
    except KeyError as exc:
        raise WeightsError(f"'{where}' lacks the UNet tensor {exc} of LBM's SDXL-shaped denoiser; it is not an "
                           "LBM checkpoint") from None
    if not downs or any(w % HEAD_SIZE or w % NORM_GROUPS for w in widths) or up_attn != attn[::-1]:
        raise WeightsError(f"'{where}': the denoiser's blocks (widths {widths}) are not SDXL-shaped (widths "
                           f"multiples of {HEAD_SIZE}, attention in the same blocks going down and up)")
    if mid_depth != depths[-1]:
        raise WeightsError(f"'{where}': the middle block has {mid_depth} transformer layers, the last down block "
                           f"{depths[-1]}; SDXL's UNet has the same number in both")
    return sdxl_unet_config(widths, depths, layers, in_ch, out_ch, attn)


def sdxl_unet_config(widths, depths, layers: int, in_channels: int = 4, out_channels: int = 4,
                     attention=(False, True, True)) -> dict:
    """The UNet2DConditionModel arguments get_model hard-codes, with these sizes (SDXL: widths
    [320, 640, 1280], depths [1, 2, 10], 2 layers per block, attention in blocks 2 and 3)."""
    widths, depths, attention = list(widths), list(depths), list(attention)
    return dict(
        in_channels=in_channels, out_channels=out_channels, center_input_sample=False, flip_sin_to_cos=True,
        freq_shift=0, down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in attention[::-1]],
        only_cross_attention=False, block_out_channels=widths, layers_per_block=layers, downsample_padding=1,
        mid_block_scale_factor=1, dropout=0.0, act_fn="silu", norm_num_groups=NORM_GROUPS, norm_eps=1e-05,
        cross_attention_dim=widths, transformer_layers_per_block=depths, reverse_transformer_layers_per_block=None,
        encoder_hid_dim=None, encoder_hid_dim_type=None, attention_head_dim=[w // HEAD_SIZE for w in widths],
        num_attention_heads=None, dual_cross_attention=False, use_linear_projection=True, class_embed_type=None,
        addition_embed_type=None, addition_time_embed_dim=None, num_class_embeds=None, upcast_attention=None,
        resnet_time_scale_shift="default", resnet_skip_time_act=False, resnet_out_scale_factor=1.0,
        time_embedding_type="positional", time_embedding_dim=None, time_embedding_act_fn=None,
        timestep_post_act=None, time_cond_proj_dim=None, conv_in_kernel=3, conv_out_kernel=3,
        projection_class_embeddings_input_dim=None, attention_type="default", class_embeddings_concat=False,
        mid_block_only_cross_attention=None, cross_attention_norm=None, addition_embed_type_num_heads=64)


def vae_config_from_shapes(shapes: dict, where: Path) -> dict:
    """SDXL's VAE config (shipped) with widths and layer counts read from the tensors' shapes."""
    config = shipped_config("sdxl_vae_config.json")
    keys = list(shapes)
    downs = _indices(keys, r"encoder\.down_blocks\.(\d+)\.")
    try:
        widths = [shapes[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0] for i in downs]
        latent = shapes["decoder.conv_in.weight"][1]
    except KeyError as exc:
        raise WeightsError(f"'{where}' lacks the VAE tensor {exc} (vae.vae_model.*); it is not an LBM "
                           "checkpoint") from None
    if not widths or any(w % config["norm_num_groups"] for w in widths):
        raise WeightsError(f"'{where}': the VAE's widths {widths} are not SDXL-shaped")
    config.update(block_out_channels=widths, latent_channels=latent,
                  layers_per_block=len(_indices(keys, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")),
                  down_block_types=["DownEncoderBlock2D"] * len(widths),
                  up_block_types=["UpDecoderBlock2D"] * len(widths))
    return config


def tensor_shapes(path: Path) -> dict[str, tuple]:
    """Every tensor's shape from the safetensors header, without reading the weights."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise WeightsError(f"cannot read '{path}' as safetensors ({type(exc).__name__}: "
                           f"{(str(exc).splitlines() or [''])[0][:200]}); download it again") from None


def read_checkpoint(path: str | Path) -> LbmCheckpoint:
    """Find and check the yaml + safetensors of an LBM folder (get_model's rules: first yaml, last weights)."""
    path = Path(path)
    if not path.is_dir():
        raise WeightsError(f"LBM weights '{path}' is not a folder; pass the folder holding the yaml and the "
                           "safetensors of jasperai/LBM_depth or jasperai/LBM_normals")
    yamls = sorted(p for p in path.iterdir() if p.suffix == ".yaml")
    weights = sorted(p for p in path.iterdir() if p.suffix == ".safetensors")
    if not yamls:
        raise WeightsError(f"'{path}' holds no .yaml config; an LBM checkpoint folder has one beside its "
                           ".safetensors: download the whole repository")
    if not weights:
        raise WeightsError(f"'{path}' holds no .safetensors weights (pickled .ckpt files are refused); download "
                           "model.safetensors of the repository")
    settings = _read_yaml(yamls[0])
    check_settings(settings, yamls[0])
    shapes = tensor_shapes(weights[-1])
    unet_shapes = {k[len(UNET_PREFIX):]: v for k, v in shapes.items() if k.startswith(UNET_PREFIX)}
    vae_shapes = {k[len(VAE_PREFIX):]: v for k, v in shapes.items() if k.startswith(VAE_PREFIX)}
    if not unet_shapes or not vae_shapes:
        raise WeightsError(f"'{weights[-1]}' holds no {UNET_PREFIX}* / {VAE_PREFIX}* tensors, so it is not the "
                           "state dict of an LBMModel")
    unet_config = unet_config_from_shapes(unet_shapes, weights[-1])
    if unet_config["in_channels"] != int(settings.get("unet_input_channels", 4)):
        raise WeightsError(f"'{weights[-1]}' has a UNet of {unet_config['in_channels']} input channels but "
                           f"'{yamls[0].name}' says {settings.get('unet_input_channels', 4)}: the yaml belongs to "
                           "another model")
    return LbmCheckpoint(path=path, yaml_file=yamls[0], weights_file=weights[-1], settings=settings,
                         unet_config=unet_config, vae_config=vae_config_from_shapes(vae_shapes, weights[-1]),
                         scheduler_config=shipped_config("sdxl_scheduler_config.json"))


def _load_module(cls, config: dict, weights_file: Path, prefix: str, dtype):
    """Build ``cls(**config)`` on the meta device and fill it tensor by tensor from the safetensors
    (mmap), cast to ``dtype``: peak memory is one copy of the module, not two."""
    import torch
    from safetensors import safe_open

    with torch.device("meta"):
        module = cls(**config)
    state = {}
    with safe_open(str(weights_file), framework="pt") as fh:
        for key in fh.keys():
            if key.startswith(prefix):
                state[key[len(prefix):]] = fh.get_tensor(key).to(dtype)
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise WeightsError(f"'{weights_file}' does not fit the {cls.__name__} derived from its shapes: "
                           f"{str(exc).splitlines()[0][:300]}") from None
    return module.eval()


def load_unet(ckpt: LbmCheckpoint, dtype=None):
    import torch
    from diffusers import UNet2DConditionModel

    return _load_module(UNet2DConditionModel, ckpt.unet_config, ckpt.weights_file, UNET_PREFIX,
                        dtype or torch.float32)


def load_vae(ckpt: LbmCheckpoint, dtype=None):
    import torch
    from diffusers import AutoencoderKL

    config = {k: v for k, v in ckpt.vae_config.items() if not k.startswith("_")}
    return _load_module(AutoencoderKL, config, ckpt.weights_file, VAE_PREFIX, dtype or torch.float32)


def bucket_size(height: int, width: int, resolution: int = BUCKET_BASE) -> tuple[int, int]:
    """evaluate()'s aspect bucket (closest width/height ratio; first on ties), scaled to ``resolution``
    (1024: upstream's buckets); returns (height, width), multiples of 8."""
    ratio = width / height  # evaluate(): "ori_h_bg, ori_w_bg = image.size" is (width, height)
    bw, bh = min(ASPECT_BUCKETS, key=lambda b: abs(b[0] / b[1] - ratio))
    scale = resolution / BUCKET_BASE
    return max(8, int(round(bh * scale / 8)) * 8), max(8, int(round(bw * scale / 8)) * 8)


def flow_sigmas(steps: int):
    """set_timesteps(sigmas=linspace(1, 1/N, N)) of FlowMatchEulerDiscreteScheduler (shift 1), then 0."""
    import numpy as np

    sigmas = np.linspace(1, 1 / steps, steps).astype(np.float32)
    return np.append(sigmas, np.float32(0.0)).astype(np.float32)


# --------------------------------------------------------------------------- export
TRACE_LATENT = (11, 13)  # odd latents: the UNet's upsample-to-skip-size path traces size-generic ops
UNET_FP32_LIMIT = 4 * 1024**3  # above this many bytes of fp32 weights the UNet's weights are stored as fp16
DESCRIPTIONS = {
    "relative_depth": "LBM depth (mean of the decoded channels, in [0, 1]); affine-invariant",
    "relative_inverse_depth": "LBM disparity (mean of the decoded channels, in [0, 1]); affine-invariant",
    "normals": "unit surface normals, HxWx3 (x, y, z) = 2 * decoded RGB - 1, renormalised; the axes are LBM's own "
               "(its output images are RGB = (n + 1) / 2 of these)",
}


def resolve_lbm(ref: str) -> tuple[Path, str, str | None]:
    """(folder, source id, revision) of a hub id or local folder holding an LBM yaml + safetensors."""
    local = Path(ref).expanduser()
    if local.exists() or ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        return local.resolve(), str(local.resolve()), None
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise WeightsError(f"'{ref}' is a hub id, but huggingface_hub is not installed: pip install "
                           "'depthrt[export]', or pass --weights DIR with the downloaded folder") from None
    try:
        folder = Path(snapshot_download(ref, allow_patterns=["*.yaml", "*.safetensors", "*.json"]))
    except Exception as exc:  # offline, unknown repo, gated repo, ...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise WeightsError(f"cannot get '{ref}' from the Hugging Face hub ({type(exc).__name__}: {reason[:160]}); "
                           f"download it on a connected machine (huggingface-cli download {ref} --local-dir DIR) "
                           "and pass --weights DIR") from None
    return folder, ref, folder.name if folder.parent.name == "snapshots" else None


def task_of(ckpt: LbmCheckpoint, name: str, kind: str | None) -> str:
    """'depth' or 'normals': the preset's output kind, else the yaml's target_key or the folder's name."""
    if kind:
        return "normals" if kind == "normals" else "depth"
    for text in (str(ckpt.settings.get("target_key", "")), name, ckpt.yaml_file.name):
        low = text.lower()
        if "normal" in low:
            return "normals"
        if "depth" in low:
            return "depth"
    raise WeightsError(f"cannot tell whether '{name}' is LBM depth or normals; export it through a preset, e.g. "
                       "`depthrt export lbm-normals --weights DIR`")


class _Fp16Storage:
    """Store a module's floating-point weights as fp16 and cast them to fp32 where they are used:
    the ONNX graph then holds fp16 initializers + Cast (half the file and the export memory) and
    still computes in fp32 on every backend."""

    def __init__(self, module):
        import torch
        from torch.nn.utils import parametrize

        class ToFloat(torch.nn.Module):
            def forward(self, w):
                return w.float()

        for sub in list(module.modules()):
            for name, param in list(sub.named_parameters(recurse=False)):
                if param.is_floating_point():
                    param.data = param.data.half()
                    parametrize.register_parametrization(sub, name, ToFloat(), unsafe=True)


def export_unet(ckpt: LbmCheckpoint, dynamic: dict, out_dir: Path, opset: int, half: bool) -> dict:
    """Load and export the UNet. fp32: the shared ``export_graph``. ``half`` (SDXL-sized UNets): weights
    stored as fp16 and cast to fp32 in the graph; no constant folding (it would fold the casts back
    to fp32 initializers); the torch model is freed before the ONNX file is consolidated into one
    external-data file, so peak memory stays near one fp16 copy of the weights plus one graph."""
    import gc
    import shutil
    import warnings

    import onnx
    import torch

    from depthrt.manifest import sha256_file

    from ..kit import attach, write_module_kit
    from ..specs import graph_limits
    from .common import export_graph, unet_spec

    lh, lw = TRACE_LATENT
    unet = load_unet(ckpt, torch.float16 if half else torch.float32)
    if not half:
        return export_graph(unet_spec(unet, dynamic, (lh, lw), None), out_dir, opset)
    _Fp16Storage(unet)
    spec = unet_spec(unet, dynamic, (lh, lw), None)
    del unet
    parity_kit = write_module_kit(spec, out_dir)  # before the module is freed
    tmp = out_dir / ".unet.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        axes = {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
                for t in (*spec.inputs, *spec.outputs)}
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(spec.module, spec.sample(), str(tmp / "graph.onnx"), dynamo=False, opset_version=opset,
                              input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
                              dynamic_axes={k: v for k, v in axes.items() if v}, do_constant_folding=False)
        inputs, outputs, ranges = ([t.entry() for t in spec.inputs], [t.entry() for t in spec.outputs],
                                   spec.dynamic)
        del spec
        gc.collect()
        proto = onnx.load(str(tmp / "graph.onnx"), load_external_data=True)
        path, data = out_dir / "unet.onnx", "unet.onnx.data"
        for stale in (path, out_dir / data):
            stale.unlink(missing_ok=True)
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                        size_threshold=1024)
        del proto
        onnx.checker.check_model(str(path))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    entry = {"name": "unet", "file": path.name, "external_data": data, "sha256": sha256_file(path),
             "bytes": path.stat().st_size, "opset": opset, "precision": "fp32", "inputs": inputs,
             "outputs": outputs, "dynamic": ranges, "limits": graph_limits(ranges)}
    attach([entry], "unet", parity_kit)
    return entry


def export(preset, weights: str, out_dir: Path, opset: int) -> dict:
    """Write the LBM graphs into ``out_dir``; return the manifest fields."""
    from depthrt.manifest import sha256_file
    from depthrt.progress import step

    from .common import export_graph, image_dynamic, vae_decoder_spec, vae_encoder_spec

    folder, source_id, revision = resolve_lbm(weights)
    ckpt = read_checkpoint(folder)
    kind = preset.kind if preset is not None else None
    task = task_of(ckpt, str(weights), kind)
    kind = kind or ("normals" if task == "normals" else "relative_depth")
    if ckpt.shift_factor:
        raise WeightsError(f"'{folder}': a VAE with a shift factor is not SDXL's; depthrt exports LBM on SDXL only")
    factor = ckpt.vae_scale_factor
    dynamic = image_dynamic(BUCKET_BASE, factor, min_size=4 * factor, max_size=2 * BUCKET_BASE)
    lh, lw = TRACE_LATENT
    n_params = sum(math.prod(shape) for key, shape in tensor_shapes(ckpt.weights_file).items()
                   if key.startswith(UNET_PREFIX))
    graphs = []
    with step("loading LBM's VAE (SDXL-shaped, from the checkpoint)"):
        vae = load_vae(ckpt)
    for spec in (vae_encoder_spec(vae, dynamic, (lh * factor, lw * factor)),
                 vae_decoder_spec(vae, dynamic, (lh * factor, lw * factor), factor)):
        with step(f"exporting {spec.name} to ONNX (opset {opset})"):
            graphs.append(export_graph(spec, out_dir, opset))
    del vae
    half = 4 * n_params > UNET_FP32_LIMIT
    with step(f"exporting unet to ONNX (opset {opset}{', fp16 weights' if half else ''})"):
        graphs.insert(1, export_unet(ckpt, dynamic, out_dir, opset, half))
    loop = {
        "type": "lbm",
        "task": task,
        "scheduler": {"class": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": ckpt.num_train_timesteps,
                      "shift": 1.0, "sigmas": "linspace(1, 1/N, N) then 0", "timesteps": "sigma * num_train_timesteps"},
        "default_steps": 1,
        "bridge_noise_sigma": ckpt.bridge_noise_sigma,
        "processing_resolution": BUCKET_BASE,
        "aspect_buckets": [[w, h] for w, h in ASPECT_BUCKETS],
        "bucket_base": BUCKET_BASE,
        "vae_scale_factor": factor,
        "latent_channels": int(ckpt.vae_config["latent_channels"]),
        "scaling_factor": ckpt.scaling_factor,
        "text_embedding": None,
        "posterior": "mean",
        "decoder_tiles": dict(DECODER_TILES),
        "unet_weights": "float16" if half else "float32",
    }
    files = [{"name": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in (ckpt.yaml_file, ckpt.weights_file)]
    marker = folder / "depthrt_untrained.json"
    untrained = bool(json.loads(marker.read_text()).get("untrained")) if marker.is_file() else False
    return {
        "model": {"name": preset.name if preset is not None else str(weights), "family": "lbm",
                  "architecture": "LBMModel", "variant": task},
        "output": {"kind": kind, "units": "unit vectors" if kind == "normals" else "relative",
                   "description": DESCRIPTIONS[kind]},
        "graphs": graphs,
        "preprocessing": {"rule": "lbm", "range": [-1.0, 1.0], "resize": "closest aspect bucket (width/height)",
                          "resample": "pil_bicubic", "multiple_of": factor, "pad": None},
        "postprocessing": {"clamp": [-1.0, 1.0], "to_unit": "(x + 1) / 2", "resample": "bilinear", "antialias": True,
                           "depth": "mean of the 3 channels", "normals": "2 x - 1, normalised"},
        "loop": loop,
        "source": {"id": source_id, "revision": revision, "untrained": untrained, "files": files},
    }
