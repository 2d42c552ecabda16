"""Shared export pieces of the latent-diffusion families: pipeline folders, graph specs, export.

See the package docstring for the graph contracts. A :class:`GraphSpec` describes one graph once
(names, shapes with named dynamic dims, their ranges, a sample input and the torch module);
:func:`export_graph` turns it into ``<name>.onnx`` + ``<name>.onnx.data`` and the manifest entry.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from depthrt.errors import WeightsError
from depthrt.manifest import sha256_file

from .. import kit

MAX_BATCH = 8


# --------------------------------------------------------------------------- pipeline folders
@dataclass
class PipelineFolder:
    """A resolved diffusers pipeline folder and what the manifest records about it."""

    path: Path
    id: str
    revision: str | None
    index: dict  # model_index.json
    files: list[dict] = field(default_factory=list)

    def source(self) -> dict:
        return {"id": self.id, "revision": self.revision, "untrained": self.untrained, "files": self.files}

    @property
    def untrained(self) -> bool:
        marker = self.path / "depthrt_untrained.json"
        return bool(json.loads(marker.read_text()).get("untrained")) if marker.is_file() else False


# (component folder, files of which one must exist for the config, for the weights)
COMPONENT_FILES = {
    "unet": (("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json")),
    "vae": (("config.json",), ("diffusion_pytorch_model.safetensors",)),
    "scheduler": (("scheduler_config.json",), ()),
    "text_encoder": (("config.json",), ("model.safetensors", "model.safetensors.index.json")),
    "tokenizer": (("vocab.json", "tokenizer.json"), ()),
}


def _download(hub_id: str) -> tuple[Path, str | None]:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise WeightsError(f"'{hub_id}' is a hub id, but huggingface_hub is not installed: pip install "
                           "'depthrt[export]', or pass --weights DIR with the downloaded pipeline folder") from None
    try:
        folder = snapshot_download(hub_id, allow_patterns=["*.json", "*.txt", "*.safetensors"],
                                   ignore_patterns=["*fp16*", "*.bin"])
    except Exception as exc:  # offline, unknown repo, gated repo, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"cannot get '{hub_id}' from the Hugging Face hub ({type(exc).__name__}: {reason[:160]}); "
                           f"download it on a connected machine (huggingface-cli download {hub_id} --local-dir DIR) "
                           "and pass --weights DIR") from None
    revision = Path(folder).name if Path(folder).parent.name == "snapshots" else None
    return Path(folder), revision


def resolve_pipeline(ref: str, components: tuple[str, ...]) -> PipelineFolder:
    """Resolve ``ref`` (hub id or local folder) to a diffusers pipeline folder holding ``components``."""
    local = Path(ref).expanduser()
    if local.exists() or ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        if not local.is_dir():
            raise WeightsError(f"weights folder '{ref}' does not exist or is not a folder: pass a diffusers "
                               "pipeline folder (model_index.json, unet/, vae/, ...) or a hub id")
        path, revision, source_id = local.resolve(), None, str(local.resolve())
    else:
        path, revision = _download(ref)
        source_id = ref
    index_path = path / "model_index.json"
    if not index_path.is_file():
        raise WeightsError(f"'{path}' has no model_index.json, so it is not a diffusers pipeline folder; pass the "
                           "folder that holds model_index.json, unet/, vae/, scheduler/, text_encoder/, tokenizer/")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"'{index_path}' is not valid JSON ({exc}); download it again") from None
    for name in components:
        config_files, weight_files = COMPONENT_FILES[name]
        folder = path / name
        if name not in index or not folder.is_dir():
            raise WeightsError(f"the pipeline folder '{path}' lacks its '{name}' component ({name}/ folder or its "
                               "model_index.json entry): download the whole pipeline")
        if not any((folder / f).is_file() for f in config_files):
            raise WeightsError(f"'{folder}' has none of {', '.join(config_files)}: the download of '{name}' is "
                               "incomplete")
        if weight_files and not any((folder / f).is_file() for f in weight_files):
            pickles = sorted(p.name for p in folder.glob("*.bin"))
            hint = (f" (it holds only pickle weights {pickles[0]}, which depthrt refuses: convert them to "
                    "safetensors)") if pickles else ""
            raise WeightsError(f"'{folder}' has no {weight_files[0]}{hint}: download the weights of '{name}'")
    files = [{"name": str(f.relative_to(path)), "sha256": sha256_file(f), "bytes": f.stat().st_size}
             for f in sorted(path.rglob("*"))
             if f.is_file() and f.suffix in (".json", ".safetensors", ".txt")
             and f.parent.name in (*components, path.name)]
    return PipelineFolder(path=path, id=source_id, revision=revision, index=index, files=files)


# --------------------------------------------------------------------------- graph specs
@dataclass
class TensorSpec:
    name: str
    shape: list  # ints and dynamic-dim names
    dtype: str = "float32"
    description: str = ""

    def entry(self) -> dict:
        out = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.description:
            out["description"] = self.description
        return out


@dataclass
class GraphSpec:
    """One exported graph, described once: export, engines and runtime read this (via the manifest)."""

    name: str
    module: object  # torch.nn.Module taking the inputs in order
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    dynamic: dict  # dim name -> {"min", "opt", "max"[, "multiple_of"]}
    sample: Callable[[], tuple]  # -> example input tensors for tracing


def size_ranges(opt: int, multiple: int, lo: int, hi: int) -> dict:
    up = lambda v: -(-v // multiple) * multiple  # noqa: E731
    return {"min": up(lo), "opt": up(opt), "max": up(hi), "multiple_of": multiple}


def image_dynamic(opt_size: int, factor: int, min_size: int | None = None, max_size: int | None = None) -> dict:
    """Batch, image and latent ranges for a VAE with downscale ``factor`` (long edge ``opt_size``)."""
    lo = min_size or 4 * factor
    hi = max_size or max(2048, 2 * opt_size)
    img = size_ranges(opt_size, factor, lo, hi)
    lat = {k: (v // factor if k != "multiple_of" else 1) for k, v in img.items()}
    return {"batch": {"min": 1, "opt": 1, "max": MAX_BATCH}, "height": dict(img), "width": dict(img),
            "latent_height": dict(lat), "latent_width": dict(lat)}


def _pick(dynamic: dict, names: list[str]) -> dict:
    return {n: dynamic[n] for n in names if n in dynamic}


def vae_encoder_spec(vae, dynamic: dict, trace_hw: tuple[int, int]) -> GraphSpec:
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vae = vae
            self.scaling = float(vae.config.scaling_factor)

        def forward(self, image):
            return self.vae.encode(image).latent_dist.mode() * self.scaling

    c = int(vae.config.latent_channels)
    h, w = trace_hw
    return GraphSpec(
        "vae_encoder", Encoder().eval(),
        [TensorSpec("image", ["batch", 3, "height", "width"], description="RGB in [-1, 1]")],
        [TensorSpec("latent", ["batch", c, "latent_height", "latent_width"],
                    description="VAE posterior mean x scaling_factor")],
        _pick(dynamic, ["batch", "height", "width", "latent_height", "latent_width"]),
        lambda: (torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0)).clamp(-1, 1),))


def vae_decoder_spec(vae, dynamic: dict, trace_hw: tuple[int, int], factor: int) -> GraphSpec:
    import torch

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vae = vae
            self.scaling = float(vae.config.scaling_factor)

        def forward(self, latent):
            return self.vae.decode(latent / self.scaling, return_dict=False)[0]

    c = int(vae.config.latent_channels)
    h, w = trace_hw
    return GraphSpec(
        "vae_decoder", Decoder().eval(),
        [TensorSpec("latent", ["batch", c, "latent_height", "latent_width"], description="scaled latents")],
        [TensorSpec("decoded", ["batch", 3, "height", "width"], description="raw decoder output (about [-1, 1])")],
        _pick(dynamic, ["batch", "height", "width", "latent_height", "latent_width"]),
        lambda: (torch.randn(1, c, h // factor, w // factor, generator=torch.Generator().manual_seed(1)),))


def unet_spec(unet, dynamic: dict, latent_hw: tuple[int, int], text_shape: tuple[int, ...] | None,
              extra_inputs: list[tuple[TensorSpec, Callable]] = (), forward_kwargs: Callable | None = None) -> GraphSpec:
    """The UNet, one call. ``extra_inputs``: (spec, sample maker) of family inputs after the standard ones;
    ``forward_kwargs(*extra_tensors) -> dict`` maps them to UNet keyword arguments (e.g. class_labels)."""
    import torch

    has_text = text_shape is not None

    class Unet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, *rest):
            if has_text:
                context, extras = rest[0], rest[1:]
            else:
                context, extras = None, rest
            kwargs = forward_kwargs(*extras) if forward_kwargs else {}
            return self.unet(sample, timestep, encoder_hidden_states=context, return_dict=False, **kwargs)[0]

    cin, cout = int(unet.config.in_channels), int(unet.config.out_channels)
    lh, lw = latent_hw
    inputs = [TensorSpec("sample", ["batch", cin, "latent_height", "latent_width"]),
              TensorSpec("timestep", ["batch"], description="diffusion timestep (float)")]
    g = torch.Generator().manual_seed(2)
    makers = [lambda: torch.randn(1, cin, lh, lw, generator=g), lambda: torch.tensor([999.0])]
    if has_text:
        inputs.append(TensorSpec("encoder_hidden_states", ["batch", *text_shape[1:]],
                                 description="the empty-prompt embedding, repeated per batch item"))
        makers.append(lambda: torch.randn(1, *text_shape[1:], generator=g))
    for spec, maker in extra_inputs:
        inputs.append(spec)
        makers.append(maker)
    return GraphSpec(
        "unet", Unet().eval(), inputs,
        [TensorSpec("model_output", ["batch", cout, "latent_height", "latent_width"],
                    description="the UNet's prediction (its scheduler's prediction_type)")],
        _pick(dynamic, ["batch", "latent_height", "latent_width"]),
        lambda: tuple(m() for m in makers))


def export_graph(spec: GraphSpec, out_dir: Path, opset: int) -> dict:
    """Trace ``spec`` to ``out_dir/<name>.onnx`` with its weights in ``<name>.onnx.data``; the manifest entry."""
    import onnx
    import torch

    from ..specs import graph_limits

    out_dir = Path(out_dir)
    tmp = out_dir / f".{spec.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        axes = {}
        for t in (*spec.inputs, *spec.outputs):
            named = {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            if named:
                axes[t.name] = named
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings: sizes are checked by parity at other shapes
            torch.onnx.export(spec.module, spec.sample(), str(tmp / "graph.onnx"), dynamo=False,
                              opset_version=opset, input_names=[t.name for t in spec.inputs],
                              output_names=[t.name for t in spec.outputs], dynamic_axes=axes,
                              do_constant_folding=True)
        proto = onnx.load(str(tmp / "graph.onnx"), load_external_data=True)
        path = out_dir / f"{spec.name}.onnx"
        data = f"{spec.name}.onnx.data"
        for stale in (path, out_dir / data):
            stale.unlink(missing_ok=True)
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data, size_threshold=1024)
        del proto
        onnx.checker.check_model(str(path))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    entry = {
        "name": spec.name,
        "file": path.name,
        "external_data": data if (out_dir / data).exists() else None,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "opset": opset,
        "precision": "fp32",
        "inputs": [t.entry() for t in spec.inputs],
        "outputs": [t.entry() for t in spec.outputs],
        "dynamic": spec.dynamic,
        "limits": graph_limits(spec.dynamic),
    }
    kit.attach([entry], spec.name, kit.write_module_kit(spec, out_dir))  # Polygraphy parity kit
    return entry


# --------------------------------------------------------------------------- conditioning, scheduler
def save_text_embedding(embedding, out_dir: Path, name: str = "empty_prompt.npy") -> dict:
    """Store a [1, seq, dim] embedding as float32 .npy; the manifest's ``loop.text_embedding`` entry."""
    arr = np.ascontiguousarray(embedding.detach().float().cpu().numpy() if hasattr(embedding, "detach")
                               else embedding, dtype=np.float32)
    path = Path(out_dir) / name
    np.save(path, arr, allow_pickle=False)
    return {"file": name, "shape": list(arr.shape), "dtype": "float32", "sha256": sha256_file(path),
            "bytes": path.stat().st_size}


def empty_prompt_embedding(tokenizer, text_encoder):
    """The text encoder's last hidden state for "" (BOS, EOS: not padded), as the Marigold/Lotus pipelines do."""
    import torch

    ids = tokenizer("", padding="do_not_pad", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.inference_mode():
        return text_encoder(ids)[0].float()


def scheduler_entry(scheduler) -> dict:
    """The scheduler's config as published plus the coefficients diffusers computed from it."""
    config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    entry = {"class": type(scheduler).__name__, **json.loads(json.dumps(config, default=str))}
    if hasattr(scheduler, "alphas_cumprod"):
        entry["alphas_cumprod"] = [float(v) for v in scheduler.alphas_cumprod.float().cpu().numpy()]
        entry["final_alpha_cumprod"] = float(scheduler.final_alpha_cumprod)
    return entry
