"""The bundle an export writes: manifest contents, external data, atomic replacement."""

import json

import numpy as np
import pytest

import depthrt
from depthrt.manifest import read_manifest, validate_manifest
from depthrt.samples import synthetic_image


def test_manifest_records_everything(tiny_bundle):
    bundle, manifest = tiny_bundle("depth-anything-v2-small")
    assert read_manifest(bundle) == manifest
    graph = manifest["graphs"][0]
    assert graph["opset"] >= 17
    assert graph["dynamic"]["height"]["multiple_of"] == 14 and graph["dynamic"]["batch"]["max"] >= 2
    assert graph["dynamic"]["height"]["min"] < graph["dynamic"]["height"]["opt"] < graph["dynamic"]["height"]["max"]
    pre = manifest["preprocessing"]
    assert pre["resize"]["keep_aspect"] is True and pre["resize"]["multiple_of"] == 14
    assert pre["normalize"]["mean"] == [0.485, 0.456, 0.406]
    names = {f["name"] for f in manifest["source"]["files"]}
    assert {"config.json", "preprocessor_config.json", "model.safetensors"} <= names
    assert all(len(f["sha256"]) == 64 for f in manifest["source"]["files"])
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= set(manifest["tools"])
    assert manifest["parity"]["passed"] is True
    fp16 = [g for g in manifest["graphs"] if g.get("precision") == "fp16"]
    assert len(fp16) == 1 and fp16[0]["name"] == graph["name"] and fp16[0]["file"] == "model.fp16.onnx"
    assert "LayerNormalization" in fp16[0]["fp32_islands"]["op_types"] or fp16[0]["fp32_islands"]["nodes"] > 0
    assert [v["precision"] for v in manifest["parity"]["variants"]][:1] == ["fp16"]


def test_schema_rejects_unknown_and_missing_fields(tiny_bundle):
    _, manifest = tiny_bundle("depth-anything-v2-small")
    for broken in (
        {**manifest, "surprise": 1},
        {k: v for k, v in manifest.items() if k != "graphs"},
        {**manifest, "output": {**manifest["output"], "kind": "colour"}},
        {**manifest, "schema_version": 99},
    ):
        with pytest.raises(depthrt.BundleError):
            validate_manifest(broken)


def test_large_graph_goes_to_external_data(tiny_checkpoint, tmp_path, monkeypatch):
    from depthrt_export import exporter

    monkeypatch.setattr(exporter, "ONNX_LIMIT", 0)  # treat the tiny graph as if it were above 2 GB
    bundle, manifest = exporter.export_bundle("depth-anything-v2-small", weights=str(tiny_checkpoint("depth-anything-v2")),
                                              out=tmp_path / "b", check=False)
    graph = manifest["graphs"][0]
    assert graph["external_data"] == "model.onnx.data"
    assert (bundle / "model.onnx.data").stat().st_size > (bundle / "model.onnx").stat().st_size
    depth = depthrt.load(bundle, backend="ort-cpu").predict(synthetic_image(100, 140)).depth
    assert depth.shape == (100, 140) and np.isfinite(depth).all()


def test_force_replaces_a_bundle_in_one_step(tiny_checkpoint, tmp_path):
    from depthrt_export.exporter import export_bundle

    out = tmp_path / "b"
    export_bundle("depth-anything-v2-small", weights=str(tiny_checkpoint("depth-anything-v2")), out=out, check=False)
    first = json.loads((out / "manifest.json").read_text())["created"]
    export_bundle("depth-anything-v2-small", weights=str(tiny_checkpoint("depth-anything-v2")), out=out,
                  check=False, force=True)
    assert (out / "manifest.json").exists()
    assert json.loads((out / "manifest.json").read_text())["created"] >= first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no staging or old copies left
