"""The C++-facing surface: what a host program that embeds Python calls, and nothing more.

A C++ application (pybind11's embedding API, or the CPython C API) starts the interpreter,
loads a bundle once with :func:`load`, and then, per frame, hands :func:`predict_depth` a NumPy
array that lies over its own memory (no copy) and borrows the depth map it gets back. Every
function here takes and returns plain NumPy arrays, paths and strings, so the C++ side needs no
knowledge of :class:`depthrt.Prediction` or of the backends. See ``docs/embedding.md`` for the
threading, GIL, lifetime and error contract, and ``scripts/cpp/depthrt_embed.cpp`` for a host.

Contract in short:

* Call everything with the GIL held, from any thread. Serialise calls into one
  :class:`~depthrt.Estimator` (its backend runner may reuse buffers per shape), or load one per
  thread.
* The input array is only read, and no reference to it is kept once ``predict_depth`` returns,
  so a host may borrow its frame buffer for the duration of the call.
* The returned depth is a new C-contiguous float32 (H, W) array that nothing else references:
  the host may keep it (and hence the buffer) as long as it holds the object.
* Failures raise :class:`~depthrt.DepthrtError` subclasses whose ``str()`` is one line that
  says what to do; a host should show exactly that text.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .errors import InputError, OutputError
from .estimator import Estimator, load
from .imageio import _atomic_write, read_image, write_depth_png16, write_npy

__all__ = ["load", "read_image", "predict_depth", "predict_into", "output_format", "write_depth",
           "time_predict", "OUTPUT_FORMATS"]

#: File extensions :func:`write_depth` understands, and what each holds.
OUTPUT_FORMATS = {
    ".png": "16-bit greyscale PNG, min-max normalised (for viewing; not the raw values)",
    ".npy": "raw float32 values as a NumPy .npy file (shape and dtype in its header)",
    ".f32": "raw float32 values, little-endian, row-major (H, W), no header",
}


def predict_depth(estimator: Estimator, image: np.ndarray) -> np.ndarray:
    """Depth for one HxWx3 uint8 RGB image, as a C-contiguous float32 (H, W) array.

    ``image`` may be a read-only view over a host's buffer (any strides NumPy can describe).
    It is not written to and not referenced after this returns. The result is a fresh array
    owned by the caller alone.
    """
    if not isinstance(image, np.ndarray):
        raise InputError(f"image is a {type(image).__name__}; pass an HxWx3 uint8 RGB numpy array")
    pred = estimator.predict(image)
    if pred.depth is None:
        raise InputError(f"this bundle predicts {pred.kind}, not depth; predict_depth cannot return it")
    depth = pred.depth
    if not (depth.dtype == np.float32 and depth.flags.c_contiguous):  # postprocess already ensures it
        depth = np.ascontiguousarray(depth, dtype=np.float32)
    return depth


def predict_into(estimator: Estimator, image: np.ndarray, out: np.ndarray) -> None:
    """Like :func:`predict_depth`, but writes the depth into ``out``, a float32 (H, W) array
    (typically a view over a host's buffer), so the host owns the result outright.

    Costs one copy of the depth map; the host's buffer must be writable and of the image's size.
    """
    depth = predict_depth(estimator, image)
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != depth.shape:
        got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise InputError(f"output buffer is {got}; it must be float32 of shape {depth.shape} (the image's HxW)")
    if not out.flags.writeable:
        raise InputError("output buffer is read-only; pass a writable float32 buffer")
    np.copyto(out, depth)


def output_format(path: str | os.PathLike, *, overwrite: bool = True) -> str:
    """The format :func:`write_depth` will use for ``path`` (its extension), or OutputError.

    A host calls this before the slow work (with ``overwrite=False`` it also refuses an
    existing file), so a wrong ``OUT`` fails at once.
    """
    name = os.fspath(path)
    ext = Path(name).suffix.lower()
    if ext not in OUTPUT_FORMATS:
        raise OutputError(f"cannot write '{name}': unknown extension '{ext}'; "
                          f"use one of {', '.join(OUTPUT_FORMATS)}")
    if not overwrite and os.path.lexists(name):
        raise OutputError(f"refusing to overwrite existing file '{name}'; "
                          "pass --force or choose another --out")
    return ext


def write_depth(path: str | os.PathLike, depth: np.ndarray, *, overwrite: bool = False) -> Path:
    """Write a depth map by ``path``'s extension (see :data:`OUTPUT_FORMATS`).

    Atomic, and refuses to replace an existing file unless ``overwrite``, like every depthrt
    writer. ``.npy`` and ``.f32`` hold the values bit for bit.
    """
    ext = output_format(path)
    if ext == ".png":
        return write_depth_png16(path, depth, overwrite=overwrite)
    if ext == ".npy":
        return write_npy(path, depth, overwrite=overwrite)
    raw = np.ascontiguousarray(np.asarray(depth, dtype="<f4"))
    return _atomic_write(path, lambda f: f.write(raw.tobytes()), overwrite)


def time_predict(estimator: Estimator, image: np.ndarray, repeat: int = 1) -> list[float]:
    """Seconds taken by each of ``repeat`` calls of ``estimator.predict(image)``, timed in Python.

    The Python-side reference a host compares its own per-frame cost against (same process,
    same estimator, same image), so the difference is the embedding's overhead.
    """
    times = []
    for _ in range(max(1, int(repeat))):
        start = time.perf_counter()
        estimator.predict(image)
        times.append(time.perf_counter() - start)
    return times
