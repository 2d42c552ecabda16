"""Image input and depth / normal output files for ``depthrt predict``.

numpy and Pillow only: the lean runtime never imports torch, transformers or onnx.
Reading turns whatever Pillow can open into one (H, W, 3) uint8 RGB array, or
raises :class:`InputError` with a one-line message naming the file, the problem
and what to do.  Writing is atomic (temp file in the target directory, then a
rename) and never replaces an existing file unless ``overwrite=True``, so an
interrupted run or a wrong ``--out`` cannot destroy a user's files.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from depthrt.errors import InputError, OutputError

__all__ = ["read_image", "ensure_output_dir", "normalize", "colormap_lut", "to_controlnet",
           "write_depth_png16", "write_color_png", "write_npy", "write_controlnet_png",
           "write_normals_png", "normals_to_rgb", "COLORMAPS", "DEPTH_KINDS"]

#: Depth-map kinds; the first is "larger = nearer", the others "larger = farther".
DEPTH_KINDS = ("relative_inverse_depth", "metric_depth", "relative_depth")


def _one_line(text: object) -> str:
    """Pillow messages sometimes span lines; the CLI prints exactly one."""
    return " ".join(str(text).split())


# --------------------------------------------------------------------------- input

def read_image(path) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array.

    * EXIF orientation is applied, so phone photos come out upright.
    * Greyscale (1, L, I;16, I, F) is replicated to 3 channels.  16-bit data is
      scaled (65535 -> 255), not clipped; mode ``I`` is taken as 16-bit when its
      values fit 0..65535 (that is how Pillow surfaces 16-bit PNGs), ``F`` as
      0..1 when its values fit; anything else is min-max normalised.
    * Alpha (RGBA, LA, PA, palette transparency) is composited onto BLACK:
      deterministic, and transparent pixels often hold arbitrary colours that
      would otherwise leak into the depth estimate.
    * CMYK, YCbCr and other modes are converted with Pillow; only the first
      frame of multi-frame files (GIF, TIFF) is used.

    Raises InputError for missing, empty, truncated, corrupt, non-image or
    oversized (decompression-bomb) files and for directories.
    """
    name = os.fspath(path)

    def fail(problem: str, todo: str) -> InputError:
        return InputError(f"cannot read image '{name}': {_one_line(problem)}; {todo}")

    if os.path.isdir(name):
        raise fail("it is a directory, not an image file", "pass the image files inside it")
    if not os.path.exists(name):
        raise fail("file not found", "check the path")
    try:
        if os.path.getsize(name) == 0:
            raise fail("file is empty (0 bytes)", "re-export or re-download it")
    except OSError as exc:
        raise fail(exc.strerror or exc, "check the path and permissions") from exc

    # A partial decode must fail, never return grey/black filler.  Another module
    # may have flipped this process-wide flag, so force it off while we decode.
    saved_flag = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            # Pillow only *warns* between MAX_IMAGE_PIXELS and twice that; we
            # refuse both, since such images would exhaust memory downstream.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Opened from our own file object, not the path: given a path Pillow memory-maps
            # uncompressed TIFFs with the size already turned for EXIF orientations 5-8, which
            # scrambles their pixels (Pillow 13); through a file object it decodes them correctly.
            with open(name, "rb") as fh, Image.open(fh) as im:
                im.load()  # force the full decode now, inside our error handling
                try:
                    im = ImageOps.exif_transpose(im)
                except Exception as exc:  # malformed EXIF: the pixels are still fine
                    warnings.warn(f"'{name}': ignoring unreadable EXIF orientation ({exc})")
                return _to_rgb(im, fail)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise fail(f"image is too large ({exc})", "downscale it before predicting") from exc
    except UnidentifiedImageError as exc:
        raise fail("not a recognised image format (corrupt or not an image)",
                   "check that it is a PNG/JPEG/TIFF/... file") from exc
    except PermissionError as exc:
        raise fail("permission denied", "check the file's permissions") from exc
    except MemoryError as exc:
        raise fail("not enough memory to decode it", "downscale it before predicting") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ...
        what = "file is truncated" if "truncated" in str(exc).lower() else "file is corrupt"
        raise fail(f"{what} (decoder error: {exc})", "re-export or re-download it") from exc
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved_flag


def _scale_to_uint8(a: np.ndarray, natural_max: float) -> np.ndarray:
    """Scale a numeric array to 0..255: by ``natural_max`` when the data fits
    0..natural_max (keeps absolute brightness), else min-max over finite values."""
    a = a.astype(np.float64)
    if a.size and np.isfinite(a).all() and a.min() >= 0 and a.max() <= natural_max:
        return np.rint(a * (255.0 / natural_max)).astype(np.uint8)
    return (normalize(a) * 255.0 + 0.5).astype(np.uint8)


def _to_rgb(im: Image.Image, fail) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):  # 16-bit/float grey, any byte order
        grey = _scale_to_uint8(np.asarray(im), 1.0 if mode == "F" else 65535.0)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))

    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in im.info)
    try:
        if has_alpha:
            rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)
            alpha = rgba[:, :, 3:4]
            # Composite onto black with rounding: rgb * a / 255.
            rgb = ((rgba[:, :, :3] * alpha + 127) // 255).astype(np.uint8)
        else:
            rgb = np.asarray(im if mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
    except ValueError as exc:  # e.g. LAB without a colour-management profile
        raise fail(f"unsupported colour mode {mode!r} ({exc})",
                   "convert it to RGB with an image editor") from exc
    return np.ascontiguousarray(rgb)


# ------------------------------------------------------------------ normalisation

def normalize(values, invert: bool = False) -> np.ndarray:
    """Min-max normalise to float64 0..1 over the FINITE values.

    +inf maps to 1 (e.g. "infinitely far" sky), -inf to 0, NaN to 0 (invalid)
    AFTER inversion, so invalid pixels are always 0.  A constant map, or one
    with no finite values, gives all zeros: there is no range to show.
    """
    a = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(a)
    out = np.zeros(a.shape, dtype=np.float64)
    lo, hi = (a[finite].min(), a[finite].max()) if finite.any() else (0.0, 0.0)
    if not hi > lo:  # constant, or nothing finite: no range to show
        return out
    out[finite] = (a[finite] - lo) / (hi - lo)
    out[a == np.inf] = 1.0
    if invert:
        out = 1.0 - out
    out[np.isnan(a)] = 0.0
    return np.clip(out, 0.0, 1.0)


def _as_map(depth, name: str = "depth") -> np.ndarray:
    """Accept (H, W), (H, W, 1) or (1, H, W) maps; anything else is a bug upstream."""
    a = np.asarray(depth)
    if a.ndim == 3 and 1 in (a.shape[0], a.shape[-1]):
        a = a.reshape(a.shape[1:] if a.shape[0] == 1 else a.shape[:2])
    if a.ndim != 2 or a.size == 0:
        raise InputError(f"{name} map must be 2-D (H, W), got shape {a.shape}; "
                         "this is a bug in the caller, please report it")
    return a.astype(np.float32, copy=False)


# ---------------------------------------------------------------------- colormaps

def _turbo(x: np.ndarray) -> np.ndarray:
    """Google's Turbo via its published degree-5 polynomial (A. Mikhailov / R. Du,
    Google 2019, Apache-2.0): close to the reference LUT, least so at the dark ends."""
    r = (0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943)
    g = (0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604)
    b = (0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973)
    powers = np.stack([x ** k for k in range(6)], axis=-1)
    return np.stack([powers @ np.array(c) for c in (r, g, b)], axis=-1)


# matplotlib's inferno (CC0) sampled at LUT entries 0, 16, ..., 240, 255; linear
# interpolation between these 17 anchors stays within a few 8-bit steps of it.
_INFERNO_ANCHORS = np.array([
    [0.001462, 0.000466, 0.013866], [0.042253, 0.028139, 0.141141],
    [0.129285, 0.047293, 0.290788], [0.238273, 0.036621, 0.396353],
    [0.341500, 0.062325, 0.429425], [0.441207, 0.099338, 0.431594],
    [0.540920, 0.134729, 0.415123], [0.640135, 0.171438, 0.381065],
    [0.735683, 0.215906, 0.330245], [0.822386, 0.275197, 0.266085],
    [0.894305, 0.353399, 0.193584], [0.946965, 0.449191, 0.115272],
    [0.978422, 0.557937, 0.034931], [0.987874, 0.675267, 0.065257],
    [0.974638, 0.797692, 0.206332], [0.947594, 0.917399, 0.410665],
    [0.988362, 0.998364, 0.644924],
])
_INFERNO_POS = np.array(list(range(0, 256, 16)) + [255], dtype=np.float64) / 255.0


def _inferno(x: np.ndarray) -> np.ndarray:
    return np.stack([np.interp(x, _INFERNO_POS, _INFERNO_ANCHORS[:, c]) for c in range(3)], -1)


COLORMAPS = {"turbo": _turbo, "inferno": _inferno, "gray": lambda x: np.stack([x] * 3, -1)}


@functools.lru_cache(maxsize=None)
def colormap_lut(name: str = "turbo") -> np.ndarray:
    """The 256-entry (256, 3) uint8 LUT of a colour map, built once per name."""
    if name not in COLORMAPS:
        raise InputError(f"unknown colour map '{name}'; choose one of {', '.join(COLORMAPS)}")
    x = np.linspace(0.0, 1.0, 256)
    lut = np.clip(np.rint(COLORMAPS[name](x) * 255.0), 0, 255).astype(np.uint8)
    lut.setflags(write=False)  # shared through the cache: nobody may edit it
    return lut


def _near_is_high(kind: str) -> bool:
    if kind not in DEPTH_KINDS:
        raise InputError(f"unknown depth kind '{kind}'; expected one of {', '.join(DEPTH_KINDS)}")
    return kind == "relative_inverse_depth"


def to_controlnet(depth, kind: str) -> np.ndarray:
    """ControlNet-style depth image, (H, W, 3) uint8 grey, WHITE = NEAR.

    * ``relative_inverse_depth`` (larger = nearer): min-max normalised directly.
    * ``metric_depth`` (larger = farther, > 0): converted to disparity 1/d before
      normalising, which is what ControlNet's MiDaS-trained depth models expect;
      a linear flip would crush everything but the far background to white.
      Non-positive or non-finite depths become black (far / unknown).
    * ``relative_depth`` (larger = farther, arbitrary shift, may be <= 0): 1/d is
      meaningless, so it is flipped linearly (1 - normalised).
    """
    a = _as_map(depth).astype(np.float64)
    if _near_is_high(kind):
        v = normalize(a)
    elif kind == "metric_depth":
        with np.errstate(divide="ignore", invalid="ignore"):
            disparity = np.where(a > 0, 1.0 / a, np.nan)  # +inf depth -> 0 disparity
        v = normalize(disparity)
    else:
        v = normalize(a, invert=True)
    grey = (v * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


# ------------------------------------------------------------------------ output

def ensure_output_dir(path) -> Path:
    """Create the output directory if needed and prove it is writable.

    ``os.access`` alone is not enough (root passes it everywhere, and it knows
    nothing of read-only mounts or pseudo filesystems), so a probe file is also
    created and removed.  Returns the absolute path; raises OutputError.
    """
    name = os.fspath(path)

    def fail(problem: str) -> OutputError:
        return OutputError(f"cannot use output directory '{name}': {_one_line(problem)}; "
                           "choose another --out")

    if os.path.exists(name) and not os.path.isdir(name):
        raise fail("it exists and is not a directory")
    try:
        os.makedirs(name, exist_ok=True)
    except OSError as exc:
        raise fail(f"cannot create it ({exc.strerror or exc})") from exc
    if not os.access(name, os.W_OK | os.X_OK):
        raise fail("it is not writable (permission denied)")
    try:
        fd, probe = _create_temp(name, "depthrt-probe")
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise fail(f"it is not writable ({exc.strerror or exc})") from exc
    return Path(name).absolute()


def _create_temp(directory: str, stem: str):
    """Exclusive-create a hidden temp file.  Mode 0o666 lets the umask apply, so
    outputs get normal permissions (tempfile.mkstemp would force 0o600)."""
    for _ in range(100):
        # stem cut short so the temp name stays within NAME_MAX (255 bytes)
        tmp = os.path.join(directory, f".{stem[:100]}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in '{directory}'")


def _refuse(name: str) -> OutputError:
    return OutputError(f"refusing to overwrite existing file '{name}'; "
                       "pass --force or choose another --out")


def _atomic_write(path, write, overwrite: bool) -> Path:
    """Write via ``write(fileobj)`` to a temp file beside ``path``, then publish it.

    Without overwrite the publish is ``os.link`` (fails if the name exists, so no
    race with another writer); where hard links are unsupported we fall back to
    an exists-check plus ``os.replace``.  A failure never leaves a partial file.
    """
    name = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(name))
    if os.path.isdir(name):
        raise OutputError(f"cannot write '{name}': it is a directory; choose another --out")
    if not overwrite and os.path.lexists(name):
        raise _refuse(name)
    tmp = None
    try:
        fd, tmp = _create_temp(directory, os.path.basename(name))
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # data on disk before the name points at it
        if overwrite:
            os.replace(tmp, name)
        else:
            try:
                os.link(tmp, name)
            except FileExistsError:
                raise _refuse(name) from None
            except OSError:  # filesystem without hard links (FAT, some mounts)
                if os.path.lexists(name):
                    raise _refuse(name) from None
                os.replace(tmp, name)
    except OutputError:
        raise
    except FileNotFoundError as exc:
        raise OutputError(f"cannot write '{name}': directory '{directory}' does not exist; "
                          "create it or choose another --out") from exc
    except OSError as exc:
        raise OutputError(f"cannot write '{name}': {_one_line(exc.strerror or exc)}; "
                          "check free space and permissions or choose another --out") from exc
    finally:
        if tmp is not None and os.path.lexists(tmp):
            with contextlib.suppress(OSError):  # after a failure, or a link's leftover
                os.unlink(tmp)
    return Path(name)


def _write_png(path, array: np.ndarray, overwrite: bool) -> Path:
    image = Image.fromarray(array)  # uint16 2-D -> I;16, uint8 HxWx3 -> RGB
    return _atomic_write(path, lambda f: image.save(f, format="PNG"), overwrite)


def write_depth_png16(path, depth, invert: bool = False, *, overwrite: bool = False) -> Path:
    """16-bit greyscale PNG, min-max normalised over finite values to 0..65535.

    Non-finite handling and constant maps follow :func:`normalize`.  ``invert``
    flips the ramp (e.g. to store a depth map as white = near).
    """
    v = normalize(_as_map(depth), invert=invert)
    return _write_png(path, np.rint(v * 65535.0).astype(np.uint16), overwrite)


def write_color_png(path, depth, cmap: str = "turbo", *, kind: str | None = None,
                    invert: bool = False, overwrite: bool = False) -> Path:
    """8-bit RGB colour-mapped PNG for viewing.

    Low values map to the start of the colour map (turbo: dark blue, inferno:
    black).  Give ``kind`` (see :data:`DEPTH_KINDS`) to orient it so NEAR is the
    warm/bright end whatever the model outputs; ``invert`` flips it further.
    NaN pixels get the colour of 0.
    """
    lut = colormap_lut(cmap)
    if kind is not None and not _near_is_high(kind):
        invert = not invert
    v = normalize(_as_map(depth), invert=invert)
    return _write_png(path, lut[np.rint(v * 255.0).astype(np.intp)], overwrite)


def write_controlnet_png(path, depth, kind: str, *, overwrite: bool = False) -> Path:
    """8-bit RGB ControlNet depth hint (white = near); see :func:`to_controlnet`."""
    return _write_png(path, to_controlnet(depth, kind), overwrite)


def write_npy(path, array, *, overwrite: bool = False) -> Path:
    """Raw values as a float32 ``.npy`` (no normalisation; NaN/inf kept as is)."""
    a = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
    return _atomic_write(path, lambda f: np.save(f, a, allow_pickle=False), overwrite)


def normals_to_rgb(normals) -> np.ndarray:
    """Surface normals (H, W, 3) in [-1, 1] as (H, W, 3) uint8 RGB, (n + 1) / 2 * 255.

    Values are clipped to [-1, 1]; NaN becomes 0 (mid-grey 128), the usual
    "no normal" colour.  The axis convention is the caller's (passed through).
    """
    n = np.asarray(normals, dtype=np.float64)
    if n.ndim != 3 or n.shape[-1] != 3 or n.size == 0:
        raise InputError(f"normals map must be (H, W, 3), got shape {n.shape}; "
                         "this is a bug in the caller, please report it")
    n = np.clip(np.nan_to_num(n, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
    return np.rint((n + 1.0) * 0.5 * 255.0).astype(np.uint8)


def write_normals_png(path, normals, *, overwrite: bool = False) -> Path:
    """Surface normals (H, W, 3) in [-1, 1] as an 8-bit RGB PNG; see :func:`normals_to_rgb`."""
    return _write_png(path, normals_to_rgb(normals), overwrite)
