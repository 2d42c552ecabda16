"""Load-time checks of what the manifest schema cannot say: its processing runs, its names exist.

The schema checks each field's type; it cannot check that the preprocessing steps, the output
names and the loop settings fit together. A manifest edited by hand (or damaged) could pass it and
then fail inside the first ``predict`` with a KeyError or TypeError. :func:`loading` turns such
faults into one :class:`~depthrt.errors.BundleError`, and :func:`probe` runs a feed-forward
bundle's pre- and post-processing once on a small image at load, so they surface there.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from .backends import first_line
from .errors import BundleError, InputError

# What code reading a malformed manifest raises (a missing key, a value of another type or range).
FAULTS = (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError, OverflowError)


def manifest_fault(bundle: str | os.PathLike, exc: BaseException) -> BundleError:
    """The user's error for a manifest whose fields do not fit together."""
    return BundleError(f"bundle '{bundle}': its manifest.json cannot be applied ({type(exc).__name__}: "
                       f"{first_line(exc, 160)}); it was edited or damaged: re-export the bundle "
                       "(depthrt export ... --force)")


@contextlib.contextmanager
def loading(bundle: str | os.PathLike):
    """Raise the faults of a malformed manifest inside this block as one BundleError."""
    try:
        yield
    except FAULTS as exc:
        raise manifest_fault(bundle, exc) from exc


def probe(estimator) -> None:
    """Preprocess a small image and postprocess a zero output of the graph's size with ``estimator``'s
    manifest (no inference), and check that the outputs it reads are outputs of its graph."""
    names = {out["name"] for out in estimator.graph["outputs"]}
    for name in (estimator.depth_output, estimator._sky_output):
        if name is not None and name not in names:
            raise KeyError(f"postprocessing reads output {name!r}, which the graph does not have "
                           f"(it has {', '.join(sorted(names))})")
    image = np.zeros((48, 64, 3), np.uint8)
    try:
        tensor, meta = estimator.preprocess(image)
    except InputError as exc:  # e.g. a resize target outside the graph's size range
        raise manifest_fault(estimator.bundle, exc) from exc
    if tensor.ndim != 3 or not all(tensor.shape):
        raise ValueError(f"preprocessing gives an input of shape {tensor.shape}")
    zeros = np.zeros(tensor.shape[1:], np.float32)
    outputs = {name: zeros for name in (estimator.depth_output, estimator._sky_output) if name is not None}
    pred = estimator.postprocess(outputs, meta)
    if pred.depth is None or pred.depth.shape != image.shape[:2]:
        raise ValueError(f"postprocessing gives a map of shape {getattr(pred.depth, 'shape', None)}, "
                         f"not the image's {image.shape[:2]}")
