"""depthrt.processing against the real transformers image processors (PIL backends).

The references are built by AutoImageProcessor from preprocessor_config.json files in
the published format of Intel/dpt-large, depth-anything/Depth-Anything-V2-Small-hf and
Intel/zoedepth-nyu (plus variants that exercise every knob). Tests may use torch and
transformers; depthrt.processing itself must not (see test_lean_import.py).
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# Fallback for runs without PYTHONPATH=runtime:export (appended, so PYTHONPATH wins).
_ROOT = Path(__file__).resolve().parents[2]
sys.path.append(str(_ROOT / "runtime"))
sys.path.append(str(_ROOT / "export"))

from depthrt.errors import InputError  # noqa: E402
from depthrt.processing import interpolate, postprocess, preprocess  # noqa: E402
from depthrt_export.hf_processing import processing_from_hf  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# As published (legacy feature-extractor format: int size, bilinear).
DPT_LARGE = {
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "DPTFeatureExtractor",
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
    "size": 384,
}
DEPTH_ANYTHING_V2_SMALL = {
    "do_normalize": True,
    "do_pad": False,
    "do_rescale": True,
    "do_resize": True,
    "ensure_multiple_of": 14,
    "image_mean": IMAGENET_MEAN,
    "image_processor_type": "DPTImageProcessor",
    "image_std": IMAGENET_STD,
    "keep_aspect_ratio": True,
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 518, "width": 518},
    "size_divisor": None,
}
ZOEDEPTH_NYU = {
    "do_normalize": True,
    "do_pad": True,
    "do_rescale": True,
    "do_resize": True,
    "ensure_multiple_of": 32,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "ZoeDepthImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "keep_aspect_ratio": True,
    "resample": 2,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 384, "width": 512},
}
DPT_CONFIGS = {
    "dpt-large": DPT_LARGE,
    "depth-anything-v2-small": DEPTH_ANYTHING_V2_SMALL,
    # dpt-beit-large-512 style: keep aspect, multiple of 32, bicubic
    "dpt-keep-aspect-32": {"image_processor_type": "DPTImageProcessor", "size": {"height": 512, "width": 512},
                           "keep_aspect_ratio": True, "ensure_multiple_of": 32, "resample": 3},
    # centred zero padding to a multiple of size_divisor, after normalize
    "dpt-pad-divisor": {**DEPTH_ANYTHING_V2_SMALL, "do_pad": True, "size_divisor": 32,
                        "ensure_multiple_of": 1, "size": [300, 400]},
    "dpt-no-resize": {**DEPTH_ANYTHING_V2_SMALL, "do_resize": False, "do_normalize": False},
    "dpt-defaults": {"image_processor_type": "DPTImageProcessor"},
}
ZOE_CONFIGS = {
    "zoedepth-nyu": ZOEDEPTH_NYU,
    "zoedepth-bicubic": {**ZOEDEPTH_NYU, "resample": 3},
    "zoedepth-no-pad": {**ZOEDEPTH_NYU, "do_pad": False},
    "zoedepth-defaults": {"image_processor_type": "ZoeDepthImageProcessor"},  # ensure_multiple_of = 1/32
}
SIZES = [(333, 517), (480, 360), (250, 701), (37, 53)]


class _TorchvisionResize:
    """Stand-in for torchvision.transforms.v2.functional where torchvision is missing.

    ZoeDepthImageProcessorPil.post_process_depth_estimation calls tvF.resize(CHW float,
    size, BICUBIC, antialias=False); torchvision's resize_image returns the input when the
    size is unchanged and otherwise calls F.interpolate(align_corners=False) on 1CHW.
    """

    class InterpolationMode:
        BICUBIC = "bicubic"

    @staticmethod
    def resize(image, size, interpolation, antialias):
        if tuple(size) == tuple(image.shape[-2:]):
            return image
        return torch.nn.functional.interpolate(image[None], size=list(size), mode=interpolation,
                                               align_corners=False, antialias=antialias)[0]


def _hf_processor(config, tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    proc = transformers.AutoImageProcessor.from_pretrained(str(tmp_path))
    assert type(proc).__name__.endswith("Pil"), type(proc)  # no torchvision: the PIL backend
    return proc


def _image(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def _specs(config):
    pre, post = processing_from_hf(config)
    # the specs live in manifest.json: they must survive a JSON round trip unchanged
    assert json.loads(json.dumps(pre)) == pre and json.loads(json.dumps(post)) == post
    return json.loads(json.dumps(pre)), json.loads(json.dumps(post))


def _rel_err(ours, ref):
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


# ------------------------------------------------------------------ preprocessing

@pytest.mark.parametrize("name", sorted(DPT_CONFIGS))
def test_dpt_preprocess_is_bit_identical(name, tmp_path):
    proc = _hf_processor(DPT_CONFIGS[name], tmp_path)
    pre, _ = _specs(DPT_CONFIGS[name])
    for i, shape in enumerate(SIZES):
        image = _image(shape, seed=i)
        ref = proc(images=image, return_tensors="np")["pixel_values"][0]
        ours, meta = preprocess(image, pre)
        assert ours.dtype == np.float32 and ours.flags["C_CONTIGUOUS"]
        assert ours.shape == ref.shape, (name, shape)
        np.testing.assert_array_equal(ours, ref.astype(np.float32), err_msg=f"{name} {shape}")
        assert meta["input_size"] == list(shape) and meta["model_size"] == list(ours.shape[1:])


@pytest.mark.parametrize("name", sorted(ZOE_CONFIGS))
def test_zoedepth_preprocess_matches(name, tmp_path):
    proc = _hf_processor(ZOE_CONFIGS[name], tmp_path)
    pre, _ = _specs(ZOE_CONFIGS[name])
    for i, shape in enumerate(SIZES):
        image = _image(shape, seed=i)
        ref = proc(images=image, return_tensors="np")["pixel_values"][0]
        ours, _ = preprocess(image, pre)
        assert ours.shape == ref.shape, (name, shape)
        # torch interpolate emulated to the fused multiply-add: equal but for a rare ulp
        assert np.abs(ours - ref).max() <= 1e-5, (name, shape, np.abs(ours - ref).max())
        assert (ours == ref).mean() > 0.99, (name, shape)


# ------------------------------------------------------------------ postprocessing

@pytest.mark.parametrize("name", ["dpt-large", "depth-anything-v2-small", "dpt-pad-divisor"])
def test_dpt_postprocess_matches(name, tmp_path):
    from transformers.modeling_outputs import DepthEstimatorOutput

    proc = _hf_processor(DPT_CONFIGS[name], tmp_path)
    pre, post = _specs(DPT_CONFIGS[name])
    rng = np.random.default_rng(1)
    for shape in SIZES + [(1080, 1920)]:
        _, meta = preprocess(_image(shape), pre)
        for out_size in (meta["model_size"], [s // 2 for s in meta["model_size"]]):
            depth = (rng.random(out_size, dtype=np.float32) * 10).astype(np.float32)
            ref = proc.post_process_depth_estimation(
                DepthEstimatorOutput(predicted_depth=torch.from_numpy(depth)[None]),
                target_sizes=[shape])[0]["predicted_depth"].numpy()
            ours = postprocess(depth, meta, post)
            assert ours.shape == ref.shape == shape and ours.dtype == np.float32
            assert _rel_err(ours, ref) < 1e-6, (name, shape, out_size)


@pytest.mark.parametrize("name", ["zoedepth-nyu", "zoedepth-no-pad"])
def test_zoedepth_postprocess_matches(name, tmp_path, monkeypatch):
    from transformers.models.zoedepth import image_processing_pil_zoedepth as zoe_module
    from transformers.models.zoedepth.modeling_zoedepth import ZoeDepthDepthEstimatorOutput

    if not hasattr(zoe_module, "tvF"):
        monkeypatch.setattr(zoe_module, "tvF", _TorchvisionResize, raising=False)
    proc = _hf_processor(ZOE_CONFIGS[name], tmp_path)
    pre, post = _specs(ZOE_CONFIGS[name])
    assert post["remove_padding"] == ZOE_CONFIGS[name]["do_pad"]
    rng = np.random.default_rng(2)
    for shape in SIZES + [(1080, 1920)]:
        _, meta = preprocess(_image(shape), pre)
        for out_size in (meta["model_size"], [s // 2 for s in meta["model_size"]]):
            depth = (rng.random(out_size, dtype=np.float32) * 10).astype(np.float32)
            outputs = ZoeDepthDepthEstimatorOutput(predicted_depth=torch.from_numpy(depth)[None])
            ref = proc.post_process_depth_estimation(outputs, source_sizes=[shape])[0]["predicted_depth"]
            ref2 = proc.post_process_depth_estimation(outputs, source_sizes=[shape],
                                                      target_sizes=[shape])[0]["predicted_depth"]
            assert torch.equal(ref, ref2)
            ours = postprocess(depth, meta, post)
            assert ours.shape == tuple(ref.shape) == shape
            assert _rel_err(ours, ref.numpy()) < 1e-6, (name, shape, out_size)


def test_postprocess_target_size_and_leading_axes():
    pre, post = processing_from_hf(DEPTH_ANYTHING_V2_SMALL)
    _, meta = preprocess(_image((100, 150)), pre)
    depth = np.random.default_rng(3).random(meta["model_size"], dtype=np.float32)
    assert postprocess(depth[None, None], meta, post).shape == (100, 150)
    out = postprocess(depth, meta, post, target_size=(40, 60))
    ref = torch.nn.functional.interpolate(torch.from_numpy(depth)[None, None], (40, 60), mode="bicubic",
                                          align_corners=False)[0, 0].numpy()
    assert _rel_err(out, ref) < 1e-6
    with pytest.raises(InputError):
        postprocess(depth.astype(np.int32), meta, post)
    with pytest.raises(InputError):
        postprocess(np.zeros((2, 3, 4), np.float32), meta, post)


def test_remove_padding_after_resize_crops_the_pad():
    # Not a transformers behaviour (DPT's post-process keeps the pad): depthrt's option.
    pre, post = processing_from_hf(DPT_CONFIGS["dpt-pad-divisor"])
    post = {**post, "remove_padding": True}
    _, meta = preprocess(_image((250, 701)), pre)
    top, bottom, left, right = meta["pad"]
    (h, w), (ph, pw) = meta["model_size"], meta["pad_stage_size"]
    assert (h, w) == (320, 864) and (ph, pw) == (300, 841)  # keep aspect: fit height
    depth = np.full((h, w), 1000.0, np.float32)
    inner = np.random.default_rng(7).random((ph, pw), dtype=np.float32)
    depth[top:h - bottom, left:w - right] = inner
    ref = interpolate(inner, (250, 701))
    np.testing.assert_array_equal(postprocess(depth, meta, post), ref)


# ------------------------------------------------------------------ interpolation

INTERP_CASES = [((518, 518), (1080, 1920)), ((518, 686), (333, 517)), ((37, 53), (5, 7)),
                ((100, 80), (33, 250)), ((1, 7), (5, 3)), ((7, 9), (1, 1)), ((50, 60), (50, 13)),
                ((10, 10), (10, 10)), ((2, 2), (64, 48)), ((384, 512), (1080, 1440))]


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_interpolate_matches_torch(mode, align_corners):
    rng = np.random.default_rng(4)
    for src, dst in INTERP_CASES:
        x = (rng.standard_normal(src) * 10).astype(np.float32)
        ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], dst, mode=mode,
                                              align_corners=align_corners)[0, 0].numpy()
        fast = interpolate(x, dst, mode, align_corners)
        exact = interpolate(x, dst, mode, align_corners, exact=True)
        assert fast.shape == exact.shape == tuple(dst) and fast.dtype == np.float32
        assert _rel_err(fast, ref) < 1e-6, (src, dst)
        assert _rel_err(exact, ref) < 1e-6, (src, dst)
        if min(src) >= 50:  # tiny inputs take other ATen code paths that round differently
            assert (exact == ref).mean() > 0.99, (src, dst, (exact == ref).mean())


def test_interpolate_channels_and_errors():
    x = np.random.default_rng(5).random((3, 20, 30), dtype=np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None], (41, 17), mode="bilinear",
                                          align_corners=True)[0].numpy()
    assert _rel_err(interpolate(x, (41, 17), "bilinear", True), ref) < 1e-6
    with pytest.raises(InputError):
        interpolate(x, (0, 5))
    with pytest.raises(InputError):
        interpolate(x, (5, 5), mode="area")


def test_interpolate_1080p_speed():
    x = np.random.default_rng(6).random((518, 518), dtype=np.float32)
    interpolate(x, (1080, 1920))
    best = min(_timed(lambda: interpolate(x, (1080, 1920))) for _ in range(5))
    assert best < 0.2, best  # about 15 ms on one core; loose so that busy CI machines pass


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ------------------------------------------------------------------ validation and specs

@pytest.mark.parametrize("image, needle", [
    (np.zeros((20, 30, 3), np.float32), "uint8"),
    (np.zeros((20, 30), np.uint8), "shape"),
    (np.zeros((20, 30, 4), np.uint8), "shape"),
    (np.zeros((0, 30, 3), np.uint8), "empty"),
    ([[0, 0, 0]], "numpy array"),
    (np.zeros((1, 700, 3), np.uint8), "too small"),  # would be resized to 0x700-ish
])
def test_preprocess_rejects_bad_images(image, needle):
    pre, _ = processing_from_hf(DEPTH_ANYTHING_V2_SMALL)
    with pytest.raises(InputError, match=needle) as info:
        preprocess(image, pre)
    assert "\n" not in str(info.value)


def test_spec_contents():
    pre, post = processing_from_hf(DEPTH_ANYTHING_V2_SMALL)
    assert pre["order"] == ["resize", "rescale", "normalize", "pad"]
    assert pre["resize"] == {"enabled": True, "height": 518, "width": 518, "keep_aspect": True,
                             "multiple_of": 14, "resample": "bicubic", "backend": "pil",
                             "align_corners": None}
    assert pre["pad"]["enabled"] is False
    assert post == {"resize": "bicubic", "align_corners": False, "remove_padding": False}
    pre, post = processing_from_hf(ZOEDEPTH_NYU)
    assert pre["order"] == ["rescale", "pad", "resize", "normalize"]
    assert pre["resize"]["backend"] == "torch" and pre["resize"]["align_corners"] is True
    assert pre["pad"]["rule"] == "zoedepth" and pre["pad"]["mode"] == "reflect"
    assert post["remove_padding"] is True
    assert processing_from_hf({"image_processor_type": "ZoeDepthImageProcessor"})[0]["resize"][
        "multiple_of"] == 1 / 32


def test_unknown_processor_type_is_named():
    with pytest.raises(ValueError, match="GLPNImageProcessor"):
        processing_from_hf({"image_processor_type": "GLPNImageProcessor"})
    with pytest.raises(ValueError, match="None"):
        processing_from_hf({})
    with pytest.raises(ValueError, match="size"):
        processing_from_hf({**DEPTH_ANYTHING_V2_SMALL, "size": {"shortest_edge": 518}})
