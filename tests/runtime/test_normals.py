"""Normals from depth (depthrt.normals): the MiDaS normal-map preprocessor, in numpy."""

from __future__ import annotations

import numpy as np
import pytest

from depthrt.errors import InputError
from depthrt.imageio import normals_to_rgb
from depthrt.normals import DEFAULT_A, normals_from_depth, sobel


def annotator(depth: np.ndarray, a: float, bg_th: float) -> np.ndarray:
    """ControlNet's MiDaS annotator, with OpenCV, as users run it (before its 8-bit encoding)."""
    cv2 = pytest.importorskip("cv2")
    x = cv2.Sobel(depth, cv2.CV_32F, 1, 0, ksize=3)
    y = cv2.Sobel(depth, cv2.CV_32F, 0, 1, ksize=3)
    scaled = (depth - depth.min()) / (depth.max() - depth.min())
    x[scaled < bg_th] = 0
    y[scaled < bg_th] = 0
    normal = np.stack([x, y, np.ones_like(x) * a], axis=2)
    return normal / np.sum(normal ** 2.0, axis=2, keepdims=True) ** 0.5


@pytest.mark.parametrize("a, bg", [(DEFAULT_A, 0.4), (1.0, 0.1), (20.0, 0.0)])
def test_matches_the_midas_annotator(a, bg):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:64].astype(np.float32)
    depth = (5 + 3 * np.sin(xx / 7) + yy / 6 + rng.normal(0, 0.2, xx.shape)).astype(np.float32)
    ours = normals_from_depth(depth, "relative_inverse_depth", a=a, bg_threshold=bg)
    np.testing.assert_allclose(ours, annotator(depth, a, bg), atol=1e-5)
    assert np.abs(ours[..., :2]).max() > 0.05  # slopes show


def test_sobel_of_a_ramp_and_the_background():
    ramp = np.tile(np.arange(10, dtype=np.float64), (6, 1)) * 0.5  # nearer to the right
    x, y = sobel(ramp)
    assert np.allclose(x[:, 1:-1], 4.0) and np.allclose(y, 0.0)  # 8 x 0.5 inside; mirrored edges give 0
    n = normals_from_depth(ramp, "relative_inverse_depth", a=4.0, bg_threshold=0.5)
    far, near = ramp / ramp.max() < 0.5, ramp / ramp.max() >= 0.5
    assert np.allclose(n[far], [0, 0, 1])  # background: flat, facing the camera
    inside = near.copy()
    inside[:, -1] = False
    assert np.allclose(n[inside], np.array([4.0, 0.0, 4.0]) / np.sqrt(32.0))
    rgb = normals_to_rgb(n)
    assert tuple(rgb[0, 0]) == (128, 128, 255) and rgb[0, 7, 0] > 200  # encoded as depthrt writes normal maps


def test_depth_kinds_turn_into_nearness():
    d = np.linspace(1.0, 4.0, 40, dtype=np.float32)[None].repeat(8, 0)  # farther to the right
    inverse = normals_from_depth(1.0 / d, "relative_inverse_depth", bg_threshold=0.0)
    np.testing.assert_allclose(normals_from_depth(d, "metric_depth", bg_threshold=0.0), inverse, atol=1e-6)
    flipped = normals_from_depth(d, "relative_depth", bg_threshold=0.0)
    np.testing.assert_allclose(flipped, normals_from_depth(-d, "relative_inverse_depth", bg_threshold=0.0))
    assert (flipped[:, 1:-1, 0] < 0).all()  # the scene recedes to the right: x points left, as for 1/d
    assert (inverse[:, 1:-1, 0] < 0).all()


def test_bad_arguments_are_clear():
    d = np.ones((4, 4), np.float32)
    with pytest.raises(InputError, match="a must be a positive"):
        normals_from_depth(d, "relative_inverse_depth", a=0.0)
    with pytest.raises(InputError, match="bg_threshold must be between 0 and 1"):
        normals_from_depth(d, "relative_inverse_depth", bg_threshold=1.5)
    with pytest.raises(InputError, match="normals from depth need a depth map"):
        normals_from_depth(d, "normals")
    assert np.allclose(normals_from_depth(d, "relative_inverse_depth"), [0, 0, 1])  # constant: flat, no NaN


def test_predict_saves_normal_maps_from_depth(tmp_path):
    from PIL import Image

    from depthrt.estimator import Prediction
    from depthrt.outputs import parse_save, suffixes, write_map

    assert parse_save("controlnet,normals", normals=False) == ["controlnet", "normals"]
    assert parse_save("color,normals", normals=True) == ["color"]  # a normals bundle's map is its color map
    assert suffixes()["normals"] == ".normals.png"
    yy, xx = np.mgrid[0:20, 0:30].astype(np.float32)
    pred = Prediction(depth=1.0 + xx / 10 + np.sin(yy / 3), kind="metric_depth", units="m")
    path = write_map("normals", tmp_path / "a.normals.png", pred)
    expected = normals_to_rgb(normals_from_depth(pred.depth, "metric_depth"))
    assert np.array_equal(np.asarray(Image.open(path)), expected)
