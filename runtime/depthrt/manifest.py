"""Bundle manifests: read, validate and write ``manifest.json``.

A bundle is a directory holding ``manifest.json`` and the ONNX graphs it names. The manifest is
validated against ``manifest.schema.json`` (shipped beside this module) every time a bundle is
loaded, and every file it names must be present with the recorded size, so a half-copied or
hand-edited bundle fails here with a message instead of deep inside a backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import BundleError, OutputError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")


@lru_cache(maxsize=1)
def _validator():
    import jsonschema  # imported here: only bundle loading needs it

    schema = json.loads(SCHEMA_PATH.read_text())
    return jsonschema.Draft202012Validator(schema)


def validate_manifest(manifest: Any, where: str = "manifest") -> None:
    """Raise BundleError naming the first schema violation of ``manifest``."""
    if isinstance(manifest, dict) and manifest.get("schema_version") not in (None, SCHEMA_VERSION):
        raise BundleError(
            f"{where} has schema version {manifest.get('schema_version')!r}; this depthrt reads version "
            f"{SCHEMA_VERSION}: re-export the bundle with this depthrt (depthrt export ... --force)"
        )
    errors = sorted(_validator().iter_errors(manifest), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        at = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise BundleError(
            f"{where} is not a valid depthrt manifest: at {at}: {err.message}; "
            "it was edited or written by another tool: re-export the bundle (depthrt export ... --force)"
        )


def read_manifest(bundle: str | os.PathLike) -> dict:
    """Load and validate ``BUNDLE/manifest.json``, and check the files it names are all there."""
    root = Path(bundle)
    if not root.exists():
        raise BundleError(f"bundle '{root}' does not exist: create it with `depthrt export MODEL --out {root}`")
    if not root.is_dir():
        raise BundleError(f"bundle '{root}' is a file, not a bundle directory made by `depthrt export`")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(
            f"'{root}' holds no {MANIFEST_NAME}, so it is not a depthrt bundle: create one with `depthrt export`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(
            f"'{path}' is not valid JSON ({exc}); the file was edited or damaged: re-export the bundle"
        ) from None
    except RecursionError:  # nested deeper than Python's recursion limit: no manifest is
        raise BundleError(f"'{path}' is nested too deeply to be a manifest; the file was edited or damaged: "
                          "re-export the bundle") from None
    validate_manifest(manifest, where=str(path))
    for graph in manifest["graphs"]:
        for name, size in ((graph["file"], graph["bytes"]), (graph.get("external_data"), None)):
            if name is None:
                continue
            file = root / name
            if not file.is_file():
                raise BundleError(
                    f"bundle '{root}' is missing '{name}' (graph '{graph['name']}'): copy the whole bundle "
                    "directory, or re-export it"
                )
            if size is not None and file.stat().st_size != size:
                raise BundleError(
                    f"'{file}' is {file.stat().st_size} bytes but the manifest records {size}: the file was "
                    "truncated or replaced; copy the bundle again or re-export it"
                )
    return manifest


def batch_max(graph: dict) -> int:
    """The most images ``graph`` takes in one run: its dynamic batch range's max, 1 without a batch axis."""
    return int(graph["dynamic"].get("batch", {}).get("max", 1))


def size_limits(graph: dict) -> dict:
    """{dim: {"min", "max" (None: no bound but memory), "multiple_of"}} for the named dynamic dims of
    ``graph`` but ``batch``: the sizes it runs at on backends without optimisation profiles (ONNX
    Runtime, OpenVINO). From the manifest's ``limits``; bundles exported before it was recorded get
    their ``dynamic`` ranges, as they always did."""
    if "limits" in graph:
        return {dim: {"min": r["min"], "max": r.get("max"), "multiple_of": r.get("multiple_of", 1)}
                for dim, r in graph["limits"].items()}
    return {dim: {"min": r["min"], "max": r["max"], "multiple_of": r.get("multiple_of", 1)}
            for dim, r in graph["dynamic"].items() if dim != "batch"}


def size_problem(graph: dict, sizes: dict) -> str | None:
    """Why the sizes ``{dim: size}`` cannot run through ``graph`` (see :func:`size_limits`), or None."""
    limits = size_limits(graph)
    for dim, size in sizes.items():
        r = limits.get(dim)
        if r is None:
            continue
        if size < r["min"] or (r["max"] is not None and size > r["max"]):
            if "limits" not in graph:
                return (f"outside this bundle's supported {dim} range {r['min']}..{r['max']} (an older bundle: "
                        "re-export it with this depthrt to run any size the model can)")
            if size < r["min"]:
                return f"its {dim} {size} is below the smallest this model runs at, {r['min']}"
            return f"its {dim} {size} is above the largest this model runs at, {r['max']}"
    return None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_hashes(bundle: str | os.PathLike, manifest: dict) -> None:
    """Recompute every graph's SHA-256 (slow for large graphs; `depthrt check` runs it)."""
    for graph in manifest["graphs"]:
        actual = sha256_file(Path(bundle) / graph["file"])
        if actual != graph["sha256"]:
            raise BundleError(
                f"'{graph['file']}' in bundle '{bundle}' does not match the hash in its manifest: it was "
                "modified after export; re-export the bundle"
            )


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write '{path}': {exc.strerror}; choose a writable location") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a manifest is as readable as any file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
