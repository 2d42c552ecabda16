"""The command line as a user runs it: outputs, and a clear one-line error for every bad input."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, assert_clean_error, run_cli
from depthrt.samples import synthetic_image

SAMPLE = ROOT / "scripts" / "data" / "sample.jpg"


@pytest.fixture()
def bundle(tiny_bundle):
    return tiny_bundle("depth-anything-v2-small")[0]


def _write_png(path: Path, h: int, w: int, seed: int = 0) -> Path:
    Image.fromarray(synthetic_image(h, w, seed)).save(path)
    return path


def test_models_lists_every_preset():
    from depthrt.presets import PRESETS

    result = run_cli("models")
    assert result.returncode == 0
    for preset in PRESETS:
        assert preset.hub_id in result.stdout and preset.licence in result.stdout
    listed = json.loads(run_cli("models", "--json").stdout)
    assert {p["hub_id"] for p in listed} == {p.hub_id for p in PRESETS}


def test_predict_writes_png16_color_npy_controlnet(bundle, tmp_path):
    import depthrt

    out = tmp_path / "maps"
    result = run_cli("predict", str(bundle), str(SAMPLE), "--out", str(out), "--backend", "ort-cpu",
                     "--save", "png16,color,npy,controlnet")
    assert result.returncode == 0, result.stderr
    depth16 = Image.open(out / "sample.depth.png")
    assert depth16.mode.startswith("I") and depth16.size == (640, 480)
    assert np.array(depth16).max() == 65535
    color = Image.open(out / "sample.color.png")
    assert color.mode == "RGB" and color.size == (640, 480)
    control = np.array(Image.open(out / "sample.controlnet.png"))
    depth = np.load(out / "sample.depth.npy")
    expected = depthrt.load(bundle, backend="ort-cpu").predict(np.array(Image.open(SAMPLE).convert("RGB"))).depth
    np.testing.assert_array_equal(depth, expected)
    # white = near: for relative inverse depth the largest value is the brightest pixel.
    assert control[np.unravel_index(np.argmax(depth), depth.shape)].mean() >= 250


def test_predict_same_stem_inputs_get_distinct_outputs(bundle, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = _write_png(tmp_path / "a" / "x.png", 60, 90, 1)
    b = _write_png(tmp_path / "b" / "x.png", 90, 60, 2)
    result = run_cli("predict", str(bundle), str(a), str(b), "--out", str(tmp_path / "o"), "--save", "npy")
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "o" / "x.depth.npy").shape == (60, 90)
    assert np.load(tmp_path / "o" / "x-1.depth.npy").shape == (90, 60)


def test_predict_never_overwrites_without_force(bundle, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    existing = out / "sample.depth.png"
    existing.write_bytes(b"user's file")
    result = run_cli("predict", str(bundle), str(SAMPLE), "--out", str(out))
    assert_clean_error(result, "already exists", "--force")
    assert existing.read_bytes() == b"user's file"
    assert not (out / "sample.color.png").exists()
    assert run_cli("predict", str(bundle), str(SAMPLE), "--out", str(out), "--force").returncode == 0
    assert existing.read_bytes() != b"user's file"


@pytest.mark.parametrize("content, needle", [
    (b"", "empty"),
    (b"this is not an image at all", "x.png"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "x.png"),
])
def test_predict_bad_image_files(bundle, tmp_path, content, needle):
    bad = tmp_path / "x.png"
    bad.write_bytes(content)
    result = run_cli("predict", str(bundle), str(bad), "--out", str(tmp_path / "o"))
    assert_clean_error(result, needle)
    assert not (tmp_path / "o" / "x.depth.png").exists()


def test_predict_truncated_image(bundle, tmp_path):
    good = _write_png(tmp_path / "good.png", 200, 300)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert_clean_error(run_cli("predict", str(bundle), str(cut), "--out", str(tmp_path / "o")), "cut.png")


def test_predict_missing_image_and_directory(bundle, tmp_path):
    assert_clean_error(run_cli("predict", str(bundle), str(tmp_path / "nope.png")), "nope.png")
    assert_clean_error(run_cli("predict", str(bundle), str(tmp_path)), str(tmp_path))


def test_predict_image_smaller_than_a_patch(bundle, tmp_path):
    tiny = _write_png(tmp_path / "tiny.png", 5, 9)
    assert_clean_error(run_cli("predict", str(bundle), str(tiny), "--out", str(tmp_path / "o")), "patch")


def test_predict_extreme_aspect_ratio_is_a_clear_error(bundle, tmp_path):
    # 14 wide and 2000 high resizes to 3.6x518, which rounds to no patch at all (1000x100, 518x56, runs:
    # the model's limit is one 14-pixel patch, not the 126 of the bundle's TensorRT profile)
    strip = _write_png(tmp_path / "strip.png", 2000, 14)
    assert_clean_error(run_cli("predict", str(bundle), str(strip), "--out", str(tmp_path / "o")), "too thin")


def test_predict_very_large_image(bundle, tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (16000, 12000)).save(big)  # 192 MP: past Pillow's decompression-bomb limit
    assert_clean_error(run_cli("predict", str(bundle), str(big), "--out", str(tmp_path / "o")), "big.png")


def test_predict_unwritable_output(bundle, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me")
    result = run_cli("predict", str(bundle), str(SAMPLE), "--out", str(blocker / "sub"))
    assert_clean_error(result, "--out")
    assert blocker.read_text() == "keep me"


def test_predict_missing_bundle(tmp_path):
    assert_clean_error(run_cli("predict", str(tmp_path / "nothing"), str(SAMPLE)), "depthrt export")


def test_bundle_with_missing_graph(bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    (copy / "model.onnx").unlink()
    assert_clean_error(run_cli("predict", str(copy), str(SAMPLE), "--out", str(tmp_path / "o")), "missing")


def test_bundle_with_edited_manifest(bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["graphs"][0]["dynamic"]["height"]["min"] = "small"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert_clean_error(run_cli("predict", str(copy), str(SAMPLE), "--out", str(tmp_path / "o")), "manifest")
    (copy / "manifest.json").write_text("{ not json")
    assert_clean_error(run_cli("predict", str(copy), str(SAMPLE), "--out", str(tmp_path / "o")), "JSON")


def test_bundle_with_replaced_graph(bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    with open(copy / "model.onnx", "r+b") as fh:
        fh.truncate(1000)
    assert_clean_error(run_cli("predict", str(copy), str(SAMPLE), "--out", str(tmp_path / "o")), "truncated")


def test_backend_trt_without_tensorrt(bundle, tmp_path):
    result = run_cli("predict", str(bundle), str(SAMPLE), "--out", str(tmp_path / "o"), "--backend", "trt")
    assert_clean_error(result, "TensorRT", "ort-cpu")


def test_backend_ort_cuda_without_gpu(bundle, tmp_path):
    result = run_cli("predict", str(bundle), str(SAMPLE), "--out", str(tmp_path / "o"), "--backend", "ort-cuda")
    assert_clean_error(result, "ort-cuda", "ort-cpu")


def test_export_refuses_to_overwrite_a_bundle(bundle, tiny_checkpoint, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    before = (copy / "manifest.json").read_bytes()
    result = run_cli("export", "depth-anything-v2-small", "--weights", str(tiny_checkpoint("depth-anything-v2")),
                     "--out", str(copy), "--no-check")
    assert_clean_error(result, "--force")
    assert (copy / "manifest.json").read_bytes() == before


def test_export_refuses_to_replace_a_non_bundle_folder_even_with_force(tiny_checkpoint, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    result = run_cli("export", "depth-anything-v2-small", "--weights", str(tiny_checkpoint("depth-anything-v2")),
                     "--out", str(folder), "--force")
    assert_clean_error(result, "not a depthrt bundle")
    assert (folder / "holiday.jpg").read_bytes() == b"precious"


def test_export_missing_weights_folder(tmp_path):
    result = run_cli("export", "dpt-large", "--weights", str(tmp_path / "missing"), "--out", str(tmp_path / "b"))
    assert_clean_error(result, "does not exist")
    assert not (tmp_path / "b").exists()


def test_export_weights_of_another_architecture(tiny_checkpoint, tmp_path):
    result = run_cli("export", "dpt-large", "--weights", str(tiny_checkpoint("zoedepth-nyu")),
                     "--out", str(tmp_path / "b"))
    assert_clean_error(result, "zoedepth")
    foreign = tmp_path / "bert"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (foreign / "model.safetensors").write_bytes(b"")
    assert_clean_error(run_cli("export", "dpt-large", "--weights", str(foreign), "--out", str(tmp_path / "c")), "bert")


def test_export_refuses_pickle_unless_trusted(tmp_path):
    from depthrt_export.tiny import write_tiny

    ckpt = write_tiny("depth-anything-v2", tmp_path / "pickled", pickle=True)
    assert (ckpt / "pytorch_model.bin").exists() and not (ckpt / "model.safetensors").exists()
    result = run_cli("export", "depth-anything-v2-small", "--weights", str(ckpt), "--out", str(tmp_path / "b"))
    assert_clean_error(result, "--trust-pickle")
    result = run_cli("export", "depth-anything-v2-small", "--weights", str(ckpt), "--out", str(tmp_path / "b"),
                     "--trust-pickle", "--no-check")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "b" / "manifest.json").exists()


def test_export_unreachable_hub_says_what_to_do(tmp_path):
    result = run_cli("export", "dpt-large", "--out", str(tmp_path / "b"), env={"HF_HUB_OFFLINE": "1"})
    assert_clean_error(result, "--weights")


def test_export_unknown_model(tmp_path):
    assert_clean_error(run_cli("export", "not-a-model", "--out", str(tmp_path / "b")), "depthrt models")


def test_check_passes_and_writes_json(bundle, tmp_path):
    report_path = tmp_path / "report.json"
    result = run_cli("check", str(bundle), "--json", str(report_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert report["passed"] and len(report["images"]) == 3


def test_check_fails_against_other_weights(bundle, tmp_path):
    from depthrt_export.tiny import write_tiny

    other = write_tiny("depth-anything-v2", tmp_path / "other", seed=1)  # same architecture, other weights
    result = run_cli("check", str(bundle), "--weights", str(other))
    assert result.returncode == 1
    assert "FAILED" in result.stdout


def test_predict_normals_bundle_writes_normal_maps(tiny_bundle, tmp_path):
    bundle, _ = tiny_bundle("marigold-normals-v1-1")
    out = tmp_path / "o"
    result = run_cli("predict", str(bundle), str(SAMPLE), "--out", str(out), "--backend", "ort-cpu")
    assert result.returncode == 0, result.stderr
    normals = np.load(out / "sample.normals.npy")
    assert normals.shape == (480, 640, 3)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-3)
    rgb = np.array(Image.open(out / "sample.normals.png"))
    assert rgb.shape == (480, 640, 3) and rgb.dtype == np.uint8
    assert_clean_error(run_cli("predict", str(bundle), str(SAMPLE), "--out", str(out), "--save", "png16"),
                       "normals")


@pytest.mark.parametrize("preset", ["marigold-depth-v1-1", "da3-mono-large"])
def test_check_dispatches_to_the_family_reference(preset, tiny_bundle):
    bundle, _ = tiny_bundle(preset)
    result = run_cli("check", str(bundle), "--processing-resolution", "64") if preset.startswith("marigold") \
        else run_cli("check", str(bundle))
    assert result.returncode == 0, result.stderr
    assert ("diffusers" if preset.startswith("marigold") else "Depth Anything 3") in result.stdout
    assert "PASSED" in result.stdout


def test_predict_keeps_earlier_maps_when_a_later_image_is_corrupt(bundle, tmp_path):
    good = _write_png(tmp_path / "good.png", 60, 80)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "o"
    result = run_cli("predict", str(bundle), str(good), str(bad), "--out", str(out), "--save", "npy")
    assert_clean_error(result, "bad.png")
    assert np.load(out / "good.depth.npy").shape == (60, 80)
    assert not (out / "bad.depth.npy").exists()


def test_manifest_follows_the_umask_not_mkstemps_0600(tmp_path):
    from depthrt.manifest import write_json_atomic

    umask = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(umask)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644
