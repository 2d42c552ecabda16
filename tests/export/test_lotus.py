"""Lotus G and D, depth and normals: tiny folders in the published layout -> bundle -> numpy runtime,
checked against the PyTorch reference loop (Lotus' pipeline.py line by line); and the bad inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from depthrt.errors import InputError, WeightsError
from diffusion_bundles import family_maker

pytest.importorskip("diffusers")

PRESETS = {  # preset -> tiny variant
    "lotus-depth-g-v2-1-disparity": "lotus-depth-g",
    "lotus-depth-d-v2-0-disparity": "lotus-depth-d",
    "lotus-normal-g-v1-1": "lotus-normal-g",
    "lotus-normal-d-v1-1": "lotus-normal-d",
}
# (height, width, processing_resolution): downscaled non-square, upscaled, input size (0)
CASES = [(50, 75, 64), (41, 30, 88), (44, 58, 0)]
TOLERANCE = 1e-2


@pytest.fixture(scope="module")
def lotus(tmp_path_factory):
    """lotus(preset) -> (checkpoint folder, estimator, torch parts), made once per preset."""
    from depthrt_export.diffusion import lotus as lotus_export
    from depthrt_export.diffusion.tiny_lotus import write_tiny_lotus

    return family_maker(tmp_path_factory.mktemp("lotus"), lotus_export, write_tiny_lotus, PRESETS,
                        lambda ckpt, preset: lotus_export.load_lotus(ckpt, lotus_export.task_of(preset)))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_lotus_runtime_matches_reference_loop(lotus, preset):
    from depthrt_export.diffusion.lotus import processing_size
    from depthrt_export.diffusion.reference_lotus import run_lotus_reference

    _, est, parts = lotus(preset)
    assert est.loop["mode"] == parts.mode == ("g" if "-g-" in preset else "d")
    assert est.text_embedding.shape[1] == 2  # '' not padded: BOS, EOS
    rng = np.random.default_rng(1)
    for h, w, res in CASES:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ph, pw = processing_size(h, w, res)
        latents = rng.standard_normal((1, 4, ph // 8, pw // 8)).astype(np.float32) if parts.mode == "g" else None
        ref = run_lotus_reference(parts, image, latents, processing_res=res)
        pred = est.predict(image, processing_resolution=res, latents=latents)
        got = pred.depth if parts.task == "depth" else pred.normals
        assert got.shape == ref.shape == ((h, w) if parts.task == "depth" else (h, w, 3))
        rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
        print(f"{preset} {w}x{h} @ {res}: rel-L2 {rel:.2e}")
        assert rel <= TOLERANCE
        if parts.task == "normal":
            assert np.allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-4)


def test_lotus_beyond_the_old_range_and_its_own_minimum(lotus):
    """25x2000 at 768 becomes 9x768 (a 1x96 latent) and 100x1000 at 2100 becomes 210x2100: below and
    above the 32..2048 the bundle used to refuse, matching the reference loop; 20x2000 at 768 would be
    7 pixels high, less than one latent pixel, and is refused saying so."""
    from depthrt_export.diffusion.reference_lotus import run_lotus_reference

    _, est, parts = lotus("lotus-depth-d-v2-0-disparity")
    rng = np.random.default_rng(4)
    for h, w, res in ((25, 2000, 768), (100, 1000, 2100)):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = run_lotus_reference(parts, image, None, processing_res=res)
        got = est.predict(image, processing_resolution=res).depth
        rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
        print(f"lotus-d {w}x{h} @ {res}: rel-L2 {rel:.2e}")
        assert got.shape == (h, w) and rel <= TOLERANCE
    with pytest.raises(InputError, match="becomes 768x7 for the model: its height 7 is below the smallest this "
                                         "model runs at, 8"):
        est.predict(np.zeros((20, 2000, 3), np.uint8), processing_resolution=768)


def test_lotus_g_noise_changes_the_prediction(lotus):
    """G really consumes its noise: two draws give two maps (D has none)."""
    _, est, _ = lotus("lotus-depth-g-v2-1-disparity")
    image = np.random.default_rng(2).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    a = est.predict(image, processing_resolution=64, seed=0).depth
    b = est.predict(image, processing_resolution=64, seed=1).depth
    assert not np.allclose(a, b)


def test_lotus_bad_arguments(lotus):
    _, est, _ = lotus("lotus-depth-g-v2-1-disparity")
    image = np.zeros((50, 75, 3), np.uint8)
    with pytest.raises(InputError, match=r"needs \(1, 4, 5, 8\)"):  # 64 px long edge: 42x64 -> 5x8 latents
        est.predict(image, processing_resolution=64, latents=np.zeros((1, 4, 6, 8), np.float32))
    with pytest.raises(InputError, match="at least 1"):
        est.predict(image, num_inference_steps=0)
    with pytest.raises(InputError, match="one step"):
        est.predict(image, num_inference_steps=4)
    with pytest.raises(InputError, match="extreme aspect ratio"):
        est.predict(np.zeros((2000, 1, 3), np.uint8), processing_resolution=64)
    _, est_d, _ = lotus("lotus-depth-d-v2-0-disparity")
    with pytest.raises(InputError, match="takes no latents"):
        est_d.predict(image, processing_resolution=64, latents=np.zeros((1, 4, 5, 8), np.float32))


def test_lotus_bad_folders(lotus, tmp_path):
    from depthrt_export.diffusion.lotus import load_lotus

    ckpt, _, _ = lotus("lotus-depth-d-v2-0-disparity")
    broken = tmp_path / "no-vae"
    shutil.copytree(ckpt, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(WeightsError, match="'vae' component"):
        load_lotus(broken, "depth")
    other = tmp_path / "no-switcher"
    shutil.copytree(ckpt, other)
    config = json.loads((other / "unet" / "config.json").read_text())
    config["class_embed_type"] = None
    (other / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="task switcher"):
        load_lotus(other, "depth")
