"""``depthrt batch --ray``: the same job on Ray Data, for more images than one machine can do.

The driver lists the inputs (as the local run does) and hands Ray Data the pending jobs. Three
stages then stream through the cluster with Ray Data's bounded object store:

1. decode + preprocess, as CPU tasks (no model: ``Estimator(backend=None)``);
2. inference + postprocess, in a pool of actors that each hold one loaded estimator
   (``num_gpus`` per actor with a GPU backend, ``num_cpus`` on CPU nodes);
3. encode + write, as CPU tasks, with the same atomic writes as the local run.

Every stage calls the functions the local run calls (:mod:`depthrt.batch.core`), so the maps are
the same files. Ray retries a stage whose worker died (actors restart, tasks run again); a map is
published by rename and skipped when it exists, so a retried job never leaves a duplicate or a
half-written file, and the temporary files of killed writers are removed at the end.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import socket

import numpy as np

from ..backends import GPU_BACKENDS, usable_cores
from ..errors import BackendError, InputError
from ..manifest import batch_max
from .core import batch_limit, decode, describe, write_outputs
from .listing import Job

CONNECT_TIMEOUT_S = 5.0
OBJECT_STORE_ENV = "DEPTHRT_RAY_OBJECT_STORE_MB"  # a local instance's object store (default 256 MB)
_INSTALL = "pip install 'depthrt[ray]'"


def import_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports from our users' clusters
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise InputError(f"--ray needs Ray Data, which is not installed ({exc}): {_INSTALL}") from None
    return ray


def probe(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail within ``timeout`` seconds when nothing answers at ``address`` (Ray itself waits minutes)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--ray {address!r}: give HOST:PORT (the head node's GCS, e.g. 10.0.0.5:6379), "
                         "ray://HOST:10001, or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise BackendError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); check the address, and "
                           "that `ray start --head` runs there and its port is open") from None


def connect(ray, address: str) -> bool:
    """Join the cluster at ``address`` or start a local instance (``""``); True if we started Ray here."""
    if ray.is_initialized():  # e.g. a notebook or a test that set Ray up itself
        return False
    quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    if address:
        probe(address)
        try:
            ray.init(address=address, **quiet)
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
            raise BackendError(f"cannot join the Ray cluster at {address}: {describe(exc)}") from None
        return True
    store_mb = float(os.environ.get(OBJECT_STORE_ENV, 256))
    quiet["logging_level"] = logging.ERROR  # a local instance's start-up notes are not the user's business
    try:
        ray.init(num_cpus=usable_cores(), object_store_memory=int(store_mb * 2**20), **quiet)
    except Exception as exc:  # noqa: BLE001
        raise BackendError(f"cannot start a local Ray instance: {describe(exc)}") from None
    return True


# ----------------------------------------------------------------------- the stages (run on workers)
_PREPROCESSORS: dict = {}


def _job(row_source, row_relative, row_targets) -> Job:
    return Job(str(row_source), str(row_relative), tuple(tuple(t) for t in json.loads(str(row_targets))))


def decode_batch(batch: dict, bundle: str, manifest: dict) -> dict:
    """Stage 1: read and preprocess each image on a CPU worker; a bad file becomes an error row."""
    from ..estimator import Estimator

    est = _PREPROCESSORS.get(bundle)
    if est is None:  # one per worker process: it only reads the manifest
        est = _PREPROCESSORS[bundle] = Estimator(bundle, backend=None, manifest=manifest)
    tensors, metas, errors = [], [], []
    for source, relative, targets in zip(batch["source"], batch["relative"], batch["targets"]):
        try:
            tensor, meta = decode(_job(source, relative, targets), est)
            error = ""
        except Exception as exc:  # noqa: BLE001 - reported per file
            tensor, meta, error = np.zeros((3, 1, 1), np.float32), {}, describe(exc)
        tensors.append(tensor)
        metas.append(pickle.dumps(meta))
        errors.append(error)
    return {"source": batch["source"], "relative": batch["relative"], "targets": batch["targets"],
            "tensor": tensors, "meta": metas, "error": errors}


class InferActor:
    """Stage 2: one loaded estimator per actor; infers same-size inputs in batches and postprocesses."""

    def __init__(self, bundle: str, backend: str, precision: str, threads: int | None, batch_size: int | None):
        from ..estimator import Estimator

        # Small constructor arguments only (the manifest is read here): Ray keeps them to restart
        # a dead actor, and large ones would sit in the object store.
        self.est = Estimator(bundle, backend=backend, precision=precision, threads=threads)
        self.batch_size = batch_limit(self.est, batch_size)
        self.normals = self.est.kind == "normals"

    def __call__(self, batch: dict) -> dict:
        errors = [str(e) for e in batch["error"]]
        ok = [i for i, e in enumerate(errors) if not e]
        maps: list = [np.zeros((1, 1, 3) if self.normals else (1, 1), np.float32)] * len(errors)
        kinds = [self.est.kind] * len(errors)
        try:
            rows = self.est.infer_each([np.asarray(batch["tensor"][i], np.float32) for i in ok], self.batch_size)
        except Exception as exc:  # noqa: BLE001 - these files fail, the job goes on
            for i in ok:
                errors[i] = describe(exc)
            rows = []
        for i, row in zip(ok, rows):
            try:
                pred = self.est.postprocess(row, pickle.loads(batch["meta"][i]))
                maps[i] = pred.normals if pred.normals is not None else pred.depth
                kinds[i] = pred.kind
            except Exception as exc:  # noqa: BLE001
                errors[i] = describe(exc)
        return {"source": batch["source"], "relative": batch["relative"], "targets": batch["targets"],
                "map": maps, "kind": kinds, "error": errors}


def write_batch(batch: dict, force: bool, normals: bool, units: str) -> dict:
    """Stage 3: encode and write each image's maps (atomic, skipping maps already published)."""
    from ..estimator import Prediction

    errors = [str(e) for e in batch["error"]]
    for i, (source, relative, targets) in enumerate(zip(batch["source"], batch["relative"], batch["targets"])):
        if errors[i]:
            continue
        values = np.asarray(batch["map"][i], np.float32)
        pred = Prediction(depth=None if normals else values, normals=values if normals else None,
                          kind=str(batch["kind"][i]), units=units)
        try:
            write_outputs(_job(source, relative, targets), pred, force)
        except Exception as exc:  # noqa: BLE001
            errors[i] = describe(exc)
    return {"source": batch["source"], "relative": batch["relative"], "targets": batch["targets"], "error": errors}


# ----------------------------------------------------------------------- the driver
def run_ray(bundle, manifest: dict, jobs: list[Job], out, *, address: str, backend: str, precision: str,
            force: bool, batch_size: int | None, threads: int | None, workers: int | None,
            gpus_per_worker: float | None, cpus_per_worker: float | None, errors: list, progress, say) -> int:
    """Run ``jobs`` on Ray Data; appends (job, message) to ``errors``; returns how many were written."""
    from ..backends import resolve_backend

    ray = import_ray()
    resolved = backend if backend != "auto" else None
    started = connect(ray, address)
    try:
        resources = ray.cluster_resources()
        if resolved is None:  # auto: a GPU backend where the cluster has GPUs, else what this machine picks
            resolved = "ort-cuda" if resources.get("GPU", 0) > 0 else resolve_backend("auto")
        gpu = resolved in GPU_BACKENDS
        total_cpus = resources.get("CPU", 1)
        gpus = gpus_per_worker if gpus_per_worker is not None else (1.0 if gpu else 0.0)
        # A CPU worker gets up to 4 cores by default: more actors of fewer threads each hold a model copy.
        cpus = cpus_per_worker if cpus_per_worker is not None else \
            (1.0 if gpu else float(threads or min(4, max(1, int(total_cpus) - 1))))
        if workers is None:
            if gpus > 0:
                workers = max(1, int(resources.get("GPU", 0) // gpus))
            else:  # leave a CPU for decoding and writing
                workers = max(1, int((total_cpus - 1) // cpus))
        if workers < 1:
            raise InputError(f"--workers {workers}: give at least 1")
        if workers * cpus > total_cpus - 1:  # Ray Data would wait forever for a CPU to decode on
            raise InputError(f"{workers} worker(s) x {cpus:g} CPU(s) leave less than one of the cluster's "
                             f"{total_cpus:g} CPUs for decoding and writing; pass fewer --workers or "
                             "--cpus-per-worker")
        say(f"[depthrt] {len(jobs)} image(s) -> {out}: {manifest['model']['name']} on Ray "
            f"({int(resources.get('CPU', 0))} CPUs, {int(resources.get('GPU', 0))} GPUs): {workers} {resolved} "
            f"worker(s) with {cpus:g} CPU(s), {gpus:g} GPU(s) each")
        _quiet_ray_data(ray)
        items = [{"source": j.source, "relative": j.relative, "targets": json.dumps(j.targets)} for j in jobs]
        by_source = {j.source: j for j in jobs}
        # Blocks of 16 images: enough tasks to spread over every CPU of a cluster, and a worker that
        # dies costs Ray a retry of 16 images at most.
        blocks = max(1, -(-len(items) // 16))
        small = 4  # images per call of the CPU stages
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        ds = ds.map_batches(decode_batch, batch_size=small, num_cpus=0.5, fn_kwargs={"bundle": str(bundle),
                                                                                   "manifest": manifest})
        graph_max = batch_max(manifest["graphs"][0])
        per_call = max(small, batch_size or (graph_max if gpu else 1))  # rows an actor gets per call
        ds = ds.map_batches(InferActor, batch_size=per_call,
                            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus, num_gpus=gpus,
                            fn_constructor_kwargs={"bundle": str(bundle), "backend": resolved,
                                                   "precision": precision,
                                                   "threads": threads or max(1, int(cpus)), "batch_size": batch_size})
        ds = ds.map_batches(write_batch, batch_size=small, num_cpus=0.5,
                            fn_kwargs={"force": force, "normals": manifest["output"]["kind"] == "normals",
                                       "units": manifest["output"]["units"]})
        done = 0
        seen: set = set()
        for batch in ds.select_columns(["source", "error"]).iter_batches(batch_size=None, batch_format="numpy"):
            for source, error in zip(batch["source"], batch["error"]):
                source = str(source)
                if source in seen:  # a retried task's rows: count each image once
                    continue
                seen.add(source)
                if error:
                    errors.append((by_source[source], str(error)))
                else:
                    done += 1
            progress.update(done, len(errors))
        progress.close(done, len(errors))
        return done
    except Exception as exc:  # noqa: BLE001 - Ray's own failures (cluster lost, ...) as one line
        from ..errors import DepthrtError

        if isinstance(exc, DepthrtError):
            raise
        raise BackendError(f"the Ray job failed: {describe(exc)}") from None
    finally:
        if started:
            ray.shutdown()


def _quiet_ray_data(ray) -> None:
    """Our own progress line replaces Ray Data's bars and per-operator log lines."""
    ctx = ray.data.DataContext.get_current()
    for name in ("enable_progress_bars", "enable_operator_progress_bars", "print_on_execution_start"):
        if hasattr(ctx, name):
            setattr(ctx, name, False)
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # e.g. "progress bars disabled"
