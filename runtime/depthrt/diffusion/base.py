"""What every latent-diffusion estimator shares: graphs, conditioning, argument checks, image ops.

A family module subclasses :class:`DiffusionEstimator` and implements ``predict_one``; see the
package docstring for the contract. Image helpers here are numpy twins of the torch ops the
published pipelines use, so the family code reads like the pipeline it follows.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import processing
from ..backends import open_graph
from ..errors import BundleError, InputError
from ..estimator import Prediction, image_list
from ..manifest import sha256_file, size_problem

_F32 = np.float32
_STEP_HOOKS = threading.local()  # per thread: {id(estimator): progress hook of its running predict}
GRAPHS = ("vae_encoder", "unet", "vae_decoder")


# --------------------------------------------------------------------------- image helpers
def check_image(image, where: str = "image") -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise InputError(f"{where} is a {type(image).__name__}; pass an HxWx3 uint8 RGB numpy array")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"{where} has shape {image.shape}; pass an HxWx3 RGB array (convert greyscale or RGBA "
                         "first, or read files with depthrt.imageio.read_image)")
    if image.dtype != np.uint8:
        raise InputError(f"{where} has dtype {image.dtype}; pass uint8 RGB values 0..255")
    return image


def to_unit_range(image: np.ndarray, signed: bool = True) -> np.ndarray:
    """HxWx3 uint8 -> 1x3xHxW float32 in [-1, 1] (``signed``) or [0, 1], as diffusers computes it."""
    x = image.astype(_F32).transpose(2, 0, 1)[None] / _F32(255)
    return (x * _F32(2) - _F32(1)) if signed else x


def _aa_weights(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """Dense [n_out, n_in] weights of torch's antialiased interpolate (PIL's separable filter).

    In float32 like ATen's ``_compute_weights_aa`` (float64 weights differ from torch by ~1e-5).
    """
    f = _F32
    scale = f(n_in) / f(n_out)
    if mode == "bilinear":
        size = f(1)

        def kernel(x):
            return np.maximum(f(0), f(1) - np.abs(x)).astype(f)
    elif mode == "bicubic":
        a = f(-0.5)  # torch's antialiased bicubic uses PIL's a = -0.5

        def kernel(x):
            x = np.abs(x)
            return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                            np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, f(0))).astype(f)
        size = f(2)
    else:
        raise InputError(f"antialiased resize supports bilinear and bicubic, not {mode!r}")
    support = size * scale if scale >= 1 else size
    invscale = f(1) / scale if scale >= 1 else f(1)
    weights = np.zeros((n_out, n_in), f)
    for i in range(n_out):
        center = scale * (f(i) + f(0.5))
        lo = max(int(center - support + f(0.5)), 0)
        hi = min(int(center + support + f(0.5)), n_in)
        w = kernel((np.arange(lo, hi, dtype=f) - center + f(0.5)) * invscale)
        total = f(0)
        for v in w:  # sequential float32 sum, as ATen
            total = f(total + v)
        weights[i, lo:hi] = w / total if total != 0 else w
    return weights


def resize_antialias(x: np.ndarray, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """``F.interpolate(x, size, mode, antialias=True, align_corners=False)`` on (..., H, W) float32."""
    h, w = int(size[0]), int(size[1])
    wh = _aa_weights(x.shape[-2], h, mode)
    ww = _aa_weights(x.shape[-1], w, mode)
    # width pass first, then height: ATen's order
    return np.matmul(wh, np.matmul(x.astype(_F32, copy=False), ww.T)).astype(_F32, copy=False)


def resize(x: np.ndarray, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """``F.interpolate(x, size, mode)`` without antialias: bilinear, bicubic, nearest or nearest-exact."""
    if mode in ("bilinear", "bicubic"):
        return processing.interpolate(x, size, mode=mode, align_corners=False)
    if mode not in ("nearest", "nearest-exact"):
        raise InputError(f"resize mode {mode!r} is not supported")
    out = []
    for axis, n_out in ((-2, int(size[0])), (-1, int(size[1]))):
        n_in = x.shape[axis]
        scale = _F32(n_in) / _F32(n_out)
        src = np.arange(n_out, dtype=_F32)
        src = src + _F32(0.5) if mode == "nearest-exact" else src
        out.append(np.minimum(np.floor(src * scale).astype(np.int64), n_in - 1))
    return np.ascontiguousarray(x[..., out[0][:, None], out[1][None, :]])


def pad_to_multiple(x: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Replicate-pad (..., H, W) at the bottom and right to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        x = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, ph), (0, pw)], mode="edge")
    return x, (ph, pw)


def unpad(x: np.ndarray, padding: tuple[int, int]) -> np.ndarray:
    ph, pw = padding
    return x[..., : x.shape[-2] - ph, : x.shape[-1] - pw]


def normalize_normals(n: np.ndarray, axis: int = 1, eps: float = 1e-6) -> np.ndarray:
    norm = np.sqrt(np.sum(n * n, axis=axis, keepdims=True))
    return (n / np.maximum(norm, _F32(eps))).astype(_F32, copy=False)


# --------------------------------------------------------------------------- the estimator
class DiffusionEstimator:
    """A latent-diffusion bundle on one backend. Create it with :func:`depthrt.load`."""

    @property
    def _on_step(self):
        """The hook that predict(progress=...) runs after each UNet call, for the predict running in
        this thread: one estimator may serve several threads at once, each with its own progress."""
        return getattr(_STEP_HOOKS, "hooks", {}).get(id(self))

    @_on_step.setter
    def _on_step(self, hook) -> None:
        hooks = _STEP_HOOKS.__dict__.setdefault("hooks", {})
        if hook is None:
            hooks.pop(id(self), None)
        else:
            hooks[id(self)] = hook

    def __init__(self, bundle: Path, manifest: dict, backend: str, precision: str = "fp32",
                 threads: int | None = None):
        self.bundle = Path(bundle)
        self.manifest = manifest
        self.backend = backend
        self.precision = precision
        self.loop = manifest["loop"]
        self.kind = manifest["output"]["kind"]
        self.units = manifest["output"]["units"]
        # The fp32 entries; open_graph picks a graph's fp16 variant itself (select_graph) at precision fp16.
        graphs = {g["name"]: g for g in manifest["graphs"] if g.get("precision", "fp32") == "fp32"}
        missing = [name for name in GRAPHS if name not in graphs]
        if missing:
            raise BundleError(f"bundle '{bundle}' lacks the graph(s) {', '.join(missing)} that a "
                              f"{manifest['model']['family']} bundle needs; re-export it")
        self.graphs = graphs
        self.runners = {name: open_graph(self.bundle, graphs[name], backend, precision, threads=threads)
                        for name in GRAPHS}
        self.text_embedding = self._load_text_embedding()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.bundle)!r}, model={self.manifest['model']['name']!r}, "
                f"backend={self.backend!r})")

    # ------------------------------------------------------------------ bundle pieces
    def _load_text_embedding(self) -> np.ndarray | None:
        entry = self.loop.get("text_embedding")
        if entry is None:
            return None
        path = self.bundle / entry["file"]
        if not path.is_file():
            raise BundleError(f"bundle '{self.bundle}' is missing '{entry['file']}' (the empty-prompt embedding): "
                              "copy the whole bundle directory, or re-export it")
        if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            raise BundleError(f"'{path}' does not match its manifest entry: it was modified; re-export the bundle")
        emb = np.load(path, allow_pickle=False)
        if list(emb.shape) != list(entry["shape"]) or emb.dtype != np.float32:
            raise BundleError(f"'{path}' holds {emb.dtype} {emb.shape}, not float32 {entry['shape']}; re-export")
        return emb

    def dynamic(self, graph: str, dim: str) -> dict | None:
        return self.graphs[graph]["dynamic"].get(dim)

    def check_image_size(self, height: int, width: int, where: str, original: tuple[int, int]) -> None:
        """Refuse a processed size the encoder cannot run (its ``limits``) or too large to allocate, saying why."""
        processing.check_target_size(height, width, original)
        problem = size_problem(self.graphs["vae_encoder"], {"height": height, "width": width})
        if problem:
            raise InputError(
                f"{where} ({original[1]}x{original[0]}) becomes {width}x{height} for the model: {problem}; crop "
                "it to a less extreme aspect ratio or choose another processing_resolution")

    def _chunks(self, graph: str, n: int):
        r = self.dynamic(graph, "batch")
        step = r["max"] if r else 1
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]

    def encode(self, image: np.ndarray) -> np.ndarray:
        """[B,3,H,W] in [-1, 1] -> scaled latent mean [B,C,H/f,W/f]."""
        run = self.runners["vae_encoder"].run
        return np.concatenate([run({"image": image[s]})["latent"] for s in self._chunks("vae_encoder", len(image))])

    def unet(self, sample: np.ndarray, timestep, **extra: np.ndarray) -> np.ndarray:
        """One UNet call for a batch; ``timestep`` a number or [B]; extra inputs are batched like ``sample``.

        ``encoder_hidden_states`` defaults to the stored empty-prompt embedding.
        """
        b = len(sample)
        feeds = {"sample": np.ascontiguousarray(sample, dtype=_F32),
                 "timestep": np.broadcast_to(np.asarray(timestep, _F32), (b,)).copy()}
        if self.text_embedding is not None and "encoder_hidden_states" not in extra:
            feeds["encoder_hidden_states"] = np.repeat(self.text_embedding, b, axis=0)
        feeds.update(extra)
        run = self.runners["unet"].run
        out = np.concatenate([run({k: v[s] for k, v in feeds.items()})["model_output"]
                              for s in self._chunks("unet", b)])
        if self._on_step is not None:
            self._on_step()
        return out

    def decode(self, latent: np.ndarray) -> np.ndarray:
        """Scaled latents [B,C,h,w] -> the decoder's raw output [B,3,h*f,w*f]."""
        run = self.runners["vae_decoder"].run
        return np.concatenate([run({"latent": latent[s]})["decoded"] for s in self._chunks("vae_decoder", len(latent))])

    # ------------------------------------------------------------------ the public call
    def predict(self, image: np.ndarray | Sequence[np.ndarray], num_inference_steps: int | None = None,
                ensemble_size: int = 1, processing_resolution: int | None = None, seed: int | None = None,
                latents: np.ndarray | Sequence[np.ndarray] | None = None, progress=None):
        """Depth or normals for one HxWx3 uint8 RGB image, or for a list of them.

        ``num_inference_steps`` defaults to the model's (Marigold DDIM 4, LCM 1);
        ``ensemble_size`` > 1 runs that many noise draws and merges them; ``processing_resolution``
        is the long edge the image is resized to (default from the model, 0 = the input size);
        ``seed`` seeds numpy's generator for the initial noise (not torch's: the noise differs from
        diffusers' for the same seed); ``latents`` is explicit initial noise in diffusers' shape
        ``(ensemble_size, C, h, w)`` for one image (a list of those for a list of images), for
        reproducible runs and parity with diffusers. ``progress(done, total)`` is called after each
        denoising step (one UNet call; ``total`` = images x steps) and after each finished image; an
        exception raised in it stops the run there (a cancel button).
        """
        single, images = image_list(image)
        if not images:
            return []
        steps = self.loop.get("default_steps", 1) if num_inference_steps is None else num_inference_steps
        if isinstance(ensemble_size, bool) or not isinstance(ensemble_size, (int, np.integer)) or ensemble_size < 1:
            raise InputError(f"ensemble_size must be a whole number of at least 1, not {ensemble_size!r}")
        resolution = self.loop.get("processing_resolution", 0) if processing_resolution is None \
            else processing_resolution
        if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 0:
            raise InputError(f"processing_resolution must be a whole number >= 0 (0 = input size), not {resolution!r}")
        if single:
            latent_list = [latents]
        elif latents is None:
            latent_list = [None] * len(images)
        else:
            latent_list = list(latents)
            if len(latent_list) != len(images):
                raise InputError(f"latents has {len(latent_list)} entries for {len(images)} images; pass one "
                                 "array per image")
        try:
            rng = np.random.default_rng(seed)
        except (TypeError, ValueError):  # numpy's own words name neither the argument nor the fix
            raise InputError(f"seed must be None or a whole number >= 0, not {seed!r}") from None
        preds = []
        per_image = int(steps) if isinstance(steps, (int, np.integer)) and steps > 0 else 1  # predict_one checks it
        total, done = len(images) * per_image, 0

        def step_done():
            nonlocal done
            done = min(done + 1, total)
            progress(done, total)

        self._on_step = step_done if progress is not None else None
        try:
            for i, (im, lat) in enumerate(zip(images, latent_list)):
                where = "image" if single else f"image {i}"
                check_image(im, where)
                if lat is not None:
                    lat = np.asarray(lat, dtype=_F32)
                preds.append(self.predict_one(im, steps, int(ensemble_size), int(resolution), rng, lat, where))
                if progress is not None and done < (i + 1) * per_image:
                    done = (i + 1) * per_image
                    progress(done, total)
        finally:
            self._on_step = None
        return preds[0] if single else preds

    @staticmethod
    def initial_noise(latents: np.ndarray | None, shape: tuple, rng: np.random.Generator, where: str,
                      needs: str) -> np.ndarray:
        """The caller's ``latents``, checked against ``shape`` (``needs`` says what that shape is made of),
        or standard normal noise of ``shape`` drawn from ``rng``."""
        if latents is None:
            return rng.standard_normal(shape, dtype=_F32)
        if tuple(latents.shape) != tuple(shape):
            raise InputError(f"latents for {where} have shape {tuple(latents.shape)}, but {needs}")
        if not np.all(np.isfinite(latents)):
            raise InputError(f"latents for {where} contain NaN or infinity")
        return latents

    def rgb_prediction(self, rgb: np.ndarray) -> Prediction:
        """A decoded [3, H, W] image in [0, 1] as the prediction: depth is its channel mean, normals
        are its colours mapped to [-1, 1] and normalised (Lotus and LBM decode both this way)."""
        if self.task == "depth":
            return Prediction(depth=np.ascontiguousarray(rgb.mean(axis=0), dtype=_F32), kind=self.kind,
                              units=self.units)
        normals = normalize_normals(rgb[None] * _F32(2) - _F32(1))[0].transpose(1, 2, 0)
        return Prediction(depth=None, kind=self.kind, units=self.units, normals=np.ascontiguousarray(normals))

    def predict_one(self, image: np.ndarray, steps: int, ensemble_size: int, resolution: int,
                    rng: np.random.Generator, latents: np.ndarray | None, where: str):
        raise NotImplementedError
