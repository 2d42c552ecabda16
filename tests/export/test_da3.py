"""Monocular Depth Anything 3: tiny checkpoint round trip, strict loading, ONNX dynamic sizes,
reference pipeline. CPU only, a few seconds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from depthrt.errors import InputError, WeightsError
from depthrt import cvresize
from depthrt_export.da3 import reference
from depthrt_export.da3.loader import KNOWN_MODELS, load_da3, out_layers_for
from depthrt_export.da3.tiny import write_tiny_da3


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_da3(tmp_path_factory.mktemp("da3") / "mono", "da3mono-large", seed=0)


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    return load_da3(tiny_dir)[0]


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _rewrite(src, dst, tensors=None, config=None):
    from safetensors.torch import save_file

    dst.mkdir(parents=True, exist_ok=True)
    save_file(tensors if tensors is not None else _tensors(src), str(dst / "model.safetensors"))
    cfg = config if config is not None else json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


# ------------------------------------------------------------------------------ loading


@pytest.mark.parametrize("name", sorted(KNOWN_MODELS))
def test_tiny_round_trip(tmp_path, name):
    d = write_tiny_da3(tmp_path / name, name, seed=3)
    assert json.loads((d / "config.json").read_text()) == {"model_name": name}
    tensors = _tensors(d)
    assert all(k.startswith(("model.backbone.pretrained.", "model.head.")) for k in tensors)
    assert "model.head.scratch.sky_output_conv2.2.weight" in tensors
    model, got = load_da3(d)
    assert got == name
    cfg = model.cfg
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.out_layers) == (128, 4, 2, (0, 1, 2, 3))
    assert cfg.out_channels == (16, 32, 64, 64) and cfg.features == 32 and cfg.head_hidden == 8
    state = model.state_dict()
    for k, v in tensors.items():
        assert torch.equal(state[k[len("model."):]], v), k
    x = torch.randn(2, 3, 14 * 5, 14 * 7)
    with torch.no_grad():
        depth, sky = model(x)
    assert depth.shape == sky.shape == (2, 70, 98)
    assert torch.isfinite(depth).all() and (depth > 0).all() and (sky >= 0).all()
    # same seed, same bytes; another seed, other weights
    again = _tensors(write_tiny_da3(tmp_path / "again", name, seed=3))
    other = _tensors(write_tiny_da3(tmp_path / "other", name, seed=4))
    assert all(torch.equal(again[k], v) for k, v in tensors.items())
    assert not torch.equal(other["model.head.projects.0.weight"], tensors["model.head.projects.0.weight"])


def test_out_layer_rule():
    assert out_layers_for("da3mono-large", 24) == (4, 11, 17, 23)
    assert out_layers_for("da3metric-large", 4) == (0, 1, 2, 3)
    assert out_layers_for("da3mono-large", 8) == (1, 3, 5, 7)
    for bad in (3, 25):
        with pytest.raises(WeightsError, match="transformer blocks"):
            out_layers_for("da3mono-large", bad)


def test_block_count_from_tensors(tmp_path, tiny_dir):
    tensors = _tensors(tiny_dir)
    # drop the last block entirely: 3 blocks -> refused (needs >= 4)
    fewer = {k: v for k, v in tensors.items() if ".blocks.3." not in k}
    with pytest.raises(WeightsError, match="3 transformer blocks"):
        load_da3(_rewrite(tiny_dir, tmp_path / "three", fewer))
    # a gap in the block indices shows up as missing keys
    gap = {k: v for k, v in tensors.items() if ".blocks.1." not in k}
    with pytest.raises(WeightsError, match=r"missing key\(s\): model\.backbone\.pretrained\.blocks\.1\."):
        load_da3(_rewrite(tiny_dir, tmp_path / "gap", gap))


def test_missing_and_unexpected_keys(tmp_path, tiny_dir):
    tensors = _tensors(tiny_dir)
    missing = dict(tensors)
    del missing["model.head.scratch.sky_output_conv2.2.bias"]
    with pytest.raises(WeightsError, match=r"1 missing key\(s\): model\.head\.scratch\.sky_output_conv2\.2\.bias"):
        load_da3(_rewrite(tiny_dir, tmp_path / "missing", missing))
    extra = dict(tensors)
    extra["model.backbone.pretrained.mask_token"] = torch.zeros(1, 128)
    extra["model.cam_dec.fc.weight"] = torch.zeros(2, 2)
    with pytest.raises(WeightsError, match="2 unexpected key.*model.backbone.pretrained.mask_token, model.cam_dec"):
        load_da3(_rewrite(tiny_dir, tmp_path / "extra", extra))
    many = {k: v for k, v in tensors.items() if not k.startswith("model.head.")}
    with pytest.raises(WeightsError, match=r"missing key\(s\): .* and \d+ more"):
        load_da3(_rewrite(tiny_dir, tmp_path / "many", many))
    shape = dict(tensors)
    shape["model.head.scratch.output_conv1.weight"] = torch.zeros(3, 32, 3, 3)
    with pytest.raises(WeightsError, match="wrong shape.*output_conv1.weight"):
        load_da3(_rewrite(tiny_dir, tmp_path / "shape", shape))


def test_model_name_and_files(tmp_path, tiny_dir):
    with pytest.raises(WeightsError, match="da3metric-large, da3mono-large"):
        load_da3(_rewrite(tiny_dir, tmp_path / "giant", config={"model_name": "da3-giant"}))
    with pytest.raises(WeightsError, match="model_name"):
        load_da3(_rewrite(tiny_dir, tmp_path / "noname", config={"name": "da3mono-large"}))
    # upper case is the same name
    assert load_da3(_rewrite(tiny_dir, tmp_path / "upper", config={"model_name": "DA3MONO-LARGE"}))[1] == "da3mono-large"
    pickle_dir = tmp_path / "pickle"
    pickle_dir.mkdir()
    (pickle_dir / "config.json").write_text(json.dumps({"model_name": "da3mono-large"}))
    (pickle_dir / "pytorch_model.bin").write_bytes(b"\x80\x02")
    with pytest.raises(WeightsError, match="pickle checkpoints are refused"):
        load_da3(pickle_dir)
    with pytest.raises(WeightsError, match="not a Depth Anything 3 checkpoint"):
        load_da3(pickle_dir / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="does not exist"):
        load_da3(tmp_path / "nowhere")
    no_cfg = tmp_path / "nocfg"
    _rewrite(tiny_dir, no_cfg)
    (no_cfg / "config.json").unlink()
    with pytest.raises(WeightsError, match="no config.json"):
        load_da3(no_cfg)
    broken = _rewrite(tiny_dir, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        load_da3(broken / "model.safetensors")
    # either file of a good checkpoint names the checkpoint
    assert load_da3(tiny_dir / "model.safetensors")[1] == "da3mono-large"


# ------------------------------------------------------------------------------ model


@pytest.mark.parametrize("grid", [(36, 27), (37, 37), (5, 40), (37, 20), (1, 1)])
def test_pos_embed_matches_bicubic_with_offset(tiny_model, grid):
    vit = tiny_model.backbone.pretrained
    m, c = vit.cfg.pos_grid, vit.cfg.embed_dim
    h, w = grid
    ours = vit.interpolate_pos_embed(torch.tensor(h), torch.tensor(w)).detach()
    pe = vit.pos_embed.detach()
    if (h, w) == (m, m):
        ref = pe  # upstream returns the table unchanged
    else:
        table = pe[:, 1:].reshape(1, m, m, c).permute(0, 3, 1, 2)
        up = F.interpolate(table, scale_factor=((h + 0.1) / m, (w + 0.1) / m), mode="bicubic")
        assert up.shape[-2:] == (h, w)
        ref = torch.cat([pe[:, :1], up.permute(0, 2, 3, 1).reshape(1, h * w, c)], dim=1)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-5)


def test_onnx_one_graph_every_size(tmp_path, tiny_model):
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "da3.onnx"
    torch.onnx.export(
        tiny_model,
        (torch.randn(1, 3, 14 * 8, 14 * 8),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["pixel_values"],
        output_names=["depth", "sky"],
        dynamic_axes={n: {0: "batch", 2 - (n != "pixel_values"): "height", 3 - (n != "pixel_values"): "width"}
                      for n in ("pixel_values", "depth", "sky")},
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    inputs = [
        np.random.default_rng(1).standard_normal((1, 3, 14 * 12, 14 * 7)).astype(np.float32),  # portrait
        np.random.default_rng(2).standard_normal((2, 3, 14 * 6, 14 * 13)).astype(np.float32),  # landscape
        # from an odd-sized image through the reference preprocessing (501x333 -> 504x336)
        reference.preprocess(rng.integers(0, 256, (333, 501, 3), dtype=np.uint8), resize_impl="numpy"),
    ]
    assert inputs[2].shape == (1, 3, 336, 504)
    for x in inputs:
        with torch.no_grad():
            depth, sky = tiny_model(torch.from_numpy(x))
        got_depth, got_sky = sess.run(None, {"pixel_values": x})
        assert got_depth.shape == tuple(depth.shape) == (x.shape[0], x.shape[2], x.shape[3])
        np.testing.assert_allclose(np.log(got_depth), np.log(depth.numpy()), rtol=0, atol=1e-4)
        np.testing.assert_allclose(got_sky, sky.numpy(), rtol=0, atol=1e-4)
        assert depth.std() > 1e-2 and sky.std() > 1e-2  # the tiny weights give varied outputs


# ------------------------------------------------------------------------------ reference


@pytest.mark.parametrize(
    "hw, first, second, size",
    [
        ((480, 640), ((504, 378), "area"), None, (378, 504)),
        ((3024, 4032), ((504, 378), "area"), None, (378, 504)),
        ((750, 1000), ((504, 378), "area"), None, (378, 504)),
        ((757, 1008), ((504, 378), "area"), None, (378, 504)),  # 378.5 rounds to even
        ((200, 300), ((504, 336), "cubic"), None, (336, 504)),
        ((377, 504), None, ((504, 378), "cubic"), (378, 504)),
        ((510, 504), ((498, 504), "area"), ((504, 504), "cubic"), (504, 504)),
        ((333, 501), ((504, 335), "cubic"), ((504, 336), "cubic"), (336, 504)),
        ((1000, 3), ((2, 504), "area"), ((14, 504), "cubic"), (504, 14)),  # upstream: width 1
        ((504, 385), None, ((392, 504), "cubic"), (504, 392)),  # 385 = 27.5 * 14: tie goes up
    ],
)
def test_resize_plan(hw, first, second, size):
    plan = reference.plan_resize(*hw)
    assert (plan.first, plan.second, plan.size) == (first, second, size)


def test_preprocess_normalises():
    img = np.full((20, 30, 3), (255, 128, 0), dtype=np.uint8)
    x = reference.preprocess(img, resize_impl="numpy")
    assert x.shape == (1, 3, 336, 504) and x.dtype == np.float32
    expect = (np.array([255, 128, 0], np.float32) / np.float32(255) - reference.MEAN) / reference.STD
    np.testing.assert_allclose(x[0, :, 100, 100], expect, atol=1e-6)
    with pytest.raises(InputError):
        reference.preprocess(np.zeros((4, 4, 2), np.uint8))


def test_apply_sky():
    depth = torch.arange(100, dtype=torch.float32).reshape(10, 10) + 1
    sky = torch.zeros(10, 10)
    sky[:3] = 0.9  # 30 sky pixels
    sky[3, :5] = 0.4  # sky >= 0.3 (filled) but < 0.5 (not in the mask)
    filled, mask = reference.apply_sky(depth, sky)
    far = torch.quantile(depth[sky < 0.3], 0.99)
    assert torch.equal(filled[sky >= 0.3], torch.full((35,), float(far)))
    assert torch.equal(filled[sky < 0.3], depth[sky < 0.3])
    assert int(mask.sum()) == 30
    few = torch.zeros(10, 10)
    few[0, :10] = 0.9  # exactly 10 sky pixels: left alone
    assert torch.equal(reference.apply_sky(depth, few)[0], depth)


def test_predict_resizes_back_and_scales_metric(tmp_path, tiny_model):
    img = np.random.default_rng(0).integers(0, 256, (61, 47, 3), dtype=np.uint8)
    kw = dict(process_res=112, resize_impl="numpy")  # small, to stay fast
    out = reference.predict(tiny_model, img, **kw)
    assert out["depth"].shape == out["sky"].shape == (61, 47) and out["sky"].dtype == bool
    assert out["processed_size"] == (112, 84)  # 47 * 112 / 61 = 86.3 -> 86 -> 84
    metric = reference.predict(tiny_model, img, metric=True, fx=50.0, fy=60.0, **kw)
    focal = 0.5 * (50.0 * 84 / 47 + 60.0 * 112 / 61)
    assert metric["focal_processed"] == pytest.approx(focal)
    np.testing.assert_allclose(metric["depth"], out["depth"] * focal / 300, rtol=1e-5)
    with pytest.raises(InputError):
        reference.predict(tiny_model, img, metric=True, fx=50.0, **kw)


def test_cvresize_against_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for (sh, sw), (dw, dh), interp in [
        ((480, 640), (504, 378), "area"),
        ((756, 1008), (504, 378), "area"),  # ratio 2 shortcut
        ((1134, 1512), (504, 378), "area"),  # ratio 3 shortcut
        ((380, 505), (504, 378), "area"),
        ((200, 300), (504, 336), "cubic"),
        ((377, 504), (504, 378), "cubic"),
    ]:
        img = rng.integers(0, 256, (sh, sw, 3), dtype=np.uint8)
        flag = cv2.INTER_AREA if interp == "area" else cv2.INTER_CUBIC
        want = cv2.resize(img, (dw, dh), interpolation=flag).astype(int)
        diff = np.abs(cvresize.resize(img, (dw, dh), interp).astype(int) - want)
        if interp == "area":
            assert diff.max() == 0
        else:
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-4
