"""Fuzzing depthrt.imageio.read_image: every file gives the right RGB array or one clear InputError.

Valid files of every mode the reader converts (1, L, LA, P with and without transparency, RGB, RGBA,
CMYK, 16-bit grey and RGB, I, F) in PNG, JPEG, TIFF, WebP, GIF and BMP, with EXIF rotations, must
decode to the expected pixels. Random bytes, truncated files, flipped bytes and headers that lie
about the size must end in InputError (or, where the damage leaves a complete image, the same
pixels as the undamaged file), never another exception, a partial image or a hang.
"""

from __future__ import annotations

import io
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from fuzzing import bounded, clear_error, examples, fuzz_summary, record  # noqa: F401  (fixture)
from hypothesis import assume, example, given
from hypothesis import strategies as st
from PIL import Image

from depthrt.errors import InputError
from depthrt.imageio import read_image

TMP = Path(tempfile.mkdtemp(prefix="depthrt-fuzz-images-"))
LOSSLESS = {"PNG": {}, "TIFF": {}, "WEBP": {"lossless": True, "quality": 100}, "BMP": {}, "GIF": {}}
MODES = {"PNG": ("1", "L", "LA", "P", "Pt", "RGB", "RGBA", "I;16"), "TIFF": ("1", "L", "P", "RGB", "RGBA", "I",
         "CMYK", "I;16", "F"), "WEBP": ("RGB", "RGBA"), "BMP": ("1", "L", "P", "RGB"), "GIF": ("L", "P", "Pt")}
ORIENT = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
          5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
          8: lambda a: np.rot90(a, 1)}


def read_bytes(data: bytes, suffix: str) -> np.ndarray:
    path = TMP / f"case{suffix}"
    path.write_bytes(data)
    with bounded():
        return read_image(path)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png16(values: np.ndarray) -> bytes:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA by channel count) written by hand: Pillow cannot."""
    h, w = values.shape[:2]
    channels = 1 if values.ndim == 2 else values.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\0" + values[y].astype(">u2").tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))


@st.composite
def images(draw, formats=tuple(MODES)):
    """(file bytes, suffix, expected RGB array or None for lossy formats) of a valid image."""
    fmt = draw(st.sampled_from(formats))
    mode = draw(st.sampled_from(MODES[fmt]))
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    grey = rng.integers(0, 256, (h, w), dtype=np.uint8)
    if mode in ("RGB", "RGBA", "CMYK"):
        pixels = rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8)
        im = Image.fromarray(pixels, mode)
        if mode == "RGB":
            expected = pixels
        elif mode == "RGBA":
            a = pixels[:, :, 3:].astype(np.uint16)
            expected = ((pixels[:, :, :3] * a + 127) // 255).astype(np.uint8)
        else:  # Pillow's own CMYK -> RGB
            expected = np.asarray(im.convert("RGB"))
    elif mode in ("P", "Pt"):
        palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
        im = Image.fromarray(grey, "P")
        im.putpalette(palette.tobytes())
        expected = palette[grey]
        if mode == "Pt":  # one palette entry transparent: those pixels become black
            im.info["transparency"] = int(grey[0, 0])
            expected = np.where((grey == grey[0, 0])[:, :, None], 0, expected).astype(np.uint8)
    elif mode == "1":
        bits = grey > 127
        im = Image.fromarray(bits)
        expected = np.repeat((bits * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    elif mode in ("I;16", "I"):
        wide = rng.integers(0, 65536, (h, w)).astype(np.uint16 if mode == "I;16" else np.int32)
        im = Image.fromarray(wide)  # uint16 -> I;16, int32 -> I
        expected = np.repeat(np.rint(wide * (255 / 65535)).astype(np.uint8)[:, :, None], 3, axis=2)
    elif mode == "F":
        unit = rng.random((h, w), dtype=np.float32)
        im = Image.fromarray(unit, "F")
        expected = np.repeat(np.rint(unit.astype(np.float64) * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    else:  # L, LA
        im = Image.fromarray(grey, "L")
        expected = np.repeat(grey[:, :, None], 3, axis=2)
        if mode == "LA":
            alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
            im = Image.merge("LA", (im, Image.fromarray(alpha)))
            expected = ((expected.astype(np.uint16) * alpha[:, :, None] + 127) // 255).astype(np.uint8)
    options = dict(LOSSLESS[fmt])
    if "transparency" in im.info:
        options["transparency"] = im.info["transparency"]
    orientation = draw(st.sampled_from([None, *ORIENT, 0, 9, 65535])) if fmt in ("PNG", "TIFF", "WEBP") else None
    if orientation is not None:
        if fmt == "TIFF":
            options["tiffinfo"] = {274: orientation}
        else:
            exif = Image.Exif()
            exif[0x0112] = orientation
            options["exif"] = exif.tobytes()
        expected = ORIENT.get(orientation, ORIENT[1])(expected)
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue(), "." + fmt.lower(), np.ascontiguousarray(expected)


@st.composite
def lossy_or_16bit(draw):
    """JPEG (L, RGB, CMYK; EXIF rotations) and hand-written 16-bit PNGs of 1-4 channels."""
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        channels = draw(st.integers(1, 4))
        values = rng.integers(0, 65536, (h, w, channels)).astype(np.uint16)
        return png16(values[:, :, 0] if channels == 1 else values), ".png", (h, w), values
    mode = draw(st.sampled_from(["L", "RGB", "CMYK"]))
    im = Image.fromarray(rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8).squeeze(-1) if mode == "L"
                         else rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8), mode)
    orientation = draw(st.sampled_from([None, *ORIENT]))
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=draw(st.integers(1, 100)), exif=exif.tobytes())
    return buf.getvalue(), ".jpg", (w, h) if orientation and orientation >= 5 else (h, w), None


def check_rgb(out: np.ndarray, shape) -> None:
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and out.flags.c_contiguous
    assert out.shape[:2] == tuple(shape)


@examples(60)
@given(images())
def test_valid_images_of_every_mode_and_orientation_decode_exactly(case):
    data, suffix, expected = case
    out = read_bytes(data, suffix)
    check_rgb(out, expected.shape[:2])
    np.testing.assert_array_equal(out, expected)
    record("images: valid lossless (exact pixels)", "exact result")


@examples(30)
@given(lossy_or_16bit())
def test_jpeg_and_16bit_png_decode_to_the_right_size_and_scale(case):
    data, suffix, shape, values = case
    out = read_bytes(data, suffix)
    check_rgb(out, shape)
    if values is not None:  # 16-bit: scaled to 8 bits (within the rounding of Pillow's high byte)
        grey = values.ndim == 3 and values.shape[2] in (1, 2)
        colour = values[:, :, :1].repeat(3, axis=2) if grey else values[:, :, :3]
        scaled = np.rint(colour * (255 / 65535))
        if values.shape[2] in (2, 4):  # alpha: composited onto black
            scaled = scaled * (values[:, :, -1:] >> 8) / 255
        assert np.abs(out - scaled).max() <= 2
    record("images: JPEG / 16-bit PNG (size and scale)", "checked result")


def outcome(test: str, data: bytes, suffix: str, full: np.ndarray | None = None) -> None:
    """The damaged file reads as the undamaged image (when ``full`` is given) or fails with InputError."""
    try:
        out = read_bytes(data, suffix)
    except InputError as exc:
        clear_error(test, exc)
        assert "cannot read image" in str(exc)
        return
    check_rgb(out, out.shape[:2])
    if full is not None:  # no partial image: whatever decodes is the whole image
        np.testing.assert_array_equal(out, full)
    record(test, "result")


@examples(60)
@given(st.binary(max_size=512), st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\0", b"MM\0*",
                                                 b"RIFF\0\0\0\0WEBPVP8 ", b"GIF89a", b"BM"]),
       st.sampled_from([".png", ".jpg", ".tif", ".webp", ".bin"]))
def test_random_bytes_give_a_clear_error(noise, magic, suffix):
    outcome("images: random bytes", magic + noise, suffix)


@examples(60)
@given(images() | lossy_or_16bit().map(lambda c: (c[0], c[1], None)), st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_files_never_load_partially(case, keep):
    data, suffix, _ = case
    full = read_bytes(data, suffix)
    outcome("images: truncated", data[:int(len(data) * keep)], suffix, full)


@examples(60)
@given(images() | lossy_or_16bit().map(lambda c: (c[0], c[1], None)), st.data())
def test_flipped_bytes_give_an_image_or_a_clear_error(case, data):
    raw, suffix, _ = case
    damaged = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 8))):
        damaged[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    outcome("images: flipped bytes", bytes(damaged), suffix)


def lie_about_size(raw: bytes, suffix: str, w: int, h: int) -> bytes | None:
    """The file with its header's width and height replaced (checksums kept valid); None if not found."""
    b = bytearray(raw)
    if suffix == ".png":
        b[16:24] = struct.pack(">II", w % 2**31, h % 2**31)
        b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    elif suffix == ".jpg":
        at = next((i for i in range(2, len(b) - 9) if b[i] == 0xFF and b[i + 1] in (0xC0, 0xC1, 0xC2)), None)
        if at is None:
            return None
        b[at + 5:at + 9] = struct.pack(">HH", h % 2**16, w % 2**16)
    elif suffix == ".bmp":
        b[18:26] = struct.pack("<ii", w % 2**31, h % 2**32 - 2**31)  # negative height: top-down rows
    elif suffix == ".gif":
        b[6:10] = struct.pack("<HH", w % 2**16, h % 2**16)
        at = raw.find(b"\x2c", 13)
        if at > 0:
            b[at + 5:at + 9] = struct.pack("<HH", w % 2**16, h % 2**16)
    elif suffix == ".tif" or suffix == ".tiff":
        (ifd,) = struct.unpack("<I", b[4:8])
        (n,) = struct.unpack("<H", b[ifd:ifd + 2])
        for k in range(n):
            entry = ifd + 2 + 12 * k
            tag, kind = struct.unpack("<HH", b[entry:entry + 4])
            if tag in (256, 257):
                value = w if tag == 256 else h
                b[entry + 8:entry + 12] = struct.pack("<HH", value % 2**16, 0) if kind == 3 else \
                    struct.pack("<I", value % 2**32)
    elif suffix == ".webp" and b[12:16] == b"VP8L":
        bits = ((w - 1) % 2**14) | (((h - 1) % 2**14) << 14) | (struct.unpack("<I", b[21:25])[0] & ~(2**28 - 1))
        b[21:25] = struct.pack("<I", bits)
    else:
        return None
    return bytes(b)


@examples(60)
@given(images() | lossy_or_16bit().map(lambda c: (c[0], c[1], None)),
       st.integers(0, 2**31 - 1) | st.sampled_from([0, 1, 2**16 - 1, 2**24, 2**31 - 1]),
       st.integers(0, 2**31 - 1) | st.sampled_from([0, 1, 2**16 - 1, 2**24, 2**31 - 1]))
@example((png16(np.ones((4, 4), np.uint16)), ".png", None), 65535, 65535)  # 4 Gpx claimed: a bomb
def test_headers_that_lie_about_the_size_give_a_clear_error(case, w, h):
    raw, suffix, _ = case
    lying = lie_about_size(raw, suffix, w, h)
    assume(lying is not None)
    outcome("images: lying size header", lying, suffix)


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_uncompressed_tiff_turned_by_its_orientation_tag_keeps_its_pixels(orientation, mode):
    """Regression (found by the fuzzer): read by path, Pillow memory-mapped these with the turned size
    and scrambled the pixels; read_image now gives the image turned upright, pixel for pixel."""
    pixels = np.arange(2 * 3 * len(mode), dtype=np.uint8).reshape(2, 3, len(mode)) * 7
    pixels[:, :, 3:] = 255  # opaque: the RGBA case compares its colours as they are
    path = TMP / f"turned{orientation}.tif"
    Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(path, tiffinfo={274: orientation})
    expected = pixels[:, :, :1].repeat(3, axis=2) if mode == "L" else pixels[:, :, :3]
    np.testing.assert_array_equal(read_image(path), ORIENT[orientation](expected))


def test_directory_empty_and_missing_are_clear_errors():
    (TMP / "folder.png").mkdir(exist_ok=True)
    (TMP / "empty.png").write_bytes(b"")
    for path, words in ((TMP / "folder.png", "directory"), (TMP / "empty.png", "empty"),
                        (TMP / "missing.png", "not found")):
        with pytest.raises(InputError, match=words):
            read_image(path)
