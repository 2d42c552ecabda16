"""One spec per exported model family: how to load it, how to export it, what it outputs.

Export, check and the manifest read everything family-specific from here (STYLE: model quirks
stay in the model's spec). A spec never holds architecture sizes: those come from the
checkpoint's config.json; preprocessing comes from its preprocessor_config.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from depthrt.errors import WeightsError

from .weights import Weights


@dataclass(frozen=True)
class Tolerance:
    """Parity limits against the PyTorch reference pipeline, for one precision.

    ``rel_l2`` is the centred relative L2 (mean removed from both maps) and ``abs_rel`` the
    AbsRel after least-squares scale-and-shift alignment.
    """

    rel_l2: float
    abs_rel: float


@dataclass(frozen=True)
class FamilySpec:
    family: str
    architecture: str  # the transformers class exported
    model_types: tuple[str, ...]  # config.json model_type values this family accepts
    patch: Callable  # model -> context manager making the model traceable at any size
    tolerances: dict[str, Tolerance]
    input_name: str = "pixel_values"
    output_name: str = "predicted_depth"

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

        self.check_config(weights)
        cls = getattr(transformers, self.architecture)
        try:
            model = cls.from_pretrained(str(weights.path), use_safetensors=weights.use_safetensors)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsError(f"cannot load {self.architecture} from '{weights.path}': {first[:300]}") from None
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

    def patch_size(self, config: dict) -> int:
        backbone = config.get("backbone_config") or {}
        return int(backbone.get("patch_size") or config.get("patch_size") or 16)


def _lazy_patch(name: str) -> Callable:
    def patch(model):
        from . import patches

        return getattr(patches, name)(model)

    return patch


# Justification of the tolerances: at fp32 the runtime reproduces the processor's PIL resize and
# torch's bicubic interpolation exactly, so what remains is ONNX Runtime's kernels against
# PyTorch's (reordered float sums, fused attention), about 1e-6 relative; 1e-3 leaves room for
# deep ViT-L stacks while still failing on any pre/post-processing mismatch (a one-pixel resize
# offset shows as 1e-2 or more). Measured on tiny checkpoints: 1e-6 to 2e-5 for every family.
# fp16/bf16 limits come with the reduced-precision backends.
_FP32 = Tolerance(rel_l2=1e-3, abs_rel=1e-3)

FAMILIES: dict[str, FamilySpec] = {
    "dpt": FamilySpec("dpt", "DPTForDepthEstimation", ("dpt",), _lazy_patch("patch_dpt"), {"fp32": _FP32}),
    "zoedepth": FamilySpec("zoedepth", "ZoeDepthForDepthEstimation", ("zoedepth",), _lazy_patch("patch_zoedepth"),
                           {"fp32": _FP32}),
    "depth_anything": FamilySpec("depth_anything", "DepthAnythingForDepthEstimation", ("depth_anything",),
                                 _lazy_patch("patch_depth_anything"), {"fp32": _FP32}),
}


def family_for_config(config: dict) -> FamilySpec:
    """The spec whose model_types include the checkpoint's model_type."""
    model_type = config.get("model_type")
    for spec in FAMILIES.values():
        if model_type in spec.model_types:
            return spec
    known = ", ".join(t for s in FAMILIES.values() for t in s.model_types)
    raise WeightsError(f"checkpoint model_type '{model_type}' is not one depthrt exports (known: {known})")


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
