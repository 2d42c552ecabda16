"""The export spec of Depth Anything 3 (mono and metric): our own port, the published layout."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from depthrt.errors import WeightsError

from ..specs import MAX_BATCH, Tolerance, size_range
from ..weights import Weights
from . import reference
from .loader import KNOWN_MODELS, load_da3

_IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


class DA3Spec:
    """Same interface as :class:`depthrt_export.specs.FamilySpec`."""

    family = "da3"
    architecture = "DepthAnything3Mono"
    # The network's outputs match PyTorch to ~1e-5 (the graph tests check that at 1e-4), but the
    # sky fill thresholds the sky score at 0.3: a pixel whose score lies within ~1e-5 of it may be
    # classified differently by ONNX Runtime and PyTorch, and then its depth (and its bilinear
    # neighbourhood's) is the far quantile on one side only. One such pixel costs up to ~7e-3 of
    # centred rel-L2 on tiny checkpoints while AbsRel stays ~2e-5; so rel-L2 is held to 1e-2 and
    # AbsRel (and the sky mask, in check) to 1e-3.
    tolerances = {"fp32": Tolerance(rel_l2=1e-2, abs_rel=1e-3)}

    def check_config(self, weights: Weights) -> None:
        name = weights.config.get("model_name")
        if name not in KNOWN_MODELS:
            what = f"model_name '{name}'" if name else f"model_type '{weights.config.get('model_type')}'"
            raise WeightsError(f"'{weights.path}' holds {what}, not a monocular Depth Anything 3 checkpoint "
                               f"(model_name {' or '.join(KNOWN_MODELS)})")

    def load_model(self, weights: Weights):
        self.check_config(weights)
        model, _ = load_da3(weights.path)
        return model.float().eval()

    def variant(self, config: dict) -> str:
        return str(config.get("model_name", ""))

    @staticmethod
    def _metric(config: dict) -> bool:
        return "metric" in str(config.get("model_name", ""))

    def output(self, config: dict) -> tuple[str, str, str]:
        if self._metric(config):
            return ("metric_depth", "metres",
                    "metres when predict() is given focal_px=(fx, fy): depth * focal / 300, focal in "
                    "processed-image pixels; without it the network's unscaled depth")
        return "relative_depth", "relative", "depth up to an unknown scale: larger is farther; sky set far"

    def processing(self, weights: Weights) -> tuple[dict, dict]:
        pre = {
            "order": ["resize", "rescale", "normalize"],
            "resize": {"enabled": True, "rule": "long_side", "long_side": reference.PROCESS_RES,
                       "multiple_of": reference.PATCH, "backend": "opencv",
                       "resample": "area when shrinking, cubic when growing"},
            "rescale": {"enabled": True, "factor": 1 / 255},
            "normalize": {"enabled": True, **_IMAGENET},
            "pad": {"enabled": False},
        }
        post = {
            "resize": "bilinear", "align_corners": False, "remove_padding": False,
            "depth_output": "depth",
            "sky": {"output": "sky", "non_sky_below": reference.NON_SKY_BELOW, "quantile": reference.SKY_QUANTILE,
                    "min_pixels": reference.MIN_PIXELS, "mask_at_least": reference.SKY_AT_LEAST},
        }
        if self._metric(weights.config):
            post["metric"] = {"focal_divisor": reference.METRIC_FOCAL_DIVISOR}
        return pre, post

    def dynamic(self, weights: Weights) -> dict:
        side = size_range(reference.PROCESS_RES, reference.PATCH, keep_aspect=True)
        return {"batch": {"min": 1, "opt": 1, "max": MAX_BATCH}, "height": dict(side), "width": dict(side)}

    def export_graph(self, model, path: Path, dynamic: dict, opset: int) -> tuple[list, list]:
        import torch

        # Traced at a non-square size that is not the usual one (see FamilySpec.export_graph).
        sample = torch.randn(1, 3, 378, 504, generator=torch.Generator().manual_seed(0))
        axes = {"pixel_values": {0: "batch", 2: "height", 3: "width"},
                "depth": {0: "batch", 1: "height", 2: "width"}, "sky": {0: "batch", 1: "height", 2: "width"}}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings: the graph is checked at other sizes
            torch.onnx.export(model, (sample,), str(path), dynamo=False, opset_version=opset,
                              input_names=["pixel_values"], output_names=["depth", "sky"], dynamic_axes=axes)
        inputs = [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, "height", "width"],
                   "description": "RGB, ImageNet-normalised, long side resized as the preprocessing says"}]
        outputs = [
            {"name": "depth", "dtype": "float32", "shape": ["batch", "height", "width"],
             "description": "exp(depth head): depth before the sky fill"},
            {"name": "sky", "dtype": "float32", "shape": ["batch", "height", "width"],
             "description": "relu(sky head): sky score, sky where >= 0.5"},
        ]
        return inputs, outputs

    def reference(self, weights: Weights, model=None):
        return _Reference(model if model is not None else self.load_model(weights))


class _Reference:
    description = "depthrt's PyTorch port of Depth Anything 3 (upstream preprocessing, sky fill, bilinear back)"

    def __init__(self, model):
        self.model = model

    def __call__(self, image: np.ndarray) -> dict:
        out = reference.predict(self.model, image)
        return {"depth": out["depth"], "sky": out["sky"]}
