"""Every supported preset: a tiny checkpoint in its published layout, exported through the real
loader, matches the transformers pipeline (processor -> model -> post-process) at portrait,
landscape and odd image sizes from one bundle."""

import numpy as np
import pytest

from depthrt.presets import PRESETS
from depthrt.samples import synthetic_image

SUPPORTED = [p.name for p in PRESETS if p.status == "supported"]
# (height, width), chosen apart from the sizes export checks at: portrait, landscape, odd.
SIZES = [(517, 333), (360, 480), (701, 250), (251, 643)]
ACCEPTANCE_REL_L2 = 1e-2


@pytest.mark.parametrize("preset", SUPPORTED)
def test_export_matches_transformers(preset, tiny_bundle):
    bundle, manifest = tiny_bundle(preset)
    report = manifest["parity"]
    assert report["passed"], report
    # feed-forward: 3 sizes; diffusion (one step at 128 at export time): 2 non-square sizes
    assert len({r["size"] for r in report["images"]}) >= (2 if manifest.get("loop") else 3)
    assert report["worst_rel_l2"] <= min(ACCEPTANCE_REL_L2, report["tolerance"]["rel_l2"])
    assert manifest["source"]["untrained"] is True
    assert manifest["model"]["name"] == preset


@pytest.mark.parametrize("preset", ["depth-anything-v2-small", "dpt-beit-large-512", "zoedepth-nyu-kitti",
                                    "dpt-large"])
def test_parity_at_more_sizes(preset, tiny_bundle):
    from depthrt_export.check import run_check

    bundle, _ = tiny_bundle(preset)
    report = run_check(bundle, sizes=SIZES)
    worst = max(r["rel_l2"] for r in report["images"])
    print(f"{preset}: " + ", ".join(f"{r['size']} rel-L2 {r['rel_l2']:.2e}" for r in report["images"]))
    assert report["passed"] and worst <= ACCEPTANCE_REL_L2


def test_list_of_sizes_returns_each_at_its_size(tiny_bundle):
    import depthrt

    bundle, _ = tiny_bundle("depth-anything-v2-small")
    est = depthrt.load(bundle, backend="ort-cpu")
    images = [synthetic_image(h, w, seed=i) for i, (h, w) in enumerate(SIZES + [(360, 480)])]
    preds = est.predict(images)
    assert [p.depth.shape for p in preds] == [im.shape[:2] for im in images]
    assert all(p.depth.dtype == np.float32 for p in preds)
    # Batched (two 360x480 images run together) equals one at a time.
    single = est.predict(images[1]).depth
    np.testing.assert_allclose(preds[1].depth, single, rtol=1e-4, atol=1e-5)
    assert preds[0].kind == "relative_inverse_depth" and preds[0].units == "relative"


def test_every_supported_preset_has_a_parity_test():
    """Fails when a preset becomes supported without a tiny checkpoint to test it with."""
    from depthrt_export.tiny import DA3_VARIANTS, DIFFUSION_VARIANTS, VARIANTS

    missing = [p.name for p in PRESETS if p.status == "supported" and p.tiny not in (*VARIANTS, *DA3_VARIANTS, *DIFFUSION_VARIANTS)]
    assert missing == []
    assert set(SUPPORTED) == {p.name for p in PRESETS if p.status == "supported"}
    assert len(SUPPORTED) >= 18
