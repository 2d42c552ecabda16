"""The estimator split into stages (preprocess, inference, depth map) that can run in different threads.

``FrameModel`` runs an :class:`~depthrt.estimator.Estimator`'s stages (``preprocess``, ``infer``)
with a processing-resolution override (the resize target of the bundle's preprocessing), which
video needs to trade detail for frame rate, and a fast depth resize for display.
"""

from __future__ import annotations

import copy

import numpy as np

from .. import processing
from ..errors import InputError
from ..manifest import size_problem
from .opencv import cv2


class FrameModel:
    """Preprocess / infer / to_depth for video frames, over a loaded estimator."""

    def __init__(self, estimator, resolution: int | None = None):
        self.est = estimator
        self.kind = estimator.kind
        self.units = estimator.units
        self.pre = copy.deepcopy(estimator.manifest["preprocessing"])
        self.post = estimator.manifest["postprocessing"]
        self.resolution = resolution
        resize = self.pre.get("resize") or {}
        if resolution is not None:
            if resolution < 1:
                raise InputError(f"--resolution {resolution}: give a positive number of pixels, e.g. 266")
            if not resize.get("enabled"):
                raise InputError("--resolution: this bundle does not resize its input, so its processing "
                                 "resolution is the frame's own; resize the video instead")
            # keep_aspect models (DPT, Depth Anything) then scale the frame's short side to about N
            # (the DPT rule keeps the scale closer to 1); fixed-size models process N x N.
            resize["height"] = resize["width"] = int(resolution)
        self._fast_resize = not (self.post.get("remove_padding") and (self.pre.get("pad") or {}).get("enabled"))

    def model_size(self, height: int, width: int) -> tuple[int, int]:
        """The model input's (h, w) for a frame of this size (what the graph will run at)."""
        resize = self.pre.get("resize") or {}
        if not resize.get("enabled"):
            return height, width
        return processing.resize_output_size(height, width, resize)

    def check_frame_size(self, height: int, width: int) -> tuple[int, int]:
        """Fail before the run when frames of this size are a model input the graph cannot run."""
        h, w = self.model_size(height, width)
        for axis, size in (("height", h), ("width", w)):
            problem = size_problem(self.est.graph, {axis: size})
            if problem:
                change = "a larger" if size < self.est.size_limits[axis]["min"] else "a smaller"
                how = f"pass {change} --resolution" if self.resolution else "pass --resolution N to change it"
                raise InputError(f"{width}x{height} frames become a {w}x{h} model input: {problem}; {how}")
        return h, w

    def preprocess(self, rgb: np.ndarray) -> tuple[np.ndarray, dict]:
        return processing.preprocess(rgb, self.pre)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, h, w) float32 -> (N, h', w') model output."""
        out = self.est.infer(batch)[self.est.depth_output]
        return out.reshape(out.shape[0], *out.shape[-2:])

    def to_depth(self, out: np.ndarray, meta: dict, size: tuple[int, int] | None = None) -> np.ndarray:
        """Model output -> float32 depth at ``size`` (h, w; default the frame's).

        Where no padding has to be cut away this is OpenCV's bicubic resize (A = -0.75, half-pixel
        centres: the same kernel as the exact numpy/torch one, several times faster); otherwise
        the bundle's own post-processing.
        """
        h, w = size if size is not None else meta["input_size"]
        if not self._fast_resize:
            return processing.postprocess(out, meta, self.post, target_size=(h, w))
        out = np.asarray(out, dtype=np.float32).reshape(out.shape[-2:])
        if out.shape == (h, w):
            return out
        return cv2().resize(out, (int(w), int(h)), interpolation=cv2().INTER_CUBIC)

    def warm_up(self, height: int, width: int) -> None:
        """Two runs at the frames' size, so the first frames' latency is not the session's set-up:
        backends prepare their fast path on a shape's second run (OpenVINO fp32 compiles the
        per-shape model, TensorRT captures its CUDA graph)."""
        tensor, _ = self.preprocess(np.zeros((height, width, 3), np.uint8))
        for _ in range(2):
            self.infer(tensor[None])
