"""The ComfyUI nodes as plain Python (no ComfyUI): tensors, batching, conventions, progress, cancel,
errors and model reuse, on tiny bundles, through fake ComfyUI modules with ComfyUI's call signatures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "comfyui"), str(ROOT / "tests" / "export")]

import fake_comfy  # noqa: E402

from depthrt.errors import BackendError, InputError  # noqa: E402
from depthrt.imageio import normals_to_rgb, read_image, to_controlnet  # noqa: E402
from depthrt.normals import normals_from_depth  # noqa: E402
from depthrt.samples import synthetic_image  # noqa: E402

DA2 = "depth-anything-v2-small"


@pytest.fixture(scope="module")
def marigold_normals(tmp_path_factory):
    """A tiny Marigold normals bundle (a diffusion model that predicts normals)."""
    pytest.importorskip("diffusers")
    from diffusion_bundles import write_bundle
    from depthrt_export.diffusion import marigold
    from depthrt_export.diffusion.tiny_marigold import write_tiny_marigold

    root = tmp_path_factory.mktemp("comfy-marigold")
    weights = write_tiny_marigold("marigold-normals", root / "weights")
    return write_bundle(marigold, "marigold-normals-v1-1", weights, root / "marigold-normals-v1-1")


@pytest.fixture
def comfy(tmp_path, monkeypatch, tiny_bundle):
    """Fake ComfyUI with the tiny DA2 bundle in models/depthrt/; yields (nodes module, fake state, models dir)."""
    state = fake_comfy.install(monkeypatch, tmp_path / "models")
    bundle, _ = tiny_bundle(DA2)
    os.symlink(bundle, tmp_path / "models" / "depthrt" / DA2)
    from comfyui import nodes

    nodes.register_model_folder()
    monkeypatch.setattr(nodes, "_loaded", {})
    return nodes, state, tmp_path / "models" / "depthrt"


def frames(n: int, height: int = 60, width: int = 80):
    """A ComfyUI IMAGE batch, as LoadImage makes it (uint8 / 255), and the uint8 frames."""
    rgb = np.stack([synthetic_image(height, width, seed=i) for i in range(n)])
    return torch.from_numpy(rgb.astype(np.float32) / 255.0), rgb


def test_pack_imports_without_comfyui():
    code = ("import sys; import comfyui; from comfyui import nodes; "
            "assert 'folder_paths' not in sys.modules and 'torch' not in sys.modules; "
            "print(sorted(comfyui.NODE_CLASS_MAPPINGS), nodes.list_bundles())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["['DepthrtDepthMap',", "'DepthrtLoadBundle',", "'DepthrtNormalMap']", "[]"]


def test_node_inputs_are_the_contract(comfy):
    nodes, _, _ = comfy
    load = nodes.DepthrtLoadBundle.INPUT_TYPES()["required"]
    assert list(load) == ["bundle", "backend", "precision"]
    assert load["bundle"][0] == [DA2]
    assert load["backend"][0] == ["auto", "ort-cpu", "ort-cuda", "openvino", "trt"]
    assert load["precision"][0] == ["fp32", "fp16", "bf16"]
    assert nodes.DepthrtLoadBundle.RETURN_TYPES == ("DEPTHRT_MODEL",)
    depth = nodes.DepthrtDepthMap.INPUT_TYPES()["required"]
    assert [(k, v[0]) for k, v in depth.items()] == [
        ("model", "DEPTHRT_MODEL"), ("image", "IMAGE"), ("processing_resolution", "INT"), ("steps", "INT"),
        ("ensemble_size", "INT"), ("seed", "INT")]
    assert nodes.DepthrtDepthMap.RETURN_TYPES == ("IMAGE", "MASK")
    normal = nodes.DepthrtNormalMap.INPUT_TYPES()["required"]
    assert list(normal)[:6] == list(depth) and nodes.DepthrtNormalMap.RETURN_TYPES == ("IMAGE",)
    assert "ignored by the others" in nodes.DepthrtDepthMap.DESCRIPTION


def test_tensor_conversion_is_exact_and_checked(comfy):
    nodes, _, _ = comfy
    levels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    image = torch.from_numpy(levels.astype(np.float32) / 255.0)  # LoadImage's x / 255
    (back,) = nodes.images_from_tensor(image)
    assert np.array_equal(back, levels[0])  # rounding, not truncation: every level survives
    assert np.array_equal(nodes.images_from_tensor(image.numpy() * 1.2)[0].max(), 255)  # clipped
    out = nodes.tensor_from_rgb([levels[0], levels[0]])
    assert out.dtype == torch.float32 and tuple(out.shape) == (2, 16, 16, 3)
    assert np.array_equal(nodes.images_from_tensor(out)[1], levels[0])
    with pytest.raises(InputError, match="B x H x W x 3"):
        nodes.images_from_tensor(torch.zeros(1, 8, 8, 4))
    with pytest.raises(InputError, match="NaN"):
        nodes.images_from_tensor(torch.full((1, 8, 8, 3), float("nan")))


def test_depth_map_is_what_predict_writes_for_controlnet(comfy, tmp_path):
    from depthrt.cli import main

    nodes, _, models = comfy
    image, rgb = frames(2)
    (model,) = nodes.DepthrtLoadBundle().load(DA2, "ort-cpu", "fp32")
    depth, mask = nodes.DepthrtDepthMap().run(model, image, 0, 0, 1, 0)
    assert tuple(depth.shape) == (2, 60, 80, 3) and depth.dtype == torch.float32
    assert tuple(mask.shape) == (2, 60, 80) and not mask.any()  # no sky output: zeros
    from PIL import Image

    Image.fromarray(rgb[1]).save(tmp_path / "frame.png")
    assert main(["predict", str(models / DA2), str(tmp_path / "frame.png"), "--out", str(tmp_path / "maps"),
                 "--save", "controlnet", "--backend", "ort-cpu"]) == 0
    png = read_image(tmp_path / "maps" / "frame.controlnet.png")
    assert np.array_equal(np.rint(depth[1].numpy() * 255).astype(np.uint8), png)
    raw = model.predict(rgb[1]).depth  # relative inverse depth: larger = nearer
    near = np.unravel_index(np.argmax(raw), raw.shape)
    assert depth[1][near].tolist() == [1.0, 1.0, 1.0]  # the nearest pixel is white


def test_frames_run_batched_in_the_graphs_batch_range(comfy, monkeypatch):
    nodes, _, _ = comfy
    image, rgb = frames(10)
    (model,) = nodes.DepthrtLoadBundle().load(DA2, "ort-cpu", "fp32")
    sizes = []
    infer = model.infer
    monkeypatch.setattr(model, "infer", lambda batch: sizes.append(len(batch)) or infer(batch))
    depth, _ = nodes.DepthrtDepthMap().run(model, image, 0, 0, 1, 0)
    assert sizes == [8, 2]  # the tiny graph's batch range is 1..8
    single = to_controlnet(model.predict(rgb[9]).depth, model.kind)
    assert np.abs(np.rint(depth[9].numpy() * 255).astype(int) - single).max() <= 1


def test_progress_per_image_and_cancel_between_images(comfy, monkeypatch):
    nodes, state, _ = comfy
    image, _ = frames(10)
    (model,) = nodes.DepthrtLoadBundle().load(DA2, "ort-cpu", "fp32")
    nodes.DepthrtDepthMap().run(model, image, 0, 0, 1, 0)
    assert state.updates == [(i, 10) for i in range(11)]
    calls = []
    infer = model.infer
    monkeypatch.setattr(model, "infer", lambda batch: calls.append(len(batch)) or infer(batch))
    state.updates.clear()
    state.interrupt_after = 4  # the cancel button, pressed after the 3rd image
    with pytest.raises(fake_comfy.InterruptProcessingException):
        nodes.DepthrtDepthMap().run(model, image, 0, 0, 1, 0)
    assert state.updates[-1] == (3, 10) and calls == [8]  # stopped at the next image; no second batch


def test_normal_map_from_depth_is_what_predict_writes(comfy, tmp_path):
    from PIL import Image

    from depthrt.cli import main

    nodes, _, models = comfy
    image, rgb = frames(2)
    (model,) = nodes.DepthrtLoadBundle().load(DA2, "ort-cpu", "fp32")
    (normals,) = nodes.DepthrtNormalMap().run(model, image, 0, 0, 1, 0)  # a = 2 pi, bg_threshold 0.4
    Image.fromarray(rgb[0]).save(tmp_path / "frame.png")
    assert main(["predict", str(models / DA2), str(tmp_path / "frame.png"), "--out", str(tmp_path / "maps"),
                 "--save", "normals", "--backend", "ort-cpu"]) == 0
    png = read_image(tmp_path / "maps" / "frame.normals.png")
    assert np.array_equal(np.rint(normals[0].numpy() * 255).astype(np.uint8), png)
    assert tuple(normals.shape) == (2, 60, 80, 3)
    (other,) = nodes.DepthrtNormalMap().run(model, image, 0, 0, 1, 0, a=3.0, bg_threshold=0.2)
    pred = model.predict(rgb[0])
    expected = normals_to_rgb(normals_from_depth(pred.depth, pred.kind, a=3.0, bg_threshold=0.2))
    assert np.array_equal(np.rint(other[0].numpy() * 255).astype(np.uint8), expected)
    assert not np.array_equal(expected, png)  # the parameters matter


def test_diffusion_normals_with_progress_per_step(comfy, marigold_normals):
    nodes, state, models = comfy
    os.symlink(marigold_normals, models / marigold_normals.name)
    image, rgb = frames(2, 48, 64)
    (model,) = nodes.DepthrtLoadBundle().load(marigold_normals.name, "ort-cpu", "fp32")
    (normals,) = nodes.DepthrtNormalMap().run(model, image, 64, 2, 1, 7)  # small: fast
    assert state.updates == [(0, 2)] + [(i, 4) for i in range(1, 5)]  # 2 images x 2 steps
    preds = model.predict(list(rgb), num_inference_steps=2, seed=7, processing_resolution=64)
    assert np.array_equal(np.rint(normals.numpy() * 255).astype(np.uint8),
                          np.stack([normals_to_rgb(p.normals) for p in preds]))
    with pytest.raises(InputError, match="predicts surface normals.*DepthrtNormalMap"):
        nodes.DepthrtDepthMap().run(model, image, 64, 2, 1, 7)


def test_errors_say_what_to_do(comfy):
    nodes, _, _ = comfy
    message = nodes.DepthrtLoadBundle.VALIDATE_INPUTS("no-such-bundle")
    assert "not found" in message and "depthrt export" in message
    with pytest.raises(InputError, match="'no-such-bundle' not found"):
        nodes.DepthrtLoadBundle().load("no-such-bundle", "auto", "fp32")
    with pytest.raises(BackendError, match="ort-cuda needs onnxruntime-gpu") as info:
        nodes.DepthrtLoadBundle().load(DA2, "ort-cuda", "fp32")
    assert "--backend" not in str(info.value)  # node inputs, not CLI flags
    (model,) = nodes.DepthrtLoadBundle().load(DA2, "ort-cpu", "fp32")
    image, _ = frames(1)
    with pytest.raises(InputError, match="smaller than one 14-pixel patch"):
        nodes.DepthrtDepthMap().run(model, torch.rand(1, 10, 10, 3), 0, 0, 1, 0)
    with pytest.raises(InputError, match="processing_resolution must be a whole number of at least 0"):
        nodes.DepthrtDepthMap().run(model, image, -1, 0, 1, 0)
    with pytest.raises(InputError, match="ensemble_size must be a whole number of at least 1"):
        nodes.DepthrtDepthMap().run(model, image, 0, 0, 0, 0)


def test_model_is_reused_until_an_input_changes(comfy):
    nodes, _, models = comfy
    node = nodes.DepthrtLoadBundle()
    (first,) = node.load(DA2, "ort-cpu", "fp32", unique_id="5")
    assert node.load(DA2, "ort-cpu", "fp32", unique_id="5")[0] is first
    changed = nodes.DepthrtLoadBundle.IS_CHANGED(DA2, "ort-cpu", "fp32")
    assert changed == nodes.DepthrtLoadBundle.IS_CHANGED(DA2, "ort-cpu", "fp32")
    (other,) = node.load(DA2, "openvino", "fp32", unique_id="5")
    assert other is not first and other.backend == "openvino"
    assert [entry[1] for entry in nodes._loaded.values()] == [other]  # the old model was let go
    manifest = models / DA2 / "manifest.json"
    stat = manifest.stat()
    os.utime(manifest, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a re-exported bundle
    try:
        assert node.load(DA2, "openvino", "fp32", unique_id="5")[0] is not other
        assert nodes.DepthrtLoadBundle.IS_CHANGED(DA2, "openvino", "fp32") != changed
    finally:
        os.utime(manifest, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_sky_becomes_the_mask():
    from comfyui import nodes
    from depthrt.estimator import Prediction

    sky = np.zeros((4, 5), bool)
    sky[:2] = True
    preds = [Prediction(depth=np.ones((4, 5), np.float32), kind="relative_depth", units="relative", sky=sky),
             Prediction(depth=np.ones((4, 5), np.float32), kind="relative_depth", units="relative")]
    mask = nodes.mask_from(preds, (4, 5))
    assert mask.dtype == torch.float32 and tuple(mask.shape) == (2, 4, 5)
    assert mask[0].numpy().tolist() == sky.astype(np.float32).tolist() and not mask[1].any()
