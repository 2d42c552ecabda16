"""The PyTorch reference pipeline: what a transformers user runs, image by image.

processor (PIL backend) -> model -> ``post_process_depth_estimation`` at the input's size.
`depthrt check` compares the bundle against this; it is never used at run time.
"""

from __future__ import annotations

import numpy as np

from .weights import Weights


class ReferencePipeline:
    def __init__(self, spec, weights: Weights, model=None):
        self.description = (f"transformers {spec.architecture} + its image processor (PIL) + "
                            "post_process_depth_estimation")
        import torch
        from transformers import AutoImageProcessor

        self.torch = torch
        self.spec = spec
        self.model = model if model is not None else spec.load_model(weights)
        # backend="pil": the published processors' reference behaviour; the torchvision backend
        # resizes with other kernels and is not what the checkpoints were evaluated with.
        self.processor = AutoImageProcessor.from_pretrained(str(weights.path), backend="pil")

    def __call__(self, image: np.ndarray) -> dict:
        """{"depth": HxW float32 at the input's size}."""
        return {"depth": self._depth(image)}

    def _depth(self, image: np.ndarray) -> np.ndarray:
        torch = self.torch
        h, w = image.shape[:2]
        inputs = self.processor(images=image, return_tensors="pt")
        with torch.inference_mode():
            outputs = self.model(pixel_values=inputs["pixel_values"].float())
        if self.spec.family == "zoedepth":
            return self._zoedepth_post(outputs.predicted_depth, h, w)
        post = self.processor.post_process_depth_estimation(outputs, target_sizes=[(h, w)])
        return post[0]["predicted_depth"].reshape(h, w).float().numpy()

    def _zoedepth_post(self, depth, h: int, w: int) -> np.ndarray:
        """ZoeDepthImageProcessor.post_process_depth_estimation(source_sizes=target_sizes=[(h, w)]).

        The processor's own method calls torchvision even on its PIL backend, and torchvision has no
        build for our CPU torch; where it is missing we run the same steps: torchvision's
        ``resize(bicubic, antialias=False)`` on a float tensor is exactly ``F.interpolate(bicubic,
        align_corners=False)``. The padding removed is the processor's ``int(sqrt(size / 2) * 3)``.
        """
        try:
            import torchvision  # noqa: F401

            post = self.processor.post_process_depth_estimation(
                type("Out", (), {"predicted_depth": depth})(), source_sizes=[(h, w)], target_sizes=[(h, w)])
            return post[0]["predicted_depth"].reshape(h, w).float().numpy()
        except ImportError:
            pass
        import math

        F = self.torch.nn.functional
        d = depth[:1].unsqueeze(1).float()
        pad_h = pad_w = 0
        if self.processor.do_pad:
            pad_h, pad_w = int(math.sqrt(h / 2) * 3), int(math.sqrt(w / 2) * 3)
        d = F.interpolate(d, size=(h + 2 * pad_h, w + 2 * pad_w), mode="bicubic", align_corners=False)
        if pad_h > 0:
            d = d[:, :, pad_h:-pad_h, :]
        if pad_w > 0:
            d = d[:, :, :, pad_w:-pad_w]
        d = F.interpolate(d, size=(h, w), mode="bicubic", align_corners=False)
        return d.reshape(h, w).numpy()
