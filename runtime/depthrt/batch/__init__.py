"""Depth for whole folders of images (``depthrt batch``): on this machine, or on a Ray cluster.

    >>> from depthrt import batch
    >>> summary = batch.run("bundles/da2s", "photos/", "depth/")          # this machine
    >>> summary = batch.run("bundles/da2s", "photos/", "depth/", ray="")  # a local Ray instance
    >>> summary.done, summary.skipped, summary.failed

The output tree mirrors the input tree; maps are named and encoded as ``depthrt predict --save``
writes them. A run is resumable (finished images are skipped) and a bad file never stops it: it
is listed in ``OUT/errors.jsonl`` instead. Ray is imported only for ``ray=...``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .listing import Job, check_output_place, list_inputs, make_jobs, outside, remove_stale_temps

__all__ = ["run", "Summary", "ERRORS_FILE"]

ERRORS_FILE = "errors.jsonl"


@dataclass
class Summary:
    """What a run did: images written (``done``), already complete (``skipped``), failed, and time."""

    total: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors_file: Path | None = None
    errors: list = field(default_factory=list)  # (input path, message)

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


def run(bundle, input: str, out, *, backend: str = "auto", precision: str = "fp32", save: str | None = None,
        force: bool = False, batch_size: int | None = None, threads: int | None = None, decoders: int = 2,
        writers: int = 2, ray: str | None = None, workers: int | None = None, gpus_per_worker: float | None = None,
        cpus_per_worker: float | None = None, progress: bool = True, log=None) -> Summary:
    """Run a bundle over every image of ``input`` (folder, glob or text file of paths) into ``out``.

    ``ray``: None runs here; ``""`` starts a local Ray instance; an address (``host:6379``,
    ``ray://host:10001``, ``auto``) joins that cluster. ``workers`` is the number of inference
    actors there. Everything the user got wrong fails before the model is loaded.
    """
    from .. import imageio
    from ..estimator import DIFFUSION_FAMILIES
    from ..manifest import read_manifest
    from ..outputs import parse_save
    from ..progress import Counter

    say = log or (lambda message: print(message, file=sys.stderr))
    if ray is None and (workers, gpus_per_worker, cpus_per_worker) != (None, None, None):
        raise InputError("--workers, --gpus-per-worker and --cpus-per-worker size the Ray job: add --ray")
    manifest = read_manifest(bundle)
    if manifest["model"]["family"] in DIFFUSION_FAMILIES:
        raise InputError(f"depthrt batch runs feed-forward models; {manifest['model']['name']} is a diffusion model: "
                         "run `depthrt predict` over its images instead")
    kinds = parse_save(save, manifest["output"]["kind"] == "normals")
    root, files = list_inputs(str(input))
    out = Path(out)
    if Path(input).is_dir():  # the next run would read the maps back as images
        check_output_place(root, out)
    else:  # a glob or a list: never take earlier maps as inputs
        files = outside(files, out)
        if not files:
            raise InputError(f"every image '{input}' names is inside --out '{out}'; give the input images")
    imageio.ensure_output_dir(out)
    stale = remove_stale_temps(out)
    if stale:
        say(f"[depthrt] removed {stale} unfinished temporary file(s) left by an interrupted run")
    jobs = make_jobs(root, files, out, kinds, manifest["output"]["kind"] == "normals")
    pending = jobs if force else [job for job in jobs if job.missing()]
    summary = Summary(total=len(jobs), skipped=len(jobs) - len(pending))
    if summary.skipped:
        say(f"[depthrt] {summary.skipped} of {len(jobs)} image(s) already done in {out}: skipping them")
    start = time.perf_counter()
    errors: list = []
    complete = False
    try:
        if pending:
            summary.done = _run_pending(bundle, manifest, pending, out, errors, backend=backend, precision=precision,
                                        force=force, batch_size=batch_size, threads=threads, decoders=decoders,
                                        writers=writers, ray=ray, workers=workers, gpus_per_worker=gpus_per_worker,
                                        cpus_per_worker=cpus_per_worker, progress=Counter(len(pending), enabled=progress),
                                        say=say)
        complete = True
    finally:
        _finish(summary, errors, out, start, complete)
    return summary


def _run_pending(bundle, manifest, pending, out, errors, *, backend, precision, force, batch_size, threads, decoders,
                 writers, ray, workers, gpus_per_worker, cpus_per_worker, progress, say) -> int:
    """Run the pending jobs here or on Ray; appends (job, message) to ``errors``; returns how many were written."""
    from ..estimator import Estimator

    if ray is not None:
        from .raymode import run_ray

        try:
            return run_ray(bundle, manifest, pending, out, address=ray, backend=backend, precision=precision,
                           force=force, batch_size=batch_size, threads=threads, workers=workers,
                           gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, errors=errors,
                           progress=progress, say=say)
        finally:
            remove_stale_temps(out)  # of workers Ray killed and retried
    from .core import batch_limit
    from .local import LocalRun

    est = Estimator(bundle, backend=backend, precision=precision, threads=threads, manifest=manifest)
    size = batch_limit(est, batch_size)
    say(f"[depthrt] {len(pending)} image(s) -> {out}: {manifest['model']['name']} on {est.backend} "
        f"({precision}), batches of up to {size}")
    runner = LocalRun(est, pending, force, size, decoders=decoders, writers=writers, progress=progress)
    try:
        runner.run()
    finally:  # an interrupted run still reports what it did and what failed
        errors.extend(runner.errors)
    return runner.done


def _finish(summary: Summary, errors: list[tuple[Job, str]], out: Path, start: float, complete: bool) -> None:
    """Record the failures of this run in OUT/errors.jsonl, replacing the last run's list; a complete
    run without failures removes it (a run that stopped early leaves it)."""
    from ..imageio import _atomic_write

    summary.seconds = time.perf_counter() - start
    summary.failed = len(errors)
    summary.errors = [(job.source, message) for job, message in errors]
    path = out / ERRORS_FILE
    if errors:
        text = "".join(json.dumps({"path": job.source, "relative": job.relative, "error": message}) + "\n"
                       for job, message in sorted(errors, key=lambda e: e[0].relative))
        _atomic_write(path, lambda f: f.write(text.encode()), overwrite=True)
        summary.errors_file = path
    elif complete and path.exists():
        os.unlink(path)
