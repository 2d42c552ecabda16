"""The per-image steps both batch modes run, over the Estimator's public stages: decode and
preprocess one job, infer a list of model inputs in same-size batches, postprocess and write one
job's maps. Local threads and Ray workers call the same functions, so their files are the same."""

from __future__ import annotations

import os

import numpy as np

from .. import imageio
from ..backends import first_line
from ..errors import DepthrtError, OutputError
from ..manifest import batch_max
from ..outputs import write_map
from .listing import Job


def describe(exc: BaseException) -> str:
    """One line for errors.jsonl: our own errors as they are, anything else with its type."""
    if isinstance(exc, DepthrtError):
        return first_line(exc, 1000)
    return f"{type(exc).__name__}: {first_line(exc)}"


def decode(job: Job, est) -> tuple[np.ndarray, dict]:
    """Read one input and make its model input: (float32 (3, h, w), meta for postprocess)."""
    return est.preprocess(imageio.read_image(job.source))


def write_outputs(job: Job, pred, force: bool) -> int:
    """Write a job's maps; returns how many files were written.

    Without ``force`` a map that exists already is complete (maps are published by rename) and
    stays: written by an earlier run, or by this job's first try when Ray retried it.
    """
    written = 0
    for kind, path in job.targets:
        if not force and os.path.exists(path):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            write_map(kind, path, pred, overwrite=force)
        except OutputError:
            if not force and os.path.exists(path):  # another try of this job published it meanwhile
                continue
            raise
        written += 1
    return written


def batch_limit(est, requested: int | None) -> int:
    """The batch size: the user's, within the graph's batch range (default: 1 on the CPU backends,
    where batching gains little and OpenVINO's results change in the last bits with the batch size;
    the graph's maximum on the GPU)."""
    top = max(1, batch_max(est.graph))
    if requested is None:
        from ..backends import GPU_BACKENDS

        return top if est.backend in GPU_BACKENDS else 1
    from ..errors import InputError

    if requested < 1 or requested > top:
        raise InputError(f"--batch-size {requested}: this bundle's graph takes batches of 1..{top}")
    return requested
