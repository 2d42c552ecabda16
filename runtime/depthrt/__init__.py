"""depthrt: fast, checked inference for monocular depth and surface-normal models.

    >>> import depthrt
    >>> est = depthrt.load("bundles/depth-anything-v2-small", backend="auto")
    >>> pred = est.predict(rgb)          # HxWx3 uint8 -> pred.depth, HxW float32
    >>> pred.kind, pred.units

The runtime imports numpy, Pillow and ONNX Runtime only: never torch, transformers or onnx.
"""

from .errors import BackendError, BundleError, DepthrtError, InputError, OutputError, WeightsError
from .estimator import Estimator, Prediction, load

__version__ = "0.1.0"
__all__ = [
    "load", "Estimator", "Prediction", "DepthrtError", "InputError", "BundleError", "BackendError",
    "OutputError", "WeightsError", "__version__",
]
