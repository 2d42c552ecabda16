"""One spec per exported model family: how to load it, export it, check it, what it outputs.

Export, check and the manifest read everything family-specific from here (STYLE: model quirks
stay in the model's spec, never as ``if model == ...`` in shared code). A spec never holds
architecture sizes: those come from the checkpoint (config.json or the tensors' shapes), and the
preprocessing from the checkpoint's published preprocessing files or the model's published rules.

The interface every spec implements (see :class:`FamilySpec`):
``check_config``, ``load_model``, ``variant``, ``output``, ``processing``, ``dynamic``,
``export_graph``, ``reference`` and ``tolerances``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from depthrt.errors import WeightsError

from .weights import Weights

MAX_BATCH = 8


@dataclass(frozen=True)
class Tolerance:
    """Parity limits against the PyTorch reference pipeline, for one precision.

    ``rel_l2`` is the centred relative L2 (mean removed from both maps) and ``abs_rel`` the
    AbsRel after least-squares scale-and-shift alignment.
    """

    rel_l2: float
    abs_rel: float


# Justification of the fp32 limits: the runtime reproduces the processors' PIL resize and torch's
# bicubic interpolation exactly, so what remains is ONNX Runtime's kernels against PyTorch's
# (reordered float sums, fused attention), about 1e-6 relative; 1e-3 leaves room for deep ViT-L
# stacks while still failing on any pre/post-processing mismatch (a one-pixel resize offset shows
# as 1e-2 or more). Measured on tiny checkpoints: 1e-6 to 2e-5 for every family.
FP32 = Tolerance(rel_l2=1e-3, abs_rel=1e-3)
# Reduced precision is opt-in and checked against the same fp32 PyTorch reference. Measured on a
# real-size Depth Anything V2 Small (random weights, 640x480): the fp16 graph with fp32 islands
# 4.5e-3 rel-L2, OpenVINO bf16 2.2e-2 (bf16 keeps 8 mantissa bits, fp16 11). The limits leave
# about 4x (fp16) and 3x (bf16) room for deeper models, and still catch an overflow or a NaN.
FP16 = Tolerance(rel_l2=2e-2, abs_rel=2e-2)
BF16 = Tolerance(rel_l2=6e-2, abs_rel=6e-2)
REDUCED = {"fp16": FP16, "bf16": BF16}


def size_range(opt: int, multiple: int, keep_aspect: bool) -> dict:
    """The allowed range of one spatial dimension of the graph's input.

    Fixed-size processors always feed ``opt``; keep-aspect ones fit one side to ``opt`` and scale
    the other, so the range covers aspect ratios up to 4:1 either way.
    """
    def down(v: float) -> int:
        return max(multiple, int(v // multiple) * multiple)

    def up(v: float) -> int:
        return int(math.ceil(v / multiple)) * multiple

    lo, hi = (opt / 4, opt * 4) if keep_aspect else (opt / 2, opt * 2)
    return {"min": max(down(lo), 2 * multiple), "opt": up(opt), "max": up(hi), "multiple_of": multiple}


def graph_limits(dynamic: dict) -> dict:
    """The manifest's ``limits`` for a graph with these ``dynamic`` ranges: the sizes it runs at on
    backends without optimisation profiles (ONNX Runtime, OpenVINO), which is any size the model can do.

    ``dynamic`` only bounds TensorRT's default profile. The graphs themselves take any multiple of
    their patch (the ViT families, measured down to one patch) and any latent of at least one pixel
    (the diffusion graphs; an image dim with a latent twin needs one latent pixel, ``factor`` of its
    own), with no maximum but memory.
    """
    out = {}
    for dim, r in dynamic.items():
        if dim == "batch":
            continue
        step = int(r.get("multiple_of", 1))
        twin = dynamic.get(f"latent_{dim}")
        smallest = max(step, r["opt"] // twin["opt"]) if twin else step
        out[dim] = {"min": smallest, "multiple_of": step}
    return out


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True)
class FamilySpec:
    """A transformers depth-estimation family (DPT, ZoeDepth, Depth Anything)."""

    family: str
    architecture: str  # the transformers class exported
    model_types: tuple[str, ...]  # config.json model_type values this family accepts
    patch: Callable  # model -> context manager making the model traceable at any size
    tolerances: dict[str, Tolerance] = field(default_factory=lambda: {"fp32": FP32, **REDUCED})
    input_name: str = "pixel_values"
    output_name: str = "predicted_depth"
    # DPT-style necks reassemble features at 1/32 and upsample by 2 per stage: only sides that are
    # multiples of 2 x patch come back at the input's size, so the graph's sizes step by that.
    patch_multiple: int = 1

    def check_config(self, weights: Weights) -> None:
        model_type = weights.config.get("model_type")
        if model_type not in self.model_types:
            raise WeightsError(
                f"'{weights.path}' holds a '{model_type}' checkpoint, not {self.architecture} "
                f"(model_type {' or '.join(self.model_types)}); pass the weights of this model"
            )

    def load_model(self, weights: Weights):
        """The PyTorch model, in eval mode and float32, loaded through transformers."""
        import transformers

        transformers.logging.disable_progress_bar()  # depthrt's own progress lines say what happens
        self.check_config(weights)
        cls = getattr(transformers, self.architecture)
        try:
            model = cls.from_pretrained(str(weights.path), use_safetensors=weights.use_safetensors)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise WeightsError(f"cannot load {self.architecture} from '{weights.path}': {first_line(exc)[:300]}") from None
        return model.float().eval()

    def variant(self, config: dict) -> str:
        backbone = (config.get("backbone_config") or {}).get("model_type")
        if self.family == "dpt":
            return "hybrid" if config.get("is_hybrid") else (backbone or "vit")
        return backbone or ""

    def output(self, config: dict) -> tuple[str, str, str]:
        """(kind, units, description) of the graph's output."""
        if self.family == "zoedepth" or config.get("depth_estimation_type") == "metric":
            return "metric_depth", "metres", "metric depth in metres; larger is farther"
        return ("relative_inverse_depth", "relative",
                "relative inverse depth (disparity-like): larger is nearer; unknown scale and shift")

    def _preprocessor_config(self, weights: Weights) -> dict:
        path = weights.path / "preprocessor_config.json"
        if not path.is_file():
            raise WeightsError(f"'{weights.path}' has no preprocessor_config.json; depthrt takes the "
                               "preprocessing from it: download it with the weights")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WeightsError(f"'{path}' is not valid JSON ({exc}); download it again") from None

    def processing(self, weights: Weights) -> tuple[dict, dict]:
        """(preprocessing, postprocessing) of the manifest, from preprocessor_config.json."""
        from .hf_processing import processing_from_hf

        try:
            return processing_from_hf(self._preprocessor_config(weights))
        except ValueError as exc:
            raise WeightsError(f"'{weights.path / 'preprocessor_config.json'}': {exc}") from None

    def dynamic(self, weights: Weights) -> dict:
        """Allowed batch/height/width of the graph, from the processor's size rule and patch size."""
        pp = self._preprocessor_config(weights)
        size = pp.get("size") or {}
        if isinstance(size, int):
            size = {"height": size, "width": size}
        keep = bool(pp.get("keep_aspect_ratio", False))
        proc_multiple = int(pp.get("ensure_multiple_of", 1) or 1)
        backbone = weights.config.get("backbone_config") or {}
        patch = int(backbone.get("patch_size") or weights.config.get("patch_size") or 16) * self.patch_multiple
        multiple = proc_multiple * patch // math.gcd(proc_multiple, patch)
        opt_h = int(size.get("height", 384))
        opt_w = int(size.get("width", opt_h))
        return {"batch": {"min": 1, "opt": 1, "max": MAX_BATCH},
                "height": size_range(opt_h, multiple, keep), "width": size_range(opt_w, multiple, keep)}

    def export_graph(self, model, path: Path, dynamic: dict, opset: int) -> tuple[list, list]:
        """Write the ONNX graph; return its (inputs, outputs) tensor descriptions."""
        import torch

        from . import patches

        mult = dynamic["height"]["multiple_of"]
        # Trace at a size that is neither square nor the usual one, so a shape baked in by the
        # trace cannot hide: the parity check then runs at other sizes.
        trace_h = max(dynamic["height"]["min"], (dynamic["height"]["opt"] * 3 // 4) // mult * mult)
        sample = torch.randn(1, 3, trace_h, dynamic["width"]["opt"], generator=torch.Generator().manual_seed(0))
        with self.patch(model), torch.inference_mode():
            patches.export_onnx(model, sample, str(path), opset=opset, input_name=self.input_name,
                                output_name=self.output_name)
        inputs = [{"name": self.input_name, "dtype": "float32", "shape": ["batch", 3, "height", "width"],
                   "description": "RGB, preprocessed as the manifest's preprocessing says"}]
        outputs = [{"name": self.output_name, "dtype": "float32", "shape": ["batch", "height", "width"],
                    "description": "the model's output at the input's (processed) size"}]
        return inputs, outputs

    def reference(self, weights: Weights, model=None):
        """The PyTorch reference pipeline: image -> {"depth": HxW float32}."""
        from .reference import ReferencePipeline

        return ReferencePipeline(self, weights, model=model)


def _lazy_patch(name: str) -> Callable:
    def patch(model):
        from . import patches

        return getattr(patches, name)(model)

    return patch


def _da3_spec():
    from .da3.spec import DA3Spec

    return DA3Spec()


FAMILIES: dict[str, FamilySpec] = {
    "dpt": FamilySpec("dpt", "DPTForDepthEstimation", ("dpt",), _lazy_patch("patch_dpt"), patch_multiple=2),
    "zoedepth": FamilySpec("zoedepth", "ZoeDepthForDepthEstimation", ("zoedepth",), _lazy_patch("patch_zoedepth"),
                           patch_multiple=2),
    "depth_anything": FamilySpec("depth_anything", "DepthAnythingForDepthEstimation", ("depth_anything",),
                                 _lazy_patch("patch_depth_anything")),
}


def get_spec(family: str):
    """The spec of ``family`` (DA3's is built on first use: it imports its own model code)."""
    if family == "da3":
        return _da3_spec()
    if family not in FAMILIES:
        raise WeightsError(f"depthrt has no exporter for family '{family}' yet")
    return FAMILIES[family]


def family_for_config(config: dict):
    """The spec whose model_types include the checkpoint's model_type (or DA3's model_name)."""
    if "model_name" in config and "model_type" not in config:
        return _da3_spec()
    model_type = config.get("model_type")
    for spec in FAMILIES.values():
        if model_type in spec.model_types:
            return spec
    known = ", ".join(t for s in FAMILIES.values() for t in s.model_types)
    raise WeightsError(f"checkpoint model_type '{model_type}' is not one depthrt exports (known: {known})")
