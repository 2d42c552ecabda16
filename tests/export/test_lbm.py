"""LBM depth and normals: tiny yaml + safetensors in the published layout -> bundle -> numpy runtime,
checked against the PyTorch reference loop (evaluate() + LBMModel.sample line by line); the SDXL
architecture derived from tensor shapes; and the bad inputs."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from depthrt.errors import InputError, WeightsError
from diffusion_bundles import family_maker, load_bundle, write_bundle

pytest.importorskip("diffusers")
pytest.importorskip("yaml")


PRESETS = {"lbm-depth": "lbm-depth", "lbm-normals": "lbm-normals"}
# (height, width, processing_resolution, steps): buckets 1280x768 and 640x1536 scaled to 128 / 96
CASES = [(60, 90, 128, 1), (97, 41, 128, 3), (50, 50, 96, 2)]
TOLERANCE = 1e-2


@pytest.fixture(scope="module")
def lbm(tmp_path_factory):
    """lbm(preset) -> (checkpoint folder, estimator, (unet, vae, checkpoint)), made once per preset."""
    from depthrt_export.diffusion import lbm as lbm_export
    from depthrt_export.diffusion.tiny_lbm import write_tiny_lbm

    def parts(ckpt, preset):
        info = lbm_export.read_checkpoint(ckpt)
        return lbm_export.load_unet(info), lbm_export.load_vae(info), info

    return family_maker(tmp_path_factory.mktemp("lbm"), lbm_export, write_tiny_lbm, PRESETS, parts)


def _compare(est, torch_parts, task, cases, tolerance, label):
    from depthrt_export.diffusion.lbm import bucket_size
    from depthrt_export.diffusion.reference_lbm import run_lbm_reference

    unet, vae, info = torch_parts
    rng = np.random.default_rng(1)
    for h, w, res, steps in cases:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        bh, bw = bucket_size(h, w, res)
        noise = rng.standard_normal((steps - 1, 4, bh // 8, bw // 8)).astype(np.float32)
        ref = run_lbm_reference(unet, vae, info, image, task, steps, noise[:, None], resolution=res)
        pred = est.predict(image, num_inference_steps=steps, processing_resolution=res, latents=noise)
        got = pred.depth if task == "depth" else pred.normals
        assert got.shape == ref.shape == ((h, w) if task == "depth" else (h, w, 3))
        rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
        print(f"{label} {w}x{h} @ {res}, {steps} step(s): rel-L2 {rel:.2e}")
        assert rel <= tolerance


@pytest.mark.parametrize("preset", list(PRESETS))
def test_lbm_runtime_matches_reference_loop(lbm, preset):
    _, est, parts = lbm(preset)
    task = "normals" if "normals" in preset else "depth"
    assert est.loop["task"] == task and est.text_embedding is None
    assert est.loop["bridge_noise_sigma"] == pytest.approx(0.005)  # from the yaml
    _compare(est, parts, task, CASES, TOLERANCE, preset)


def test_lbm_bridge_noise_is_used(lbm):
    _, est, _ = lbm("lbm-depth")
    image = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    a = est.predict(image, num_inference_steps=2, processing_resolution=96, seed=0).depth
    b = est.predict(image, num_inference_steps=2, processing_resolution=96, seed=1).depth
    c = est.predict(image, num_inference_steps=1, processing_resolution=96, seed=1).depth
    assert not np.allclose(a, b) and c.shape == (48, 64)


def test_lbm_fp16_weight_storage_path(lbm, tmp_path, monkeypatch):
    """The SDXL-sized path (fp16 weights cast to fp32 in the graph, no constant folding), on the tiny model."""
    from depthrt_export.diffusion import lbm as lbm_export

    ckpt, _, parts = lbm("lbm-depth")
    monkeypatch.setattr(lbm_export, "UNET_FP32_LIMIT", 0)
    bundle = write_bundle(lbm_export, "lbm-depth", ckpt, tmp_path / "half")
    est = load_bundle(bundle)
    assert est.loop["unet_weights"] == "float16"
    _compare(est, parts, "depth", CASES[:1], TOLERANCE, "lbm-depth fp16 weights")

    # Its fp16 variant: the UNet is not calibrated (that run does not fit 24 GiB at SDXL size) and
    # keeps the rule-based fp32 islands; the variant still runs and stays finite.
    import numpy as np
    import onnxruntime as ort

    from depthrt_export.fp16 import UNCALIBRATED_RULE, add_fp16_variants

    manifest = add_fp16_variants(bundle)
    unet16 = next(g for g in manifest["graphs"] if g["name"] == "unet" and g.get("precision") == "fp16")
    assert unet16["fp32_islands"]["rule"] == UNCALIBRATED_RULE and "max_abs" not in unet16["fp32_islands"]
    assert len(unet16["fp32_islands"]["pinned"]) > 0  # the timestep path
    session = ort.InferenceSession(str(bundle / unet16["file"]))
    feeds = {}
    for spec in session.get_inputs():
        shape = [2 if isinstance(d, str) else d for d in spec.shape]
        if spec.name == "timestep":
            feeds[spec.name] = np.full(shape, 999.0, np.float32)
        elif "int" in spec.type:
            feeds[spec.name] = np.zeros(shape, np.int64)
        else:
            feeds[spec.name] = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    (out,) = session.run(None, feeds)
    assert np.isfinite(out).all()


def test_sdxl_architecture_from_shapes():
    """The shapes of get_model's hard-coded SDXL UNet give back exactly its arguments."""
    import torch
    from diffusers import UNet2DConditionModel

    from depthrt_export.diffusion.lbm import sdxl_unet_config, unet_config_from_shapes

    config = sdxl_unet_config([320, 640, 1280], [1, 2, 10], 2)
    assert config["attention_head_dim"] == [5, 10, 20] and config["cross_attention_dim"] == [320, 640, 1280]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    shapes = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    assert unet_config_from_shapes(shapes, "sdxl") == config
    assert sum(v.numel() for v in unet.parameters()) == 2_426_231_044


def test_lbm_bad_inputs(lbm, tmp_path):
    from depthrt_export.diffusion.lbm import read_checkpoint

    ckpt, est, _ = lbm("lbm-depth")
    image = np.zeros((60, 90, 3), np.uint8)
    with pytest.raises(InputError, match=r"bridge noise \(1, 4, 12, 20\)"):
        est.predict(image, num_inference_steps=2, processing_resolution=128, latents=np.zeros((2, 4, 12, 20)))
    with pytest.raises(InputError, match="at least 1"):
        est.predict(image, num_inference_steps=0)
    with pytest.raises(InputError, match="processing_resolution"):
        est.predict(image, processing_resolution=0)

    def variant(name, yaml_text):
        folder = tmp_path / name
        shutil.copytree(ckpt, folder)
        for old in folder.glob("*.yaml"):
            old.unlink()
        (folder / "config.yaml").write_text(yaml_text)
        return folder

    relight = (ckpt / "LBM_depth.yaml").read_text().replace("conditioning_images_keys: []",
                                                           "conditioning_images_keys: [source_image_paste]")
    with pytest.raises(WeightsError, match="conditional LBM model"):
        read_checkpoint(variant("relight", relight))
    with pytest.raises(WeightsError, match="not an LBM model config"):
        read_checkpoint(variant("other", "model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"))
    eight = (ckpt / "LBM_depth.yaml").read_text().replace("unet_input_channels: 4", "unet_input_channels: 8")
    with pytest.raises(WeightsError, match="conditioned on extra inputs"):
        read_checkpoint(variant("eight", eight))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "LBM_depth.yaml").write_text((ckpt / "LBM_depth.yaml").read_text())
    with pytest.raises(WeightsError, match="no .safetensors"):
        read_checkpoint(empty)
