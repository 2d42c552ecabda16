"""Tests for depthrt.imageio: image input and depth/normal output files."""

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

# Fallback for runs without PYTHONPATH=runtime (appended, so PYTHONPATH wins).
sys.path.append(str(Path(__file__).resolve().parents[2] / "runtime"))

from depthrt import imageio  # noqa: E402
from depthrt.errors import InputError, OutputError  # noqa: E402


# ------------------------------------------------------------------ helpers

def _save(path, image, **kw):
    image.save(path, **kw)
    return path


def _noise_png_bytes(tmp_path, size=64):
    """A PNG whose data cannot compress away, so cutting it really truncates pixels."""
    rng = np.random.default_rng(0)
    p = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p)
    return p.read_bytes()


def _assert_input_error(path, *words):
    with pytest.raises(InputError) as info:
        imageio.read_image(path)
    msg = str(info.value)
    assert os.fspath(path) in msg, msg
    assert "\n" not in msg
    for w in words:
        assert w in msg.lower(), msg
    return msg


# ------------------------------------------------------------------ reading

def test_rgb_png_roundtrip(tmp_path):
    a = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    p = _save(tmp_path / "a.png", Image.fromarray(a))
    out = imageio.read_image(p)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, a)
    # str paths work too
    np.testing.assert_array_equal(imageio.read_image(str(p)), a)


def test_exif_orientation_6_is_applied(tmp_path):
    # 40 wide x 20 high, quadrants TL red, TR green, BL blue, BR white.
    a = np.zeros((20, 40, 3), np.uint8)
    a[:10, :20] = (255, 0, 0)
    a[:10, 20:] = (0, 255, 0)
    a[10:, :20] = (0, 0, 255)
    a[10:, 20:] = (255, 255, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = _save(tmp_path / "rot.jpg", Image.fromarray(a), exif=exif.tobytes(), quality=95)
    out = imageio.read_image(p).astype(int)
    assert out.shape == (40, 20, 3)  # H and W swapped
    # Rotating 90 degrees clockwise: BL->TL, TL->TR, TR->BR, BR->BL.
    def near(px, rgb):
        return np.abs(px - np.array(rgb)).max() < 40
    assert near(out[5, 5], (0, 0, 255))
    assert near(out[5, 15], (255, 0, 0))
    assert near(out[35, 15], (0, 255, 0))
    assert near(out[35, 5], (255, 255, 255))


@pytest.mark.parametrize("mode", ["L", "1"])
def test_greyscale_becomes_rgb(tmp_path, mode):
    a = np.array([[0, 255], [255, 0]], np.uint8)
    p = _save(tmp_path / "g.png", Image.fromarray(a).convert(mode))
    out = imageio.read_image(p)
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[..., 0], a)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16bit_greyscale_is_scaled_not_clipped(tmp_path, ext):
    a = np.array([[0, 65535], [257 * 128, 1000]], np.uint16)
    p = _save(tmp_path / f"g16.{ext}", Image.fromarray(a))
    with Image.open(p) as im:
        assert im.mode in ("I;16", "I;16B", "I")
    out = imageio.read_image(p)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 1, 0] == 255 and out[0, 0, 0] == 0
    assert out[1, 0, 0] == 128
    assert out[1, 1, 0] == 4  # 1000/257 = 3.9: scaled, not clipped to 255


def test_mode_I_and_F(tmp_path):
    i32 = np.array([[0, 65535]], np.int32)
    p = _save(tmp_path / "i.tif", Image.fromarray(i32))
    out = imageio.read_image(p)
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 255
    f = np.array([[0.0, 0.5, 1.0]], np.float32)
    p = _save(tmp_path / "f.tif", Image.fromarray(f))
    np.testing.assert_array_equal(imageio.read_image(p)[0, :, 1], [0, 128, 255])
    f = np.array([[-3.0, 7.0]], np.float32)  # outside 0..1: min-max
    p = _save(tmp_path / "f2.tif", Image.fromarray(f))
    np.testing.assert_array_equal(imageio.read_image(p)[0, :, 2], [0, 255])


def test_rgba_and_la_composited_onto_black(tmp_path):
    a = np.array([[[200, 100, 50, 0], [200, 100, 50, 255], [200, 100, 50, 128]]], np.uint8)
    out = imageio.read_image(_save(tmp_path / "rgba.png", Image.fromarray(a)))
    assert out.shape == (1, 3, 3)
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [200, 100, 50])
    np.testing.assert_array_equal(out[0, 2], [100, 50, 25])
    la = Image.fromarray(np.array([[[90, 0], [90, 255]]], np.uint8), mode="LA")
    out = imageio.read_image(_save(tmp_path / "la.png", la))
    np.testing.assert_array_equal(out[0], [[0, 0, 0], [90, 90, 90]])


def test_palette_with_and_without_transparency(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([10, 20, 30, 250, 0, 0] + [0] * 762)
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    out = imageio.read_image(_save(tmp_path / "p.png", im))
    np.testing.assert_array_equal(out[0], [[10, 20, 30], [250, 0, 0]])
    out = imageio.read_image(_save(tmp_path / "pt.png", im, transparency=0))
    np.testing.assert_array_equal(out[0], [[0, 0, 0], [250, 0, 0]])
    out = imageio.read_image(_save(tmp_path / "pt.gif", im, transparency=1))
    np.testing.assert_array_equal(out[0], [[10, 20, 30], [0, 0, 0]])


def test_cmyk_jpeg(tmp_path):
    im = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    out = imageio.read_image(_save(tmp_path / "cmyk.jpg", im, quality=95)).astype(int)
    assert out.shape == (16, 16, 3)
    assert out[8, 8, 0] > 200 and out[8, 8, 1] < 60 and out[8, 8, 2] < 60


# ------------------------------------------------------------------ bad input

def test_missing_file(tmp_path):
    _assert_input_error(tmp_path / "nope.png", "not found")


def test_directory(tmp_path):
    _assert_input_error(tmp_path, "directory")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    _assert_input_error(p, "empty")


def test_text_file_named_png(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not an image\n")
    _assert_input_error(p, "not a recognised image")


def test_corrupt_bytes(tmp_path):
    p = tmp_path / "corrupt.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    _assert_input_error(p)
    p = tmp_path / "random.jpg"
    p.write_bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _assert_input_error(p)


@pytest.mark.parametrize("flag", [False, True])
def test_truncated_png_never_loads_partially(tmp_path, monkeypatch, flag):
    # Even if some other module switched Pillow's global flag on, we refuse.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", flag)
    data = _noise_png_bytes(tmp_path)
    p = tmp_path / "half.png"
    p.write_bytes(data[: len(data) // 2])
    _assert_input_error(p, "truncated", "re-export or re-download")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is flag  # restored


def test_truncated_jpeg(tmp_path):
    a = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = _save(tmp_path / "full.jpg", Image.fromarray(a)).read_bytes()
    p = tmp_path / "half.jpg"
    p.write_bytes(full[: len(full) // 2])
    _assert_input_error(p, "truncated")


def test_flag_is_off_by_default():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("limit", [1000, 6000])  # 10000 px: bomb error / bomb warning
def test_decompression_bomb(tmp_path, monkeypatch, limit):
    p = _save(tmp_path / "big.png", Image.new("RGB", (100, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _assert_input_error(p, "too large", "downscale")


# ------------------------------------------------------------------ normalisation

def test_normalize_nonfinite_and_constant():
    v = imageio.normalize([np.nan, np.inf, -np.inf, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(v, [0, 1, 0, 0, 0.5, 1])
    v = imageio.normalize([np.nan, np.inf, -np.inf, 1.0, 2.0, 3.0], invert=True)
    np.testing.assert_allclose(v, [0, 0, 1, 1, 0.5, 0])
    assert not imageio.normalize(np.full((3, 3), 7.0)).any()
    assert not imageio.normalize(np.full((3, 3), np.nan)).any()


# ------------------------------------------------------------------ writers

def _ramp():
    return np.linspace(-2.0, 5.0, 30, dtype=np.float32).reshape(5, 6)


def test_png16_roundtrip(tmp_path):
    d = _ramp()
    d[0, 0] = np.nan
    d[0, 1] = np.inf
    p = imageio.write_depth_png16(tmp_path / "d.png", d)
    with Image.open(p) as im:
        assert im.format == "PNG" and im.mode in ("I;16", "I")
        back = np.array(im)
    assert back.shape == d.shape
    assert back.dtype in (np.uint16, np.int32)
    finite = np.isfinite(d)
    assert back[finite].min() == 0 and back.max() == 65535
    assert back[0, 0] == 0 and back[0, 1] == 65535
    order = np.argsort(d[finite], kind="stable")
    assert np.all(np.diff(back[finite][order].astype(int)) >= 0)  # monotonic
    inv = imageio.write_depth_png16(tmp_path / "inv.png", _ramp(), invert=True)
    with Image.open(inv) as im:
        assert np.array(im)[0, 0] == 65535 and np.array(im)[-1, -1] == 0


def test_png16_constant_map_is_zeros(tmp_path):
    p = imageio.write_depth_png16(tmp_path / "c.png", np.full((4, 4), 3.0, np.float32))
    with Image.open(p) as im:
        assert not np.array(im).any()


@pytest.mark.parametrize("cmap", ["turbo", "inferno"])
def test_color_png(tmp_path, cmap):
    p = imageio.write_color_png(tmp_path / f"{cmap}.png", _ramp(), cmap=cmap)
    with Image.open(p) as im:
        assert im.mode == "RGB"
        rgb = np.array(im)
    assert rgb.shape == (5, 6, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb[0, 0].astype(int) - rgb[-1, -1]).sum() > 100  # near/far distinct
    lut = imageio.colormap_lut(cmap)
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert imageio.colormap_lut(cmap) is lut  # built once
    np.testing.assert_array_equal(rgb[0, 0], lut[0])
    np.testing.assert_array_equal(rgb[-1, -1], lut[255])


def test_color_png_kind_puts_near_at_warm_end(tmp_path):
    lut = imageio.colormap_lut("inferno")
    depth = np.array([[1.0, 10.0]], np.float32)  # metric: left is near
    p = imageio.write_color_png(tmp_path / "m.png", depth, cmap="inferno", kind="metric_depth")
    with Image.open(p) as im:
        np.testing.assert_array_equal(np.array(im)[0], [lut[255], lut[0]])
    with pytest.raises(InputError):
        imageio.write_color_png(tmp_path / "x.png", depth, cmap="jet")


def test_npy_roundtrip(tmp_path):
    d = _ramp().astype(np.float64)
    d[1, 1] = np.nan
    p = imageio.write_npy(tmp_path / "d.npy", d)
    back = np.load(p)
    assert back.dtype == np.float32 and back.shape == d.shape
    np.testing.assert_array_equal(back, d.astype(np.float32))


def test_normals_png(tmp_path):
    n = np.zeros((2, 2, 3), np.float32)
    n[0, 0] = (0, 0, 1)
    n[0, 1] = (-1, 0, 0)
    n[1, 0] = (0, 1, 0)
    n[1, 1] = np.nan
    with Image.open(imageio.write_normals_png(tmp_path / "n.png", n)) as im:
        assert im.mode == "RGB"
        rgb = np.array(im)
    np.testing.assert_array_equal(rgb[0, 0], [128, 128, 255])
    np.testing.assert_array_equal(rgb[0, 1], [0, 128, 128])
    np.testing.assert_array_equal(rgb[1, 0], [128, 255, 128])
    np.testing.assert_array_equal(rgb[1, 1], [128, 128, 128])
    with pytest.raises(InputError):
        imageio.write_normals_png(tmp_path / "bad.png", np.zeros((2, 2)))


@pytest.mark.parametrize("kind", ["metric_depth", "relative_depth"])
def test_controlnet_white_near_for_depth(tmp_path, kind):
    depth = np.array([[1.0, 2.0], [5.0, 100.0]], np.float32)  # larger = farther
    cn = imageio.to_controlnet(depth, kind)
    assert cn.shape == (2, 2, 3) and cn.dtype == np.uint8
    assert cn[0, 0, 0] == 255 and cn[1, 1, 0] == 0  # nearest white, farthest black
    assert cn[0, 0, 0] > cn[0, 1, 0] > cn[1, 0, 0] > cn[1, 1, 0]
    assert (cn[..., 0] == cn[..., 2]).all()


def test_controlnet_white_near_for_inverse_depth(tmp_path):
    disp = np.array([[0.9, 0.5], [0.1, np.nan]], np.float32)  # larger = nearer
    cn = imageio.to_controlnet(disp, "relative_inverse_depth")
    assert cn[0, 0, 0] == 255 and cn[1, 0, 0] == 0 and cn[1, 1, 0] == 0
    p = imageio.write_controlnet_png(tmp_path / "cn.png", disp, "relative_inverse_depth")
    with Image.open(p) as im:
        assert im.mode == "RGB"
        np.testing.assert_array_equal(np.array(im), cn)
    with pytest.raises(InputError):
        imageio.to_controlnet(disp, "disparity")


def test_metric_controlnet_handles_zero_and_inf():
    # Disparity 1/d: invalid 0 m -> black, inf m -> 0 disparity (black), 4 m -> 1/4.
    cn = imageio.to_controlnet(np.array([[0.0, 1.0, 4.0, np.inf]]), "metric_depth")
    np.testing.assert_array_equal(cn[0, :, 0], [0, 255, 64, 0])


# ------------------------------------------------------------------ overwrite / atomicity

WRITERS = {
    "png16": lambda p, **kw: imageio.write_depth_png16(p, _ramp(), **kw),
    "color": lambda p, **kw: imageio.write_color_png(p, _ramp(), **kw),
    "npy": lambda p, **kw: imageio.write_npy(p, _ramp(), **kw),
    "controlnet": lambda p, **kw: imageio.write_controlnet_png(p, _ramp(), "relative_depth", **kw),
    "normals": lambda p, **kw: imageio.write_normals_png(p, np.zeros((2, 2, 3)), **kw),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_refuses_to_overwrite_and_overwrite_replaces(tmp_path, name):
    p = tmp_path / "out.bin"
    p.write_bytes(b"user data")
    with pytest.raises(OutputError) as info:
        WRITERS[name](p)
    msg = str(info.value)
    assert str(p) in msg and "--force" in msg and "--out" in msg
    assert p.read_bytes() == b"user data"
    WRITERS[name](p, overwrite=True)
    assert p.read_bytes() != b"user data"
    assert [x.name for x in tmp_path.iterdir()] == ["out.bin"]  # no temp files left


def test_written_file_has_normal_permissions(tmp_path):
    p = imageio.write_npy(tmp_path / "a.npy", np.zeros(2))
    umask = os.umask(0)
    os.umask(umask)
    assert (p.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_write_into_missing_dir(tmp_path):
    with pytest.raises(OutputError) as info:
        imageio.write_npy(tmp_path / "missing" / "a.npy", np.zeros(2))
    assert "a.npy" in str(info.value)


def test_write_onto_directory(tmp_path):
    with pytest.raises(OutputError):
        imageio.write_npy(tmp_path, np.zeros(2), overwrite=True)


# ------------------------------------------------------------------ output dir

def test_ensure_output_dir_creates(tmp_path):
    target = tmp_path / "a" / "b"
    out = imageio.ensure_output_dir(target)
    assert target.is_dir() and out == target.absolute()
    assert list(target.iterdir()) == []  # probe file removed
    assert imageio.ensure_output_dir(target) == out  # existing dir is fine


def test_ensure_output_dir_rejects_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(OutputError) as info:
        imageio.ensure_output_dir(f)
    assert str(f) in str(info.value) and "--out" in str(info.value)
    with pytest.raises(OutputError):  # under a regular file: cannot be created
        imageio.ensure_output_dir(f / "sub")


def _really_writable(d):
    try:
        (d / "probe").write_bytes(b"")
        (d / "probe").unlink()
        return True
    except OSError:
        return False


def test_ensure_output_dir_unwritable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not _really_writable(ro):  # normal user: chmod really blocks writes
            with pytest.raises(OutputError) as info:
                imageio.ensure_output_dir(ro)
            assert str(ro) in str(info.value) and "writable" in str(info.value)
            with pytest.raises(OutputError):
                imageio.write_npy(ro / "a.npy", np.zeros(2))
    finally:
        ro.chmod(0o700)
    # As root chmod does not block writes; /proc refuses new files for everyone,
    # and passes os.access for root, so this exercises the probe write itself.
    if os.path.isdir("/proc") and not _really_writable(Path("/proc")):
        with pytest.raises(OutputError) as info:
            imageio.ensure_output_dir("/proc")
        assert "'/proc'" in str(info.value) and "\n" not in str(info.value)
        with pytest.raises(OutputError):
            imageio.write_npy("/proc/depthrt-test.npy", np.zeros(2))


def test_runtime_imports_stay_lean():
    import re
    src = Path(imageio.__file__).read_text()
    imported = re.findall(r"^\s*(?:import|from)\s+(\w+)", src, flags=re.M)
    assert set(imported) <= {"__future__", "contextlib", "functools", "os", "secrets", "warnings",
                             "pathlib", "numpy", "PIL", "depthrt"}, imported


def test_ensure_output_dir_honours_os_access(tmp_path, monkeypatch):
    # Root cannot exercise the os.access branch for real; simulate a denial.
    monkeypatch.setattr(imageio.os, "access", lambda *a, **k: False)
    with pytest.raises(OutputError) as info:
        imageio.ensure_output_dir(tmp_path)
    assert "not writable" in str(info.value)
