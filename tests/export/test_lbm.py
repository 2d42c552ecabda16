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


# --------------------------------------------------------------------------- tiled decode (upstream's Tiler)
def _with_tiles(est, folder, tiles):
    """A copy of ``est``'s bundle whose loop.decoder_tiles is ``tiles``, loaded."""
    import json

    shutil.copytree(est.bundle, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["loop"]["decoder_tiles"] = tiles
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return load_bundle(folder)


def test_tiled_decode_matches_upstream_tiler_at_a_non_square_bucket(lbm, tmp_path):
    """The 1152x896 bucket (a 4:3 photo) with 8-latent tiles overlapping by 2, so the tiny model's
    28x36 latent decodes in 5 x 6 tiles with short ones at the bottom and right edges: the runtime
    equals the torch reference of upstream's Tiler; one-shot decoding (the option) equals one-shot in
    the reference and is far from the tiled result."""
    from depthrt_export.diffusion.lbm import bucket_size
    from depthrt_export.diffusion.reference_lbm import run_lbm_reference

    preset, task = "lbm-depth", "depth"  # normals decode the same way (test_lbm_runtime_matches_reference_loop)
    _, est, (unet, vae, info) = lbm(preset)
    small = _with_tiles(est, tmp_path / "tiles", {"latent_tile": 8, "overlap": 2})
    image = np.random.default_rng(5).integers(0, 256, (75, 100, 3), dtype=np.uint8)
    assert bucket_size(75, 100, 256) == (224, 288)  # the 1152x896 bucket at 256: latent 28x36
    got = {}
    for tiled in (True, False):
        pred = small.predict(image, processing_resolution=256, tiled_decode=tiled)
        got[tiled] = pred.depth if task == "depth" else pred.normals
    ref = {t: run_lbm_reference(unet, vae, info, image, task, 1, resolution=256, tile=t, overlap=2) for t in (8, None)}
    rel = {k: float(np.linalg.norm(got[k] - ref[8 if k else None]) / np.linalg.norm(ref[8 if k else None]))
           for k in got}
    apart = float(np.linalg.norm(ref[None] - ref[8]) / np.linalg.norm(ref[8]))
    print(f"{preset} 1152x896 bucket @ 256, 8/2 tiles: tiled rel-L2 {rel[True]:.2e}, one-shot {rel[False]:.2e}, "
          f"one-shot vs tiled {apart:.2e}")
    assert rel[True] <= TOLERANCE and rel[False] <= TOLERANCE
    assert apart > 10 * TOLERANCE  # the tiles really change the result


def test_upstream_tile_default_and_old_bundles(lbm, tmp_path):
    """Bundles carry upstream's 128/16 tiles; bundles from before tiling (decoder_tiles null) get them too;
    a latent that fits in one tile decodes in one call; a bad option or overlap is refused."""
    from depthrt.errors import BundleError

    _, est, _ = lbm("lbm-depth")
    assert est.loop["decoder_tiles"]["latent_tile"] == 128 and est.loop["decoder_tiles"]["overlap"] == 16
    old = _with_tiles(est, tmp_path / "old", None)
    assert (old.tile, old.overlap) == (128, 16)
    image = np.random.default_rng(2).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    np.testing.assert_array_equal(est.predict(image, processing_resolution=128).depth,
                                  est.predict(image, processing_resolution=128, tiled_decode=False).depth)
    with pytest.raises(InputError, match="tiled_decode must be True or False"):
        est.predict(image, tiled_decode="yes")
    with pytest.raises(BundleError, match="overlap must be smaller than the tile"):
        _with_tiles(est, tmp_path / "bad", {"latent_tile": 8, "overlap": 8})


def test_lbm_above_the_old_range_matches_the_reference(lbm):
    """A 4:1 image at processing_resolution 1040 lands in the 2048x512 bucket scaled to 2080x520, above
    the 2048 the bundle used to refuse; decoded in one call (tiled_decode=False) on both sides."""
    from depthrt_export.diffusion.reference_lbm import run_lbm_reference

    _, est, (unet, vae, info) = lbm("lbm-depth")
    image = np.random.default_rng(6).integers(0, 256, (40, 160, 3), dtype=np.uint8)
    ref = run_lbm_reference(unet, vae, info, image, "depth", 1, resolution=1040, tile=None)
    got = est.predict(image, processing_resolution=1040, tiled_decode=False).depth
    rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    print(f"lbm-depth 160x40 @ 1040 (bucket 2080x520): rel-L2 {rel:.2e}")
    assert got.shape == (40, 160) and rel <= TOLERANCE


def _fake_decoder(xp, factor):
    """A decoder stand-in that needs the real tile geometry to agree: nearest upsampling of a nonlinear
    map plus the tile's own mean (so zero padding and each tile's extent change the result)."""
    def decode(z):
        y = xp.tanh(z[:, :3] * 0.7) + 30 * z[:, :3].mean(axis=(2, 3), keepdims=True) if xp is np else \
            (z[:, :3] * 0.7).tanh() + 30 * z[:, :3].mean(dim=(2, 3), keepdim=True)
        return y.repeat(factor, axis=2).repeat(factor, axis=3) if xp is np else \
            y.repeat_interleave(factor, 2).repeat_interleave(factor, 3)
    return decode


@pytest.mark.parametrize("latent_hw", [(112, 144), (130, 260)])
def test_numpy_tiler_equals_the_torch_tiler_at_upstreams_default(latent_hw):
    """At upstream's 128/16 tiles, on the 1152x896 bucket's latent (one row padded to 128, a 32-wide edge
    tile) and on one with an 18-row sliver and three columns: runtime and reference tilers agree."""
    import torch

    from depthrt.diffusion.lbm import decode_tiled, gaussian_weights, tile_starts
    from depthrt_export.diffusion.reference_lbm import tiled_decode

    assert tile_starts(144, 128, 16) == [0, 112] and tile_starts(112, 128, 16) == [0]
    assert tile_starts(260, 128, 16) == [0, 112, 224]
    g = gaussian_weights(5, 5)  # upstream's row midpoint is height / 2 (2.5), the column's (width - 1) / 2 (2)
    assert g[2, 2] == g[3, 2] > g[1, 2] and g[2, 1] == g[2, 3] < g[2, 2]
    z = np.random.default_rng(0).standard_normal((1, 4, *latent_hw)).astype(np.float32)
    ours = decode_tiled(_fake_decoder(np, 8), z, 128, 16, 8)
    ref = tiled_decode(_fake_decoder(torch, 8), torch.from_numpy(z), 8).numpy()
    assert ours.shape == ref.shape == (1, 3, latent_hw[0] * 8, latent_hw[1] * 8)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    one_shot = _fake_decoder(np, 8)(z)
    assert np.abs(ours - one_shot).max() > 1e-2  # tiles differ from one call (each tile's own mean)


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
