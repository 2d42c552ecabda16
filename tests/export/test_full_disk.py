"""A disk that fills up during `depthrt export`: one clear line, no partial bundle, nothing of the user's lost."""

from __future__ import annotations

import errno
import os

import pytest
from conftest import assert_clean_error, run_cli

from depthrt.errors import OutputError
from depthrt_export import exporter


def old_bundle(folder):
    """A small existing bundle at --out (what --force would replace): its files, to compare afterwards."""
    folder.mkdir()
    (folder / "manifest.json").write_text('{"schema_version": 1}\n')
    (folder / "model.onnx").write_bytes(b"old graph" * 100)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_export_onto_a_full_disk_says_so_and_leaves_nothing(tiny_checkpoint, small_filesystem):
    disk = small_filesystem(400)  # the tiny graph alone is about 800 KB
    result = run_cli("export", "depth-anything-v2-small", "--weights", str(tiny_checkpoint("depth-anything-v2")),
                     "--out", str(disk / "bundle"), "--no-check")
    assert_clean_error(result, "no space left on device while writing bundle", "free space and rerun")
    assert os.listdir(disk) == []  # no bundle, no staging folder


def test_full_disk_during_export_with_force_keeps_the_old_bundle(tiny_checkpoint, small_filesystem):
    disk = small_filesystem(400)
    before = old_bundle(disk / "bundle")
    result = run_cli("export", "depth-anything-v2-small", "--weights", str(tiny_checkpoint("depth-anything-v2")),
                     "--out", str(disk / "bundle"), "--no-check", "--force")
    assert_clean_error(result, "no space left on device")
    assert os.listdir(disk) == ["bundle"]
    assert {p.name: p.read_bytes() for p in (disk / "bundle").iterdir()} == before


def test_disk_filling_at_the_manifest_write_leaves_no_partial_bundle(tiny_checkpoint, tmp_path, monkeypatch):
    """The same without root: the last write of an export (the manifest) fails part-way with ENOSPC."""
    def fill_up(path, data):
        path.write_text('{"schema_version": 1, "mod')  # a partial write, as a filling disk leaves it
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(exporter, "write_json_atomic", fill_up)
    before = old_bundle(tmp_path / "bundle")
    with pytest.raises(OutputError, match="no space left on device while writing bundle") as info:
        exporter.export_bundle("depth-anything-v2-small", weights=str(tiny_checkpoint("depth-anything-v2")),
                               out=tmp_path / "bundle", force=True, check=False)
    assert "\n" not in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["bundle"]  # the staging folder is gone
    assert {p.name: p.read_bytes() for p in (tmp_path / "bundle").iterdir()} == before
