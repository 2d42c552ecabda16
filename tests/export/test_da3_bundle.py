"""Depth Anything 3 through the whole pipeline: tiny published-layout checkpoint -> bundle ->
runtime, against depthrt's PyTorch port (reference)."""

import json

import numpy as np
import pytest

import depthrt
from depthrt import metrics
from depthrt.samples import synthetic_image

SIZES = [(517, 333), (360, 480), (251, 643)]  # portrait, landscape, odd


@pytest.fixture(scope="module")
def mono(tiny_bundle, tiny_checkpoint):
    from depthrt_export.da3.loader import load_da3

    bundle, _ = tiny_bundle("da3-mono-large")
    model, _ = load_da3(tiny_checkpoint("da3mono-large"))
    return depthrt.load(bundle, backend="ort-cpu"), model


@pytest.mark.parametrize("size", SIZES)
def test_depth_and_sky_match_the_port(mono, size):
    from depthrt_export.da3 import reference

    est, model = mono
    image = synthetic_image(*size, seed=11)
    pred = est.predict(image)
    ref = reference.predict(model, image)
    assert pred.depth.shape == size and pred.sky.shape == size and pred.sky.dtype == bool
    assert metrics.centred_rel_l2(pred.depth, ref["depth"]) <= 1e-2
    assert np.mean(pred.sky != ref["sky"]) <= 1e-3
    assert pred.kind == "relative_depth"


def test_processing_resolution_is_honoured(mono):
    from depthrt_export.da3 import reference

    est, model = mono
    image = synthetic_image(400, 300, seed=3)
    default = est.predict(image).depth
    pred = est.predict(image, processing_resolution=280).depth
    ref = reference.predict(model, image, process_res=280)
    assert ref["processed_size"] == (280, 210)
    assert metrics.centred_rel_l2(pred, ref["depth"]) <= 1e-2
    assert metrics.centred_rel_l2(pred, default) > 1e-3  # it really ran at another size


def test_metric_returns_metres_with_focal(tiny_bundle, tiny_checkpoint):
    from depthrt_export.da3 import reference
    from depthrt_export.da3.loader import load_da3

    bundle, manifest = tiny_bundle("da3-metric-large")
    assert manifest["output"] == {**manifest["output"], "kind": "metric_depth", "units": "metres"}
    est = depthrt.load(bundle, backend="ort-cpu")
    model, _ = load_da3(tiny_checkpoint("da3metric-large"))
    image = synthetic_image(360, 480, seed=5)
    fx, fy = 500.0, 520.0
    pred = est.predict(image, focal_px=(fx, fy))
    ref = reference.predict(model, image, metric=True, fx=fx, fy=fy)
    assert pred.units == "metres" and pred.kind == "metric_depth"
    assert metrics.centred_rel_l2(pred.depth, ref["depth"]) <= 1e-2
    np.testing.assert_allclose(np.median(pred.depth), np.median(ref["depth"]), rtol=1e-3)
    plain = est.predict(image)
    assert "not metric" in plain.units and plain.kind == "relative_depth"
    # metres scale with the focal length
    np.testing.assert_allclose(est.predict(image, focal_px=(2 * fx, 2 * fy)).depth, 2 * pred.depth, rtol=1e-5)


def test_focal_on_a_model_without_focal_scale_is_refused(tiny_bundle):
    est = depthrt.load(tiny_bundle("da3-mono-large")[0], backend="ort-cpu")
    with pytest.raises(depthrt.InputError, match="focal_px"):
        est.predict(synthetic_image(100, 100), focal_px=(500, 500))


def test_models_says_the_multi_view_models_are_left_out():
    from conftest import run_cli

    out = run_cli("models").stdout
    assert "DA3MONO-LARGE" in out and "DA3METRIC-LARGE" in out and "multi-view" in out


def test_bad_checkpoints_give_clear_errors(tiny_checkpoint, tmp_path):
    import shutil

    from conftest import assert_clean_error, run_cli
    from safetensors.torch import load_file, save_file

    good = tiny_checkpoint("da3mono-large")
    wrong = tmp_path / "wrong"
    shutil.copytree(good, wrong)
    (wrong / "config.json").write_text(json.dumps({"model_name": "da3-giant"}))
    assert_clean_error(run_cli("export", "da3-mono-large", "--weights", str(wrong), "--out", str(tmp_path / "b")),
                       "da3-giant")
    missing = tmp_path / "missing"
    shutil.copytree(good, missing)
    tensors = load_file(missing / "model.safetensors")
    dropped = sorted(k for k in tensors if k.startswith("model.head."))[0]
    del tensors[dropped]
    save_file(tensors, missing / "model.safetensors")
    assert_clean_error(run_cli("export", "da3-mono-large", "--weights", str(missing), "--out", str(tmp_path / "c")),
                       dropped)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
