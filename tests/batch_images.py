"""Folders of small images for the `depthrt batch` tests (local and Ray), with a few bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from depthrt.samples import synthetic_image

SIZES = ((48, 64), (64, 48), (56, 56))  # (h, w): a few same-size groups, so batches form
BAD = {"d1/s0/corrupt.jpg": b"this is not a JPEG", "d3/empty.png": b""}


def make_tree(root: Path, count: int = 200, bad: bool = True) -> list[Path]:
    """``count`` images spread over nested folders (png and jpg), plus the BAD files; returns the good ones."""
    paths = []
    for i in range(count):
        folder = root / f"d{i % 5}" / (f"s{i % 2}" if i % 3 else "")
        folder.mkdir(parents=True, exist_ok=True)
        h, w = SIZES[i % len(SIZES)]
        path = folder / f"img{i:03d}.{'png' if i % 4 else 'jpg'}"
        Image.fromarray(synthetic_image(h, w, seed=i)).save(path)
        paths.append(path)
    if bad:
        for rel, data in BAD.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
    return paths


def expected_outputs(root: Path, images: list[Path], out: Path, suffixes=(".depth.png", ".color.png")) -> set[Path]:
    """The maps the default --save writes for ``images``, mirrored from ``root`` into ``out``."""
    return {out / p.relative_to(root).parent / (p.stem + s) for p in images for s in suffixes}


def files_under(out: Path) -> dict[str, bytes]:
    """Every file below ``out`` (temporary ones included) by relative path, with its bytes."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


_REFERENCE: dict = {}


def reference_run(tmp_path_factory, bundle: Path) -> tuple[Path, Path, list[Path], dict[str, bytes]]:
    """The 200-image tree and one uninterrupted local run over it, made once per test session:
    (input root, output folder, good images, output files)."""
    from depthrt import batch

    if bundle not in _REFERENCE:
        root = tmp_path_factory.mktemp("batch-in")
        images = make_tree(root)
        out = tmp_path_factory.mktemp("batch-ref") / "out"
        summary = batch.run(bundle, str(root), out, backend="ort-cpu", batch_size=4, progress=False)
        assert (summary.done, summary.failed) == (len(images), len(BAD))
        _REFERENCE[bundle] = (root, out, images, files_under(out))
    return _REFERENCE[bundle]


@pytest.fixture()
def bundle(tiny_bundle):
    """The tiny Depth Anything V2 bundle both batch test modules run (import this fixture there)."""
    return tiny_bundle("depth-anything-v2-small")[0]


@pytest.fixture()
def reference(tmp_path_factory, bundle):
    """:func:`reference_run` for :func:`bundle`."""
    return reference_run(tmp_path_factory, bundle)
