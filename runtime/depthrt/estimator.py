"""The estimator: a loaded bundle that turns RGB images into depth maps."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from . import processing
from .backends import open_graph, resolve_backend
from .errors import InputError
from .manifest import read_manifest


@dataclass
class Prediction:
    """One image's result, at the input image's size.

    ``depth`` is float32 HxW; ``kind`` says what it means (``relative_inverse_depth``: larger is
    nearer, no units; ``metric_depth``: metres; ``relative_depth``: larger is farther) and
    ``units`` its units.
    """

    depth: np.ndarray | None
    kind: str
    units: str
    normals: np.ndarray | None = None
    sky: np.ndarray | None = None
    extras: dict = field(default_factory=dict)


def _check_image(image, index: int | None) -> np.ndarray:
    where = "image" if index is None else f"image {index}"
    if not isinstance(image, np.ndarray):
        raise InputError(f"{where} is a {type(image).__name__}; pass an HxWx3 uint8 RGB numpy array")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(
            f"{where} has shape {image.shape}; pass an HxWx3 RGB array (convert greyscale or RGBA first, "
            "or read files with depthrt.imageio.read_image)"
        )
    if image.dtype != np.uint8:
        raise InputError(f"{where} has dtype {image.dtype}; pass uint8 RGB values 0..255")
    return image


class Estimator:
    """A bundle loaded on one backend. Create it with :func:`depthrt.load`."""

    def __init__(self, bundle: str | os.PathLike, backend: str = "auto", precision: str = "fp32",
                 threads: int | None = None):
        self.bundle = Path(bundle)
        self.manifest = read_manifest(self.bundle)
        self.backend = resolve_backend(backend)
        self.precision = precision
        graphs = self.manifest["graphs"]
        self.graph = graphs[0]
        self.runner = open_graph(self.bundle, self.graph, self.backend, precision, threads=threads)
        self.kind = self.manifest["output"]["kind"]
        self.units = self.manifest["output"]["units"]
        self._input = self.graph["inputs"][0]["name"]
        self._output = self.graph["outputs"][0]["name"]
        dyn = self.graph["dynamic"]
        self._ranges = {axis: dyn[axis] for axis in ("height", "width") if axis in dyn}
        self._max_batch = dyn.get("batch", {}).get("max", 1)

    def __repr__(self) -> str:
        return f"Estimator({str(self.bundle)!r}, model={self.manifest['model']['name']!r}, backend={self.backend!r})"

    def predict(self, image: np.ndarray | Sequence[np.ndarray]) -> Prediction | list[Prediction]:
        """Depth for one HxWx3 uint8 RGB image, or for a list of them (each at its own size)."""
        single = isinstance(image, np.ndarray)
        images = [image] if single else list(image)
        if not images:
            return []
        images = [_check_image(im, None if single else i) for i, im in enumerate(images)]
        prepared = [self._preprocess(im, None if single else i) for im, i in zip(images, range(len(images)))]
        outputs: list[np.ndarray | None] = [None] * len(images)
        # Images that preprocess to the same size run as one batch (up to the graph's batch range).
        by_shape: dict[tuple, list[int]] = {}
        for i, (tensor, _) in enumerate(prepared):
            by_shape.setdefault(tensor.shape, []).append(i)
        for indices in by_shape.values():
            for start in range(0, len(indices), self._max_batch):
                chunk = indices[start:start + self._max_batch]
                batch = np.stack([prepared[i][0] for i in chunk])
                result = self.runner.run({self._input: batch})[self._output]
                for row, i in enumerate(chunk):
                    outputs[i] = result[row]
        preds = [
            Prediction(
                depth=processing.postprocess(out, meta, self.manifest["postprocessing"]),
                kind=self.kind, units=self.units,
            )
            for out, (_, meta) in zip(outputs, prepared)
        ]
        return preds[0] if single else preds

    def _preprocess(self, image: np.ndarray, index: int | None):
        where = "image" if index is None else f"image {index}"
        h, w = image.shape[:2]
        patch = max(r.get("multiple_of", 1) for r in self._ranges.values()) if self._ranges else 1
        if h < patch or w < patch:
            raise InputError(
                f"{where} is {w}x{h} pixels, smaller than one {patch}-pixel patch of this model; "
                f"pass an image of at least {patch}x{patch}"
            )
        tensor, meta = processing.preprocess(image, self.manifest["preprocessing"])
        for axis, size in zip(("height", "width"), tensor.shape[1:]):
            r = self._ranges.get(axis)
            if r and not r["min"] <= size <= r["max"]:
                raise InputError(
                    f"{where} ({w}x{h}) becomes {tensor.shape[2]}x{tensor.shape[1]} after resizing, outside "
                    f"this bundle's supported {axis} range {r['min']}..{r['max']}; crop it to a less "
                    "extreme aspect ratio"
                )
        return tensor, meta


def load(bundle: str | os.PathLike, backend: str = "auto", precision: str = "fp32",
         threads: int | None = None) -> Estimator:
    """Load a bundle made by ``depthrt export`` on a backend (``auto``, ``ort-cpu``, ``ort-cuda``, ...)."""
    return Estimator(bundle, backend=backend, precision=precision, threads=threads)
