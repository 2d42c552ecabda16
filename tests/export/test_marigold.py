"""Marigold: tiny diffusers pipelines -> bundle -> numpy runtime, against diffusers with the same latents."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from depthrt.diffusion import load_diffusion
from depthrt.errors import BundleError, InputError, WeightsError
from depthrt.manifest import SCHEMA_VERSION, read_manifest, validate_manifest, write_json_atomic
from depthrt.presets import find_preset
from depthrt.samples import synthetic_image

pytest.importorskip("diffusers")

# preset -> (tiny variant, image size (h, w) checked at processing_resolution 128)
CASES = {
    "marigold-depth-v1-1": ("marigold-depth", (517, 333)),
    "marigold-normals-v1-1": ("marigold-normals", (240, 401)),
    "marigold-depth-lcm-v1-0": ("marigold-depth-lcm", (301, 415)),
}


def write_bundle(preset_name: str, weights, out):
    """What depthrt export does for these families: the graphs + manifest fields, then manifest.json."""
    from depthrt_export.diffusion import export_diffusion_bundle

    out.mkdir(parents=True)
    fields = export_diffusion_bundle(find_preset(preset_name), str(weights), out, 17)
    manifest = {"schema_version": SCHEMA_VERSION, **fields, "tools": {}, "parity": None}
    validate_manifest(manifest)
    write_json_atomic(out / "manifest.json", manifest)
    return out, manifest


@pytest.fixture(scope="module")
def marigold(tmp_path_factory):
    """marigold(preset) -> (weights folder, bundle folder), written and exported once per preset."""
    from depthrt_export.diffusion.tiny_marigold import write_tiny_marigold

    root = tmp_path_factory.mktemp("marigold")
    made = {}

    def make(preset_name):
        if preset_name not in made:
            variant = CASES[preset_name][0]
            weights = write_tiny_marigold(variant, root / "weights" / variant)
            bundle, _ = write_bundle(preset_name, weights, root / "bundles" / preset_name)
            made[preset_name] = (weights, bundle)
        return made[preset_name]

    return make


@pytest.mark.parametrize("preset_name", list(CASES))
def test_matches_diffusers_with_the_same_latents(marigold, preset_name):
    from depthrt_export.diffusion.check_marigold import format_report, run_check

    weights, bundle = marigold(preset_name)
    report = run_check(bundle, weights=str(weights), sizes=(CASES[preset_name][1],), processing_resolution=128)
    print(format_report(report))
    assert report["passed"], format_report(report)
    steps = {r["steps"] for r in report["images"]}
    assert steps == ({1} if "lcm" in preset_name else {1, 4})
    assert report["worst_rel_l2"] <= 1e-2
    assert all(r["rel_l2_plain"] <= 1e-2 for r in report["images"])


def test_bundle_layout_and_loop(marigold):
    _, bundle = marigold("marigold-depth-v1-1")
    manifest = read_manifest(bundle)
    names = ["vae_encoder", "unet", "vae_decoder"]
    assert [(g["name"], g["precision"]) for g in manifest["graphs"]] == [(n, "fp32") for n in names] + \
        [(n, "fp16") for n in names]  # fp16 variants with calibrated fp32 islands (test_diffusion_fp16)
    for graph in manifest["graphs"]:
        assert (bundle / graph["external_data"]).is_file()  # weights always in external data
    loop = manifest["loop"]
    assert loop["type"] == "marigold" and loop["task"] == "depth" and loop["default_steps"] == 4
    assert loop["scheduler"]["class"] == "DDIMScheduler" and loop["scheduler"]["timestep_spacing"] == "trailing"
    assert loop["scheduler"]["alphas_cumprod"][-1] == pytest.approx(0.0, abs=1e-12)  # zero terminal SNR
    emb = np.load(bundle / loop["text_embedding"]["file"])
    assert emb.shape == (1, 2, 32) and emb.dtype == np.float32  # BOS + EOS, not padded to 77
    assert manifest["output"]["kind"] == "relative_depth"


def test_predict_outputs_and_seed(marigold):
    _, bundle = marigold("marigold-normals-v1-1")
    est = load_diffusion(bundle, read_manifest(bundle), "ort-cpu")
    image = synthetic_image(90, 150, seed=3)
    a = est.predict(image, num_inference_steps=1, processing_resolution=64, seed=7)
    b = est.predict(image, num_inference_steps=1, processing_resolution=64, seed=7)
    assert a.depth is None and a.normals.shape == (90, 150, 3) and a.kind == "normals"
    np.testing.assert_allclose(np.linalg.norm(a.normals, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a.normals, b.normals)
    ens = est.predict([image, image[:60]], num_inference_steps=1, ensemble_size=3, processing_resolution=64, seed=1)
    assert [p.normals.shape for p in ens] == [(90, 150, 3), (60, 150, 3)]

    _, bundle = marigold("marigold-depth-v1-1")
    est = load_diffusion(bundle, read_manifest(bundle), "ort-cpu")
    p = est.predict(image, num_inference_steps=2, ensemble_size=3, processing_resolution=64, seed=0)
    assert p.depth.shape == (90, 150) and p.depth.dtype == np.float32
    # merged and rescaled to [0, 1] at the processing size; bilinear resizing back stays inside
    assert 0.0 <= p.depth.min() < 0.1 and 0.9 < p.depth.max() <= 1.0


def test_bad_inputs_are_clear(marigold):
    _, bundle = marigold("marigold-depth-v1-1")
    est = load_diffusion(bundle, read_manifest(bundle), "ort-cpu")
    image = synthetic_image(100, 140, seed=0)
    with pytest.raises(InputError, match=r"latents .* have shape \(1, 4, 5, 5\).*needs \(1, 4, 12, 16\)"):
        est.predict(image, processing_resolution=128, latents=np.zeros((1, 4, 5, 5), np.float32))
    with pytest.raises(InputError, match="needs \\(2, 4, 12, 16\\)"):
        est.predict(image, processing_resolution=128, ensemble_size=2, latents=np.zeros((1, 4, 12, 16), np.float32))
    for steps in (0, -3):
        with pytest.raises(InputError, match="num_inference_steps must be a whole number of at least 1"):
            est.predict(image, num_inference_steps=steps, processing_resolution=64)
    with pytest.raises(InputError, match="ensemble_size"):
        est.predict(image, ensemble_size=0, processing_resolution=64)
    with pytest.raises(InputError, match="multiple of 8"):
        est.predict(image, processing_resolution=100)
    with pytest.raises(InputError, match="extreme aspect ratio"):
        est.predict(np.zeros((1, 2000, 3), np.uint8), processing_resolution=768)
    with pytest.raises(InputError, match="uint8"):
        est.predict(image.astype(np.float32))


def test_sizes_beyond_the_old_range_match_diffusers(marigold):
    """20x2000 at 768 is a 7x768 image padded to 8x768 (a 1x96 latent), 100x1000 at 2056 a 208x2056 one:
    below and above the 32..2048 the bundle used to refuse, both as diffusers runs them."""
    from depthrt_export.diffusion.check_marigold import format_report, run_check

    weights, bundle = marigold("marigold-depth-v1-1")
    assert read_manifest(bundle)["graphs"][0]["limits"]["height"] == {"min": 8, "multiple_of": 8}
    for size, res in (((20, 2000), 768), ((100, 1000), 2056)):
        report = run_check(bundle, weights=str(weights), sizes=(size,), processing_resolution=res, steps=(1,))
        print(format_report(report))
        assert report["passed"] and report["worst_rel_l2"] <= 1e-2, format_report(report)


def test_missing_component_and_damaged_bundle(marigold, tmp_path):
    weights, bundle = marigold("marigold-depth-v1-1")
    broken = tmp_path / "pipeline"
    shutil.copytree(weights, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(WeightsError, match="lacks its 'vae' component"):
        write_bundle("marigold-depth-v1-1", broken, tmp_path / "out")
    (broken / "model_index.json").unlink()
    with pytest.raises(WeightsError, match="no model_index.json"):
        write_bundle("marigold-depth-v1-1", broken, tmp_path / "out2")

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    np.save(copy / manifest["loop"]["text_embedding"]["file"], np.zeros((1, 2, 32), np.float32))
    with pytest.raises(BundleError, match="does not match its manifest entry"):
        load_diffusion(copy, read_manifest(copy), "ort-cpu")
