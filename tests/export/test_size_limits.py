"""Every feed-forward family runs, on ort-cpu, at model sizes beyond the ranges bundles used to refuse
(they came from the default resolution: opt/4 .. 4*opt), and matches its PyTorch reference there; the
manifest records the model's own limits ("limits") beside TensorRT's profile ranges ("dynamic"), and
older bundles without them keep their ranges as limits."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import depthrt
from depthrt import metrics
from depthrt.errors import InputError
from depthrt.samples import synthetic_image

REL_L2 = 1e-2  # as test_parity's acceptance


class _SizedProcessor:
    """The checkpoint's processor with its resize box replaced, as predict(processing_resolution=R)
    does (depthrt.processing.with_resolution: height R, width R x the box's width/height)."""

    def __init__(self, processor, resolution: int):
        self._processor = processor
        size = processor.size
        ratio = size["width"] / size["height"]
        self._size = {"height": resolution, "width": max(1, int(round(resolution * ratio)))}

    def __call__(self, **kwargs):
        return self._processor(**kwargs, size=self._size)

    def __getattr__(self, name):
        return getattr(self._processor, name)


def _reference(preset: str, tiny_checkpoint, resolution: int):
    """image -> depth of the family's PyTorch reference at ``resolution``."""
    from depthrt.presets import find_preset
    from depthrt_export.specs import get_spec
    from depthrt_export.weights import resolve_weights

    p = find_preset(preset)
    if p.family == "da3":
        from depthrt_export.da3 import reference
        from depthrt_export.da3.loader import load_da3

        model, _ = load_da3(tiny_checkpoint(p.tiny))
        return lambda image: reference.predict(model, image, process_res=resolution)["depth"]
    spec = get_spec(p.family)
    ref = spec.reference(resolve_weights(str(tiny_checkpoint(p.tiny))))
    ref.processor = _SizedProcessor(ref.processor, resolution)
    if preset not in NEEDS_EXPORT_PATCH:
        return lambda image: ref(image)["depth"]

    def patched(image):
        with spec.patch(ref.model):
            return ref(image)["depth"]

    return patched


# transformers' ViT-hybrid embeddings refuse any size but the config's image_size (upstream never runs
# another: its processor is a fixed 384 box); the export patch interpolates the position embeddings as
# the plain DPT ViT does, and the reference runs with it.
NEEDS_EXPORT_PATCH = {"dpt-hybrid-midas"}


# preset -> [(image height, width, processing_resolution)]: one model input below the old range's
# minimum, one above its maximum (the old range in the comment).
CASES = {
    "dpt-large": [(120, 160, 64), (120, 160, 800)],  # fixed 384 box, 192..768, multiples of 32
    "dpt-hybrid-midas": [(120, 160, 64), (120, 160, 800)],  # the same
    "dpt-beit-large-512": [(90, 120, 64), (100, 1000, 2100)],  # keep aspect 512, 128..2048
    "zoedepth-nyu": [(90, 120, 64), (100, 1000, 1600)],  # keep aspect 384x512 box, 96..1536
    "depth-anything-small": [(90, 120, 56), (100, 1000, 2100)],  # keep aspect 518, 126..2072, multiples of 14
    "depth-anything-v2-small": [(90, 120, 56), (100, 1000, 2100)],
    "da3-mono-large": [(151, 83, 196), (100, 1000, 2100)],  # long side 504, 126..2016
}


@pytest.mark.parametrize("preset", list(CASES))
def test_sizes_beyond_the_old_range_run_and_match_pytorch(preset, tiny_bundle, tiny_checkpoint):
    bundle, manifest = tiny_bundle(preset)
    graph = manifest["graphs"][0]
    multiple = graph["dynamic"]["height"]["multiple_of"]
    assert graph["limits"]["height"] == graph["limits"]["width"] == {"min": multiple, "multiple_of": multiple}
    old = graph["dynamic"]
    est = depthrt.load(bundle, backend="ort-cpu")
    for (h, w, res), side in zip(CASES[preset], ("below", "above")):
        image = synthetic_image(h, w, seed=7)
        _, mh, mw = est.preprocess(image, processing_resolution=res)[0].shape
        outside = min(mh, mw) < old["height"]["min"] if side == "below" else max(mh, mw) > old["height"]["max"]
        assert outside, (preset, mh, mw)
        depth = est.predict(image, processing_resolution=res).depth
        rel = metrics.centred_rel_l2(depth, _reference(preset, tiny_checkpoint, res)(image))
        print(f"{preset} {w}x{h} @ {res} -> model {mw}x{mh} ({side} the old range): rel-L2 {rel:.2e}")
        assert depth.shape == (h, w) and rel <= REL_L2


def test_da3_processes_196_on_83x151_at_196x112_like_upstream(tiny_bundle, tiny_checkpoint):
    """The issue's case: upstream DA3 runs an 83x151 portrait at 196x112; we used to refuse it."""
    from depthrt_export.da3 import reference
    from depthrt_export.da3.loader import load_da3

    bundle, _ = tiny_bundle("da3-mono-large")
    est = depthrt.load(bundle, backend="ort-cpu")
    image = synthetic_image(151, 83, seed=3)
    tensor, meta = est.preprocess(image, processing_resolution=196)
    model, _ = load_da3(tiny_checkpoint("da3mono-large"))
    ref = reference.predict(model, image, process_res=196)
    assert tensor.shape[1:] == ref["processed_size"] == (196, 112)
    pred = est.predict(image, processing_resolution=196)
    assert metrics.centred_rel_l2(pred.depth, ref["depth"]) <= 1e-2
    assert np.mean(pred.sky != ref["sky"]) <= 1e-3


def test_limits_and_profile_ranges_side_by_side(tiny_bundle):
    bundle, _ = tiny_bundle("depth-anything-v2-small")
    est = depthrt.load(bundle, backend="ort-cpu")
    assert est.size_limits["height"] == {"min": 14, "max": None, "multiple_of": 14}
    assert est.size_ranges["height"]["min"] == 126  # TensorRT's default profile is unchanged
    with pytest.raises(InputError, match="too small or too thin"):  # 20 x 518/2000 px rounds to 0 patches
        est.predict(synthetic_image(20, 2000, seed=0))


def test_bundles_without_limits_keep_their_ranges(tiny_bundle, tmp_path):
    """A bundle exported before limits were recorded still validates and refuses outside its ranges,
    saying that a re-export lifts them."""
    bundle, _ = tiny_bundle("depth-anything-v2-small")
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for graph in manifest["graphs"]:
        del graph["limits"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    est = depthrt.load(old, backend="ort-cpu")
    assert est.size_limits["height"] == {"min": 126, "max": 2072, "multiple_of": 14}
    with pytest.raises(InputError, match=r"outside this bundle's supported height range 126..2072 \(an older "
                                         r"bundle: re-export it"):
        est.predict(synthetic_image(90, 120, seed=0), processing_resolution=56)
    assert est.predict(synthetic_image(90, 120, seed=0)).depth.shape == (90, 120)


def test_openvino_runs_the_same_sizes(tiny_bundle):
    """OpenVINO (the CPU default) runs beyond the old range too, as ONNX Runtime does."""
    pytest.importorskip("openvino")
    bundle, _ = tiny_bundle("depth-anything-v2-small")
    ort_est, ov_est = depthrt.load(bundle, backend="ort-cpu"), depthrt.load(bundle, backend="openvino")
    for (h, w, res) in CASES["depth-anything-v2-small"]:
        image = synthetic_image(h, w, seed=1)
        a = ort_est.predict(image, processing_resolution=res).depth
        b = ov_est.predict(image, processing_resolution=res).depth
        assert metrics.centred_rel_l2(b, a) <= 1e-3
