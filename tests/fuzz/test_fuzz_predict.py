"""Fuzzing ``predict``'s arguments: any value of any type gives a depth map of the image's size or one clear error.

Images of every shape, dtype and memory layout (empty, 1-pixel, huge aspect ratios, non-contiguous,
read-only, NaN floats, lists, None), processing resolutions of every type and range (0, negative,
huge, NaN, floats, strings, bools), ``focal_px`` values and the diffusion options (steps, ensemble
size, seed, latents, tiled_decode) on tiny bundles on ort-cpu. The outcome is a DepthrtError with one
line, or predictions whose maps have each image's height and width and are finite.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from fuzzing import bounded, clear_error, examples, fuzz_summary, record  # noqa: F401  (fixture)
from hypothesis import example, given
from hypothesis import strategies as st

import depthrt
from depthrt.errors import DepthrtError, InputError

FEED_FORWARD = "depth-anything-v2-small"
ODD_NUMBERS = st.sampled_from([0, 1, -1, 7, 8, 13, 14, 64, 511, 518, 2**15, 10**6, 10**12, 2**63, -2**63, True,
                               False, 1.5, 518.0, math.nan, math.inf, -math.inf, "518", None, [518], np.int64(266),
                               np.float32(266.0), np.uint8(200)])


@st.composite
def rgb(draw):
    """A uint8 RGB image of any size from 1x1 up, extreme aspect ratios included."""
    h, w = draw(st.integers(1, 96)), draw(st.integers(1, 96))
    if draw(st.integers(0, 4)) == 0:
        h, w = draw(st.sampled_from([(1, 600), (600, 1), (2, 900), (14, 14), (13, 13), (1, 1), (15, 700)]))
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(0, 256, (h, w, 3), dtype=np.uint8)


def views(image: np.ndarray, how: str) -> np.ndarray:
    """The same pixels non-contiguous, reversed, Fortran-ordered or read-only."""
    if how == "reverse":
        return image[::-1, ::-1]
    if how == "fortran":
        return np.asfortranarray(image)
    if how == "strided":
        return np.repeat(image, 2, axis=1)[:, ::2]
    image = image.copy()
    image.setflags(write=False)
    return image


def wrong_dtype(image: np.ndarray, dtype, poison) -> np.ndarray:
    out = image.astype(dtype)
    if np.issubdtype(dtype, np.floating):
        out.flat[0] = poison
    return out


def wrong_shapes(image: np.ndarray):
    return st.sampled_from([image[:, :, 0], image[:, :, :1], np.dstack([image, image[:, :, :1]]), image[None],
                            image[:0], image[:, :0], np.zeros((0, 0, 3), np.uint8), image.transpose(2, 0, 1)])


# Valid images three times as often as each kind of wrong input.
images = st.one_of(
    rgb(), rgb(), rgb(),
    st.builds(views, rgb(), st.sampled_from(["reverse", "fortran", "readonly", "strided"])),
    st.builds(wrong_dtype, rgb(), st.sampled_from([np.float32, np.float64, np.uint16, np.int8, np.int64, bool,
                                                   np.float16]), st.sampled_from([math.nan, math.inf, -1.0, 300.0])),
    rgb().flatmap(wrong_shapes),
    st.sampled_from([None, "image.png", 3, [[1, 2, 3]], b"\x89PNG", object()]),
)


def check_predictions(preds, inputs) -> None:
    for pred, image in zip(preds, inputs):
        out = pred.depth if pred.depth is not None else pred.normals
        assert out.shape[:2] == image.shape[:2], (out.shape, image.shape)
        assert out.dtype == np.float32 and np.isfinite(out).all()


def run_case(test: str, call, inputs) -> None:
    try:
        with bounded():
            result = call()
    except DepthrtError as exc:
        clear_error(test, exc)
        return
    check_predictions(result if isinstance(result, list) else [result], inputs)
    record(test, "result")


@pytest.fixture(scope="module")
def load(tiny_bundle):
    """load(preset) -> its tiny bundle's estimator on ort-cpu, loaded once per module."""
    loaded = {}

    def get(name: str):
        if name not in loaded:
            loaded[name] = depthrt.load(tiny_bundle(name)[0], backend="ort-cpu")
        return loaded[name]

    return get


@pytest.fixture(scope="module")
def estimator(load):
    return load(FEED_FORWARD)


@examples(80)
@given(images, st.none() | st.integers(-10, 1000) | ODD_NUMBERS)
@example(np.zeros((40, 60, 3), np.uint8), 100_000)  # regression: a 100000x150000 resize (was a MemoryError)
@example(np.zeros((40, 60, 3), np.uint8), math.inf)  # regression (long run): OverflowError from int(inf)
@example(np.zeros((40, 60, 3), np.uint8), math.nan)  # regression (long run): ValueError from int(nan)
def test_feed_forward_predict_of_any_image_and_resolution(estimator, image, resolution):
    run_case("predict (feed-forward): image x processing_resolution",
             lambda: estimator.predict(image, processing_resolution=resolution), [image])


@examples(25)
@given(st.lists(images, max_size=4), st.none() | ODD_NUMBERS)
def test_feed_forward_predict_of_lists(estimator, batch, resolution):
    run_case("predict (feed-forward): lists of images",
             lambda: estimator.predict(batch, processing_resolution=resolution), batch)


@examples(20)
@given(st.none() | ODD_NUMBERS | st.tuples(ODD_NUMBERS, ODD_NUMBERS) | st.lists(ODD_NUMBERS, max_size=3))
@example((1, math.inf))  # regression (long run): every depth was inf
def test_metric_focal_px_of_any_value(load, focal_px):
    est = load("da3-metric-large")
    image = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    run_case("predict (DA3 metric): focal_px", lambda: est.predict(image, focal_px=focal_px), [image])


@examples(30)
@given(st.none() | st.integers(1, 3) | st.integers(-2, 5) | ODD_NUMBERS,  # valid values about half the time
       st.sampled_from([1, 2]) | st.sampled_from([0, -1, 1.0, None, True, "2", math.nan]),
       st.none() | st.integers(0, 2**32) | st.sampled_from([-1, 2**64, 1.5, "x", True]),
       st.none() | st.sampled_from([0, 32, 48, 64]) | st.integers(-8, 64) | ODD_NUMBERS,
       st.sampled_from(["none", "none", "right", "wrong-shape", "nan", "list", "dtype"]))
def test_diffusion_options_of_any_value(load, steps, ensemble, seed, resolution, latents):
    est = load("marigold-normals-v1-1")
    image = np.random.default_rng(2).integers(0, 256, (30, 41, 3), dtype=np.uint8)
    lat = None
    if latents != "none":
        shape = (ensemble if isinstance(ensemble, int) and not isinstance(ensemble, bool) and ensemble > 0 else 1,
                 4, 4, 6)  # right at processing_resolution 0: the 41x30 image padded to 48x32, over 8
        lat = {"right": np.zeros(shape, np.float32), "wrong-shape": np.zeros((1, 4, 3, 3), np.float32),
               "nan": np.full(shape, np.nan, np.float32), "list": [[0.0]], "dtype": np.zeros(shape, np.int32)}[latents]
    run_case("predict (Marigold): steps x ensemble x seed x resolution x latents",
             lambda: est.predict(image, num_inference_steps=steps, ensemble_size=ensemble, seed=seed,
                                 processing_resolution=resolution, latents=lat), [image])


@pytest.mark.parametrize("name", [FEED_FORWARD, "marigold-normals-v1-1"])
def test_huge_processing_resolution_is_refused_before_any_resize(load, name):
    """Regression (fuzzer): 100000 made a 100000x150000 resize and a MemoryError; now one InputError."""
    with pytest.raises(InputError, match="smaller processing_resolution"):
        load(name).predict(np.zeros((40, 60, 3), np.uint8), processing_resolution=100_000)


@pytest.mark.parametrize("call", ["image", "seed", "resolution"])
def test_wrong_argument_types_are_input_errors(load, call):
    """Regressions (fuzzer): predict(None) and predict(3) raised TypeError, seed=-1 a numpy ValueError,
    processing_resolution=1 blamed the image ("use a larger image")."""
    image = np.zeros((40, 60, 3), np.uint8)
    with pytest.raises(InputError) as info:
        if call == "image":
            load(FEED_FORWARD).predict(None)
        elif call == "seed":
            load("marigold-normals-v1-1").predict(image, seed=-1, num_inference_steps=1)
        else:
            load(FEED_FORWARD).predict(image, processing_resolution=1)
    assert {"image": "numpy array", "seed": "seed must be", "resolution": "use at least 14"}[call] in str(info.value)
