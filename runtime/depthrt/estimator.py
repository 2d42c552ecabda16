"""The estimator: a loaded bundle that turns RGB images into depth maps."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from . import processing
from .backends import open_graph, resolve_backend
from .errors import InputError
from .manifest import batch_max, read_manifest, size_limits, size_problem


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


def image_list(image) -> tuple[bool, list]:
    """predict's first argument as (one image?, the images): an array, or a list or tuple of them."""
    if isinstance(image, np.ndarray):
        return True, [image]
    if isinstance(image, (list, tuple)):
        return False, list(image)
    raise InputError(f"image is a {type(image).__name__}; pass an HxWx3 uint8 RGB numpy array, or a list of them")


class Estimator:
    """A bundle loaded on one backend. Create it with :func:`depthrt.load`.

    One estimator may serve several threads at once (a server, a video pipeline): ``predict`` from
    any number of threads gives each the result a serial call would, bit for bit. ort-cpu runs the
    calls side by side; openvino too, with one infer request per concurrent call (memory for one set
    of activations per thread running at that moment; as in serial use, a shape's first call runs
    OpenVINO's any-shape model, within 1e-5 of the later ones); trt and ort-cuda take turns (one lock:
    the GPU runs one engine at a time anyway, so only their host-side copies do not overlap).
    """

    def __init__(self, bundle: str | os.PathLike, backend: str = "auto", precision: str = "fp32",
                 threads: int | None = None, manifest: dict | None = None):
        self.bundle = Path(bundle)
        self.manifest = manifest if manifest is not None else read_manifest(self.bundle)
        # backend=None: no graph is opened, only preprocess and postprocess run (the decode workers of
        # `depthrt batch --ray` need no model and may sit on machines without the inference backend).
        self.backend = resolve_backend(backend) if backend is not None else None
        self.precision = precision
        graphs = self.manifest["graphs"]
        self.graph = graphs[0]
        self.runner = None if backend is None else open_graph(self.bundle, self.graph, self.backend, precision,
                                                              threads=threads)
        self.kind = self.manifest["output"]["kind"]
        self.units = self.manifest["output"]["units"]
        post = self.manifest["postprocessing"]
        self._input = self.graph["inputs"][0]["name"]
        self._output = post.get("depth_output") or self.graph["outputs"][0]["name"]
        self.depth_output = self._output  # the name of the graph output that holds depth
        self._sky_output = post["sky"]["output"] if "sky" in post else None
        self._metric = post.get("metric")
        dyn = self.graph["dynamic"]
        self._ranges = {axis: dyn[axis] for axis in ("height", "width") if axis in dyn}
        self._limits = {axis: r for axis, r in size_limits(self.graph).items() if axis in ("height", "width")}
        self._max_batch = batch_max(self.graph)

    def __repr__(self) -> str:
        return f"Estimator({str(self.bundle)!r}, model={self.manifest['model']['name']!r}, backend={self.backend!r})"

    def predict(self, image: np.ndarray | Sequence[np.ndarray], processing_resolution: int | None = None,
                focal_px: tuple[float, float] | None = None, progress=None) -> Prediction | list[Prediction]:
        """Depth for one HxWx3 uint8 RGB image, or for a list of them (each at its own size).

        ``processing_resolution`` replaces the model's resize target (the box height for DPT,
        Depth Anything and ZoeDepth; the long side for Depth Anything 3); the result must stay
        in the bundle's size range. ``focal_px=(fx, fy)``, in pixels of the input image, turns a
        Depth Anything 3 metric model's output into metres. ``progress(done, total)`` is called after
        each finished image; an exception raised in it stops the run there (a cancel button).
        """
        single, images = image_list(image)
        if not images:
            return []
        if focal_px is not None and not self._metric:
            raise InputError("focal_px only applies to models whose metric scale depends on the focal length "
                             f"(Depth Anything 3 metric); this bundle is {self.manifest['model']['name']}")
        images = [_check_image(im, None if single else i) for i, im in enumerate(images)]
        prepared = [self._prepare(im, "image" if single else f"image {i}", processing_resolution)
                    for i, im in enumerate(images)]
        outputs = self.infer_each([tensor for tensor, _ in prepared])
        preds = []
        for out, (_, meta) in zip(outputs, prepared):
            preds.append(self.postprocess(out, meta, focal_px))
            if progress is not None:
                progress(len(preds), len(prepared))
        return preds[0] if single else preds

    # The three stages of predict, public so that pipelines (video, benchmarks, C++ hosts) can run
    # them in different threads or time them: preprocess -> infer -> postprocess.

    @property
    def size_ranges(self) -> dict:
        """The graph's ``height`` and ``width`` ranges ({min, opt, max, multiple_of}): what export checked
        and TensorRT's default profile; ONNX Runtime and OpenVINO run anything in :attr:`size_limits`."""
        return dict(self._ranges)

    @property
    def size_limits(self) -> dict:
        """The model input's smallest and largest ``height`` and ``width`` ({min, max, multiple_of}; max
        None: memory is the only bound). A TensorRT engine runs the sizes of its profile only."""
        return dict(self._limits)

    def preprocess(self, image: np.ndarray, processing_resolution: int | None = None) -> tuple[np.ndarray, dict]:
        """One HxWx3 uint8 image -> (float32 (3, h, w) model input, meta for :meth:`postprocess`)."""
        return self._prepare(_check_image(image, None), "image", processing_resolution)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph on an (N, 3, h, w) float32 batch; returns its outputs by name."""
        return self.runner.run({self._input: batch})

    def infer_each(self, tensors: Sequence[np.ndarray], batch_size: int | None = None) -> list[dict[str, np.ndarray]]:
        """Each (3, h, w) model input's graph outputs (its batch row); inputs of the same size run
        together, in batches of at most ``batch_size`` (default: the graph's batch range)."""
        limit = min(batch_size or self._max_batch, self._max_batch)
        outputs: list[dict | None] = [None] * len(tensors)
        by_shape: dict[tuple, list[int]] = {}
        for i, tensor in enumerate(tensors):
            by_shape.setdefault(tensor.shape, []).append(i)
        for indices in by_shape.values():
            for start in range(0, len(indices), limit):
                chunk = indices[start:start + limit]
                result = self.infer(np.stack([tensors[i] for i in chunk]))
                for row, i in enumerate(chunk):
                    outputs[i] = {name: value[row] for name, value in result.items()}
        return outputs  # type: ignore[return-value]

    def postprocess(self, outputs: dict[str, np.ndarray], meta: dict, focal_px=None) -> Prediction:
        """One image's graph outputs (batch row) and its meta -> the :class:`Prediction` at its size."""
        post = self.manifest["postprocessing"]
        if self._sky_output is None:
            depth = processing.postprocess(outputs[self._output], meta, post)
            return Prediction(depth=depth, kind=self.kind, units=self.units)
        from .sky import postprocess_sky

        depth, sky = postprocess_sky(outputs[self._output], outputs[self._sky_output],
                                     tuple(meta["input_size"]), post)
        kind, units = self.kind, self.units
        if self._metric:
            if focal_px is None:
                kind, units = "relative_depth", "not metric: pass focal_px=(fx, fy) for metres"
            else:
                depth = depth * np.float32(self._focal(focal_px, meta) / self._metric["focal_divisor"])
        return Prediction(depth=depth, kind=kind, units=units, sky=sky)

    @staticmethod
    def _focal(focal_px, meta: dict) -> float:
        """(fx' + fy') / 2 in processed-image pixels, from fx, fy in input-image pixels."""
        try:
            fx, fy = (float(v) for v in focal_px)
        except (TypeError, ValueError):
            raise InputError(f"focal_px must be (fx, fy) in pixels, got {focal_px!r}") from None
        if not (0 < fx < math.inf and 0 < fy < math.inf):  # inf would make every depth inf
            raise InputError(f"focal_px must be positive and finite, got {focal_px!r}")
        (big_h, big_w), (h, w) = meta["input_size"], meta["model_size"]
        return 0.5 * (fx * w / big_w + fy * h / big_h)

    def _prepare(self, image: np.ndarray, where: str, resolution: int | None = None):
        h, w = image.shape[:2]
        patch = max(r.get("multiple_of", 1) for r in self._ranges.values()) if self._ranges else 1
        if h < patch or w < patch:
            raise InputError(
                f"{where} is {w}x{h} pixels, smaller than one {patch}-pixel patch of this model; "
                f"pass an image of at least {patch}x{patch}"
            )
        tensor, meta = processing.preprocess(image, self.manifest["preprocessing"], resolution)
        problem = size_problem(self.graph, {"height": tensor.shape[1], "width": tensor.shape[2]})
        if problem:
            raise InputError(f"{where} ({w}x{h}) becomes {tensor.shape[2]}x{tensor.shape[1]} after resizing: "
                             f"{problem}; crop it to a less extreme aspect ratio or change processing_resolution")
        return tensor, meta


DIFFUSION_FAMILIES = ("marigold", "lotus", "lbm")


def load(bundle: str | os.PathLike, backend: str = "auto", precision: str = "fp32",
         threads: int | None = None):
    """Load a bundle made by ``depthrt export`` on a backend (``auto``, ``ort-cpu``, ``ort-cuda``, ...).

    Feed-forward families give an :class:`Estimator`; latent-diffusion families (Marigold, Lotus,
    LBM) a ``depthrt.diffusion`` estimator with the same ``predict`` plus step/ensemble options.
    Both may be shared by several threads (see :class:`Estimator`).
    """
    from .bundle_check import loading, probe

    manifest = read_manifest(bundle)
    backend = resolve_backend(backend)  # an unknown or missing backend is the user's error, not the bundle's
    with loading(bundle):  # fields that pass the schema but do not fit together: one BundleError
        if manifest["model"]["family"] in DIFFUSION_FAMILIES:
            from .diffusion import load_diffusion

            return load_diffusion(bundle, manifest, backend, precision, threads)
        estimator = Estimator(bundle, backend=backend, precision=precision, threads=threads, manifest=manifest)
        probe(estimator)
    return estimator
