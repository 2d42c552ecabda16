"""Fuzzing bundle manifests: random mutations of a valid manifest load and predict, or fail with one clear error.

Each case copies a tiny exported bundle (the graph is hard-linked), applies 1-4 random mutations to its
manifest.json (drop a key, replace a value with another JSON value of any type, add a key, change
the text), then loads it on ort-cpu and predicts one small image. The outcome must be a BundleError
(or another depthrt error) with one line, or a depth map of the image's size: never a KeyError,
TypeError or other traceback from deep inside the runtime.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from fuzzing import bounded, clear_error, examples, fuzz_summary, record  # noqa: F401  (fixture)
from hypothesis import example, given
from hypothesis import strategies as st

import depthrt
from depthrt.errors import BundleError, DepthrtError

IMAGE = np.random.default_rng(0).integers(0, 256, (37, 51, 3), dtype=np.uint8)

json_scalars = (st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.sampled_from([0, 1, -1, 2**31, 2**63])
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)


def paths(node, prefix=()):
    """Every (path, value) in a JSON tree, the root included."""
    yield prefix, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield from paths(value, prefix + (key,))


@st.composite
def mutated(draw, manifest: dict):
    """A deep copy of ``manifest`` with 1-4 random mutations."""
    doc = json.loads(json.dumps(manifest))
    for _ in range(draw(st.integers(1, 4))):
        places = [p for p, _ in paths(doc) if p]
        path = draw(st.sampled_from(places))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        key, action = path[-1], draw(st.sampled_from(["drop", "replace", "replace", "nudge", "add"]))
        if action == "drop":
            del parent[key]
        elif action == "replace":
            parent[key] = draw(json_values)
        elif action == "nudge" and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
            parent[key] = draw(st.sampled_from([0, -1, 1, -parent[key], parent[key] * 1000, parent[key] + 1,
                                                math.nan, math.inf, 0.5]))
        elif action == "add" and isinstance(parent[key], dict):
            parent[key][draw(st.text(max_size=8))] = draw(json_values)
        else:
            parent[key] = draw(json_scalars)
    return doc


def copy_of(bundle: Path) -> Path:
    """The bundle's files hard-linked into a fresh folder (the manifest is rewritten per case)."""
    root = Path(tempfile.mkdtemp(prefix="depthrt-fuzz-manifest-"))
    for file in bundle.iterdir():
        if file.name != "manifest.json":
            os.link(file, root / file.name)
    return root


def load_and_predict(bundle: Path, test: str) -> None:
    try:
        with bounded():
            est = depthrt.load(bundle, backend="ort-cpu")
            pred = est.predict(IMAGE, **({"num_inference_steps": 1} if hasattr(est, "loop") else {}))
    except DepthrtError as exc:
        clear_error(test, exc)
        return
    out = pred.depth if pred.depth is not None else pred.normals
    assert out.shape[:2] == IMAGE.shape[:2] and out.dtype == np.float32
    record(test, "result")


@pytest.mark.parametrize("name", ["depth-anything-v2-small", "marigold-normals-v1-1"])
def test_mutated_manifests_load_or_fail_clearly(tiny_bundle, name):
    bundle, manifest = tiny_bundle(name)
    work = copy_of(bundle)

    @examples(40 if name.startswith("depth") else 15)
    @given(mutated(manifest))
    def check(doc):
        (work / "manifest.json").write_text(json.dumps(doc))
        load_and_predict(work, f"manifest mutations: {name}")

    try:
        check()
    finally:
        shutil.rmtree(work, ignore_errors=True)


@examples(20)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode)
       | st.sampled_from([b"[" * 100_000, b'{"a":' * 50_000, b"NaN", b"{}", b"[]", b"\xff\xfe{}"]))
@example(b"[" * 100_000)  # regression: nesting deeper than Python's recursion limit (was a RecursionError)
def test_manifest_json_of_any_bytes_fails_clearly(tiny_bundle, data):
    bundle = tiny_bundle("depth-anything-v2-small")[0]
    work = copy_of(bundle)
    try:
        (work / "manifest.json").write_bytes(data)
        load_and_predict(work, "manifest.json of random bytes")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def edit(manifest: dict, path: tuple, value=KeyError) -> dict:
    """A copy of ``manifest`` with the field at ``path`` set to ``value`` (removed when KeyError)."""
    doc = json.loads(json.dumps(manifest))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if value is KeyError:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


# Regressions the fuzzer found: each passed the schema, loaded, then failed inside the first predict
# with a KeyError / TypeError / IndexError traceback. Now each is one BundleError at load.
@pytest.mark.parametrize("name, path, value", [
    ("depth-anything-v2-small", ("preprocessing", "normalize", "std"), KeyError),
    ("depth-anything-v2-small", ("preprocessing", "normalize", "mean"), [0.5, 0.5]),
    ("depth-anything-v2-small", ("preprocessing", "order"), [["resize"]]),
    ("depth-anything-v2-small", ("preprocessing", "rescale", "factor"), "x"),
    ("depth-anything-v2-small", ("postprocessing", "depth_output"), "no_such_output"),
    ("marigold-normals-v1-1", ("loop", "scheduler", "alphas_cumprod"), [0.5] * 10),
])
def test_manifest_fields_that_do_not_fit_together_fail_at_load(tiny_bundle, name, path, value):
    bundle, manifest = tiny_bundle(name)
    work = copy_of(bundle)
    try:
        (work / "manifest.json").write_text(json.dumps(edit(manifest, path, value)))
        with pytest.raises(BundleError) as info:
            depthrt.load(work, backend="ort-cpu")
        assert "re-export the bundle" in str(info.value) and "\n" not in str(info.value)
    finally:
        shutil.rmtree(work, ignore_errors=True)
