"""The engine cache: ``BUNDLE/engines/<key>/<graph>.plan`` + ``<graph>.plan.json``, and timing caches.

Writes are atomic (temporary file in the same folder, then ``os.replace``), and the metadata JSON
is written *after* the plan: the runtime only looks at plans whose metadata exists and records the
plan's size and hash, so a build killed at any point leaves nothing the runtime would load. One
file lock per key makes concurrent builds of the same engine build it once: the second waits,
then finds the finished plan. Timing caches (per TensorRT version and GPU, shared by all bundles)
are merged under their own lock so parallel builds add to the cache instead of overwriting it.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from depthrt.backends.trt import ENGINES_DIR, METADATA_FORMAT, METADATA_VERSION
from depthrt.errors import OutputError, disk_full
from depthrt.manifest import sha256_file

from .plan import BuildPlan

LOCK_TIMEOUT_S = 6 * 3600  # a large engine can take an hour to build; a stuck lock should still end


@contextlib.contextmanager
def file_lock(path: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """An inter-process lock on ``path`` (released when the holder exits, even if it is killed)."""
    from filelock import FileLock, Timeout  # portable (fcntl on POSIX, msvcrt on Windows)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create '{path.parent}': {exc.strerror}; choose a writable location") from None
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise OutputError(f"another build has held '{path}' for {timeout:.0f}s; if none is running, delete the "
                          "lock file and retry") from None
    try:
        yield
    finally:
        lock.release()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename; nothing half-written remains."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # the rename must not land before the bytes do (power loss)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; plans are shipped to other users and machines
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class EngineCache:
    """Where the engines of one bundle live."""

    def __init__(self, bundle: Path):
        self.bundle = Path(bundle)
        self.root = self.bundle / ENGINES_DIR

    def key_dir(self, plan: BuildPlan) -> Path:
        return self.root / plan.key

    def plan_path(self, plan: BuildPlan) -> Path:
        return self.key_dir(plan) / f"{plan.graph_name}.plan"

    def metadata_path(self, plan: BuildPlan) -> Path:
        return self.key_dir(plan) / f"{plan.graph_name}.plan.json"

    def lock(self, plan: BuildPlan):
        # Beside the key folder, not in it, so deleting a key folder never removes a held lock.
        return file_lock(self.root / f".{plan.key}.lock")

    def lookup(self, plan: BuildPlan) -> dict | None:
        """The metadata of a finished, intact plan for ``plan``, or None (then it must be built)."""
        meta_path, plan_path = self.metadata_path(plan), self.plan_path(plan)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if (meta.get("format") != METADATA_FORMAT or meta.get("key") != plan.key or not plan_path.is_file()
                or plan_path.stat().st_size != meta.get("plan_bytes")
                or sha256_file(plan_path) != meta.get("plan_sha256")):
            return None
        return meta

    def store(self, plan: BuildPlan, serialized: bytes, build_args: list[str], details: dict) -> dict:
        """Write the plan, then its metadata (the marker that the plan is complete); return the metadata."""
        folder = self.key_dir(plan)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.clean_partial(plan)
            self.metadata_path(plan).unlink(missing_ok=True)  # an old marker must not vouch for the new plan
            write_atomic(self.plan_path(plan), serialized)
            meta = {
                "format": METADATA_FORMAT,
                "format_version": METADATA_VERSION,
                "key": plan.key,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "plan_file": self.plan_path(plan).name,
                "plan_bytes": len(serialized),
                "plan_sha256": hashlib.sha256(serialized).hexdigest(),
                "build_args": build_args,
                "plan": plan.to_dict(),
                "build": details,
            }
            write_atomic(self.metadata_path(plan), (json.dumps(meta, indent=2) + "\n").encode())
        except OSError as exc:
            for done in (self.plan_path(plan), self.metadata_path(plan)):  # a plan without its marker is
                with contextlib.suppress(OSError):                        # never used: leave none behind
                    done.unlink()
            if disk_full(exc):
                raise OutputError(f"no space left on device while writing the engine to '{folder}'; free space "
                                  "and rerun (no plan was kept)") from None
            raise OutputError(f"cannot write the engine to '{folder}': {exc.strerror}; make the bundle "
                              "writable or copy it somewhere that is") from None
        return meta

    def clean_partial(self, plan: BuildPlan) -> None:
        """Remove temporary files a killed build left in this key's folder (we hold its lock)."""
        for tmp in self.key_dir(plan).glob(".*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()


def default_cache_dir() -> Path:
    """Per-user cache for timing caches: ``$DEPTHRT_CACHE_DIR`` or ``$XDG_CACHE_HOME/depthrt``."""
    if os.environ.get("DEPTHRT_CACHE_DIR"):
        return Path(os.environ["DEPTHRT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "depthrt"


def timing_cache_path(plan: BuildPlan, folder: Path | None = None) -> Path:
    """One timing cache per TensorRT version and GPU: tactic timings carry over between models."""
    env = plan.environment
    name = "-".join(re.sub(r"[^A-Za-z0-9.]+", "_", str(part)) for part in
                    (env.target, env.tensorrt_version, env.gpu_name, env.compute_capability))
    return (folder or default_cache_dir() / "timing") / f"{name}.cache"


def read_timing_cache(path: Path) -> bytes:
    with file_lock(path.with_name(path.name + ".lock")):
        return path.read_bytes() if path.is_file() else b""


def merge_timing_cache(path: Path, merge) -> None:
    """Under the cache's lock: ``merge(current_bytes) -> new_bytes``, then write atomically.

    Re-reading under the lock matters: another build may have saved its timings since we read.
    """
    with file_lock(path.with_name(path.name + ".lock")):
        current = path.read_bytes() if path.is_file() else b""
        updated = merge(current)
        if updated and updated != current:
            write_atomic(path, updated)
