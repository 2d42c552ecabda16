"""depthrt's ComfyUI nodes: thin adapters over the runtime (``depthrt.load`` and ``predict``) and the
encoders ``depthrt predict`` writes with (:func:`depthrt.imageio.to_controlnet`,
:func:`depthrt.imageio.normals_to_rgb`, :func:`depthrt.normals.normals_from_depth`).

ComfyUI's own modules (``folder_paths``, ``comfy.utils``, ``comfy.model_management``) are imported
when used, so this module imports, and its functions run, without ComfyUI (the tests do that).
ComfyUI images are float tensors B x H x W x 3 in 0..1 and masks B x H x W.
"""

from __future__ import annotations

import importlib
import math
import os
from pathlib import Path

import numpy as np

import depthrt
from depthrt.errors import InputError
from depthrt.estimator import DIFFUSION_FAMILIES
from depthrt.imageio import normals_to_rgb, to_controlnet
from depthrt.manifest import batch_max
from depthrt.normals import DEFAULT_A, DEFAULT_BG_THRESHOLD, normals_from_depth

FOLDER = "depthrt"  # models/depthrt/<bundle>/, and the extra_model_paths.yaml key
CATEGORY = "depthrt"
BACKENDS = ("auto", "ort-cpu", "ort-cuda", "openvino", "trt")
PRECISIONS = ("fp32", "fp16", "bf16")
MAX_SEED = 0xFFFF_FFFF_FFFF_FFFF
DIFFUSION_NOTE = ("steps, ensemble_size and seed drive the diffusion models (Marigold, Lotus, LBM; steps 0 = the "
                  "model's default, e.g. Marigold 4) and are ignored by the others.")


def comfy_module(name: str):
    """ComfyUI's module ``name``, or None outside ComfyUI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# --------------------------------------------------------------------------- bundles
def register_model_folder() -> None:
    """Make ``models/depthrt`` a ComfyUI model folder (beside any ``depthrt:`` entries of
    extra_model_paths.yaml, which ComfyUI has read before it loads custom nodes)."""
    folder_paths = comfy_module("folder_paths")
    if folder_paths is not None:
        folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)


def bundle_roots() -> list[Path]:
    folder_paths = comfy_module("folder_paths")
    if folder_paths is None:
        return []
    try:
        return [Path(p) for p in folder_paths.get_folder_paths(FOLDER)]
    except KeyError:  # the pack's folder was not registered (imported outside its package)
        return []


def list_bundles() -> list[str]:
    """The bundle folders (with a manifest.json) found in the depthrt model folders, sorted."""
    names = set()
    for root in bundle_roots():
        if root.is_dir():
            names.update(p.name for p in root.iterdir() if (p / "manifest.json").is_file())
    return sorted(names)


def find_bundle(name: str) -> Path:
    """The folder of bundle ``name`` (first match in the depthrt model folders), or a clear error."""
    for root in bundle_roots():
        if name and (root / name / "manifest.json").is_file():
            return root / name
    where = ", ".join(str(r) for r in bundle_roots()) or "ComfyUI's models/depthrt"
    raise InputError(f"depthrt bundle {name!r} not found in {where}; put the bundle folder there (made by "
                     "`depthrt export MODEL --out <that folder>/NAME`) and refresh the page")


_loaded: dict[str, tuple[tuple, object]] = {}  # loader node id -> (its inputs and manifest stamp, estimator)


def _stamp(path: Path) -> int:
    return (path / "manifest.json").stat().st_mtime_ns  # a re-exported bundle is loaded again


def load_model(bundle: str, backend: str = "auto", precision: str = "fp32", node_id: str = ""):
    """The estimator for these inputs: reused while they (and the bundle's manifest) stay the same;
    a change drops the node's previous model before loading the new one."""
    if backend not in BACKENDS:
        raise InputError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    path = find_bundle(bundle)
    key = (str(path.resolve()), backend, precision, _stamp(path))
    cached = _loaded.get(node_id)
    if cached is not None and cached[0] == key:
        return cached[1]
    _loaded.pop(node_id, None)
    try:
        model = depthrt.load(path, backend=backend, precision=precision)
    except depthrt.DepthrtError as exc:  # the runtime's advice names CLI flags; here they are node inputs
        raise type(exc)(str(exc).replace("--backend ", "backend ").replace("--precision ", "precision ")) from None
    _loaded[node_id] = (key, model)
    return model


# --------------------------------------------------------------------------- tensors
def images_from_tensor(image) -> list[np.ndarray]:
    """A ComfyUI IMAGE (B x H x W x 3 float in 0..1; torch or numpy) -> B uint8 RGB arrays.

    Rounds to the nearest 8-bit value, the exact inverse of ComfyUI's LoadImage (x / 255)."""
    array = image.detach().cpu().float().numpy() if hasattr(image, "detach") else np.asarray(image, np.float32)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3 or 0 in array.shape:
        raise InputError(f"image has shape {tuple(array.shape)}; pass a ComfyUI IMAGE batch (B x H x W x 3, RGB: "
                         "convert images with alpha or a single channel to RGB first)")
    scaled = array * np.float32(255)  # one new array, then in place: this runs on every video frame
    if not math.isfinite(float(scaled.sum(dtype=np.float64))):
        raise InputError("image contains NaN or infinite values; check the nodes that made it")
    np.clip(scaled, 0.0, 255.0, out=scaled)
    np.rint(scaled, out=scaled)
    return list(scaled.astype(np.uint8))


def tensor_from_rgb(rgbs: list[np.ndarray]):
    """B uint8 H x W x 3 arrays -> a ComfyUI IMAGE (torch float32 B x H x W x 3, value / 255)."""
    import torch

    batch = np.stack(rgbs, dtype=np.float32)  # one float array (no uint8 stack), then divided in place
    batch /= np.float32(255)  # numpy: faster than torch here
    return torch.from_numpy(batch)


def mask_from(preds, shape: tuple[int, int]):
    """DA3's sky masks as a ComfyUI MASK (B x H x W, 1 = sky); zeros for models without one."""
    import torch

    if all(p.sky is None for p in preds):
        return torch.zeros((len(preds), *shape), dtype=torch.float32)
    return torch.from_numpy(np.stack([np.zeros(shape, np.float32) if p.sky is None else p.sky.astype(np.float32)
                                      for p in preds]))


# --------------------------------------------------------------------------- running
def comfy_progress():
    """progress(done, total) for the runtime: stops at ComfyUI's cancel button and moves its progress bar."""
    utils, management = comfy_module("comfy.utils"), comfy_module("comfy.model_management")
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if management is not None:
            management.throw_exception_if_processing_interrupted()
        if utils is not None:
            bar = bar or utils.ProgressBar(total)
            bar.update_absolute(done, total)

    return progress


def is_diffusion(model) -> bool:
    return model.manifest["model"]["family"] in DIFFUSION_FAMILIES


def predict(model, image, processing_resolution: int = 0, steps: int = 0, ensemble_size: int = 1,
            seed: int = 0, progress=None) -> list:
    """The runtime's predictions for a ComfyUI IMAGE batch: same-size frames run batched."""
    for name, value, low in (("processing_resolution", processing_resolution, 0), ("steps", steps, 0),
                             ("ensemble_size", ensemble_size, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"{name} must be a whole number of at least {low}, not {value!r}")
    images = images_from_tensor(image)
    progress = progress or comfy_progress()
    progress(0, len(images))  # honours a cancel that came before the first image
    options: dict = {"processing_resolution": processing_resolution or None}
    if is_diffusion(model):  # per image, with progress per denoising step
        options.update(num_inference_steps=steps or None, ensemble_size=ensemble_size, seed=seed)
        return model.predict(images, progress=progress, **options)
    # Feed-forward graphs take up to their batch range at once; calling predict per such chunk adds no
    # inference call, and lets the progress bar and the cancel button act during a long video batch.
    chunk = batch_max(model.graph)
    preds: list = []
    for start in range(0, len(images), chunk):
        offset = len(preds)
        preds += model.predict(images[start:start + chunk], progress=lambda done, _: progress(offset + done,
                                                                                              len(images)), **options)
    return preds


def depth_map(model, image, processing_resolution=0, steps=0, ensemble_size=1, seed=0, progress=None):
    """(IMAGE, MASK): the ControlNet depth maps (near = white, as ``depthrt predict --save controlnet``)
    and DA3's sky masks."""
    if model.kind == "normals":
        raise InputError(f"bundle '{model.bundle.name}' predicts surface normals, not depth; use the "
                         "DepthrtNormalMap node, or load a depth bundle")
    preds = predict(model, image, processing_resolution, steps, ensemble_size, seed, progress)
    rgbs = [to_controlnet(p.depth, p.kind) for p in preds]
    return tensor_from_rgb(rgbs), mask_from(preds, rgbs[0].shape[:2])


def normal_map(model, image, processing_resolution=0, steps=0, ensemble_size=1, seed=0,
               a=DEFAULT_A, bg_threshold=DEFAULT_BG_THRESHOLD, progress=None):
    """IMAGE: the RGB normal maps ((n + 1) / 2, as ``depthrt predict`` writes them): the model's normals,
    or for depth models normals from the depth map (see :mod:`depthrt.normals`; ``a``, ``bg_threshold``)."""
    preds = predict(model, image, processing_resolution, steps, ensemble_size, seed, progress)
    rgbs = [normals_to_rgb(p.normals if p.normals is not None else
                           normals_from_depth(p.depth, p.kind, a=a, bg_threshold=bg_threshold)) for p in preds]
    return (tensor_from_rgb(rgbs),)


# --------------------------------------------------------------------------- the nodes
def _diffusion_inputs() -> dict:
    return {
        "processing_resolution": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 1, "tooltip":
                                          "the model's resize target; 0 = the bundle's default"}),
        "steps": ("INT", {"default": 0, "min": 0, "max": 1000, "tooltip":
                          "denoising steps (Marigold, LBM); 0 = the model's default"}),
        "ensemble_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip":
                                  "noise draws merged into one map (Marigold)"}),
        "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                         "tooltip": "initial noise (Marigold, Lotus-G, LBM)"}),
    }


class DepthrtLoadBundle:
    """Loads a depthrt bundle from models/depthrt/ on a backend; reused across runs until an input changes."""

    DESCRIPTION = ("Load a depthrt bundle (a folder made by `depthrt export`) from models/depthrt/ or an "
                   "extra_model_paths.yaml `depthrt:` entry. auto picks the fastest backend available.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("DEPTHRT_MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"bundle": (list_bundles(),), "backend": (list(BACKENDS),),
                             "precision": (list(PRECISIONS),)},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    @classmethod
    def VALIDATE_INPUTS(cls, bundle):
        """Our message (where bundles go) instead of ComfyUI's 'value not in list'."""
        try:
            find_bundle(bundle)
        except InputError as exc:
            return str(exc)
        return True

    @classmethod
    def IS_CHANGED(cls, bundle, backend, precision, unique_id=None):
        try:
            return f"{bundle}|{backend}|{precision}|{_stamp(find_bundle(bundle))}"
        except (InputError, OSError):
            return math.nan  # never equal: run, and report the problem

    def load(self, bundle, backend, precision, unique_id=None):
        return (load_model(bundle, backend, precision, node_id=str(unique_id or "")),)


class DepthrtDepthMap:
    DESCRIPTION = ("Depth maps for ControlNet: near = white, exactly what `depthrt predict --save controlnet` "
                   "writes, at the input's size; the mask is Depth Anything 3's sky (zeros for other models). "
                   + DIFFUSION_NOTE)
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("depth", "sky_mask")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("DEPTHRT_MODEL",), "image": ("IMAGE",), **_diffusion_inputs()}}

    def run(self, model, image, processing_resolution, steps, ensemble_size, seed):
        return depth_map(model, image, processing_resolution, steps, ensemble_size, seed)


class DepthrtNormalMap:
    DESCRIPTION = ("RGB normal maps ((n + 1) / 2, as `depthrt predict` writes them). Normals models (Marigold, "
                   "Lotus, LBM normals) predict them; for depth models they come from the depth map like the "
                   "MiDaS normal-map preprocessor: Sobel slopes of the depth, z = a (larger a = flatter), flat "
                   "where the normalised depth is below bg_threshold (the far background). " + DIFFUSION_NOTE)
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("normal_map",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("DEPTHRT_MODEL",), "image": ("IMAGE",), **_diffusion_inputs(),
                             "a": ("FLOAT", {"default": DEFAULT_A, "min": 0.01, "max": 100.0, "step": 0.05,
                                             "tooltip": "depth models: z of the normals before normalising"}),
                             "bg_threshold": ("FLOAT", {"default": DEFAULT_BG_THRESHOLD, "min": 0.0, "max": 1.0,
                                                        "step": 0.05, "tooltip": "depth models: flat below this "
                                                        "normalised nearness"})}}

    def run(self, model, image, processing_resolution, steps, ensemble_size, seed, a=DEFAULT_A,
            bg_threshold=DEFAULT_BG_THRESHOLD):
        return normal_map(model, image, processing_resolution, steps, ensemble_size, seed, a, bg_threshold)


NODE_CLASS_MAPPINGS = {"DepthrtLoadBundle": DepthrtLoadBundle, "DepthrtDepthMap": DepthrtDepthMap,
                       "DepthrtNormalMap": DepthrtNormalMap}
NODE_DISPLAY_NAME_MAPPINGS = {"DepthrtLoadBundle": "depthrt Load Bundle", "DepthrtDepthMap": "depthrt Depth Map",
                              "DepthrtNormalMap": "depthrt Normal Map"}
