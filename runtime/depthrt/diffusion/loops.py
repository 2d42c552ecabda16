"""Diffusion schedulers in numpy: the per-step arithmetic between two UNet calls.

Built from a bundle's ``loop["scheduler"]`` (diffusers' published scheduler config plus the
``alphas_cumprod`` and ``final_alpha_cumprod`` that diffusers computed at export), so beta
schedules and the zero-terminal-SNR rescale never need re-deriving here: a rescaled schedule is
just other coefficients (``alphas_cumprod[-1] == 0``).

Every scheduler has ``timesteps(n) -> int64 array`` (the order they run in) and
``step(model_output, sample, timesteps, index, rng) -> sample`` for ``timesteps[index]``
(stateless; ``rng`` is a numpy Generator, used only by LCM between steps).
The formulas follow diffusers' ``DDIMScheduler`` (eta = 0, deterministic) and ``LCMScheduler``.
"""

from __future__ import annotations

import numpy as np

from ..errors import BundleError, InputError

_F32 = np.float32
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class _Discrete:
    """What DDIM and LCM share: coefficients, prediction types, clipping."""

    def __init__(self, spec: dict):
        try:
            self.alphas_cumprod = np.asarray(spec["alphas_cumprod"], dtype=_F32)
            self.final_alpha_cumprod = _F32(spec["final_alpha_cumprod"])
            self.num_train_timesteps = int(spec.get("num_train_timesteps", len(self.alphas_cumprod)))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"the bundle's loop.scheduler lacks a valid {exc}; re-export the bundle") from None
        # Every timestep indexes the coefficients: a short, non-finite or out-of-range table would
        # fail (or give NaN) mid-run, so refuse it at load.
        a = self.alphas_cumprod
        if not (a.ndim == 1 and 1 <= self.num_train_timesteps <= a.size and np.isfinite(a).all()
                and ((a >= 0) & (a <= 1)).all() and 0 <= self.final_alpha_cumprod <= 1):
            raise BundleError(f"the bundle's loop.scheduler coefficients are invalid ({a.size} alphas_cumprod "
                              f"for {self.num_train_timesteps} training timesteps, each in 0..1 expected); "
                              "re-export the bundle")
        self.prediction_type = spec.get("prediction_type", "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise BundleError(f"scheduler prediction_type '{self.prediction_type}' is not one of "
                              f"{', '.join(PREDICTION_TYPES)}; this depthrt cannot run the bundle")
        if spec.get("thresholding"):
            raise BundleError("scheduler 'thresholding' (dynamic thresholding) is not supported by depthrt")
        self.clip_sample = bool(spec.get("clip_sample", False))
        self.clip_sample_range = float(spec.get("clip_sample_range", 1.0))
        self.spec = spec

    def _alpha(self, t: int) -> np.float32:
        return self.alphas_cumprod[t] if t >= 0 else self.final_alpha_cumprod

    def _x0_eps(self, model_output: np.ndarray, sample: np.ndarray, t: int):
        """(predicted original sample, predicted noise) for the configured prediction type."""
        a = self.alphas_cumprod[t]
        b = _F32(1) - a
        sa, sb = np.sqrt(a), np.sqrt(b)
        if self.prediction_type == "epsilon":
            x0 = (sample - sb * model_output) / sa
            eps = model_output
        elif self.prediction_type == "sample":
            x0 = model_output
            eps = (sample - sa * x0) / sb
        else:  # v_prediction
            x0 = sa * sample - sb * model_output
            eps = sa * model_output + sb * sample
        if self.clip_sample:
            x0 = np.clip(x0, -self.clip_sample_range, self.clip_sample_range)
        return x0.astype(_F32, copy=False), eps.astype(_F32, copy=False)

    def check_steps(self, n) -> int:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise InputError(f"num_inference_steps must be a whole number of at least 1, not {n!r}")
        if n > self.max_steps:
            raise InputError(f"num_inference_steps {n} is more than this model's scheduler allows "
                             f"({self.max_steps}); use fewer steps")
        return int(n)


class DDIM(_Discrete):
    """diffusers' DDIMScheduler with eta = 0 (the deterministic DDIM that Marigold uses)."""

    def __init__(self, spec: dict):
        super().__init__(spec)
        self.spacing = spec.get("timestep_spacing", "leading")
        if self.spacing not in ("leading", "trailing", "linspace"):
            raise BundleError(f"DDIM timestep_spacing '{self.spacing}' is not supported")
        self.steps_offset = int(spec.get("steps_offset", 0))
        self.max_steps = self.num_train_timesteps

    def timesteps(self, n: int) -> np.ndarray:
        n = self.check_steps(n)
        total = self.num_train_timesteps
        if self.spacing == "linspace":
            ts = np.linspace(0, total - 1, n).round()[::-1].astype(np.int64)
        elif self.spacing == "leading":
            ratio = total // n
            ts = (np.arange(0, n) * ratio).round()[::-1].astype(np.int64) + self.steps_offset
        else:  # trailing: the first step is at the last training timestep (pure noise with zero SNR)
            ts = np.round(np.arange(total, 0, -total / n)).astype(np.int64) - 1
        return ts.copy()

    def step(self, model_output: np.ndarray, sample: np.ndarray, timesteps: np.ndarray, index: int,
             rng=None) -> np.ndarray:
        ts = timesteps
        t = int(ts[index])
        prev_t = t - self.num_train_timesteps // len(ts)
        a_prev = self._alpha(prev_t)
        x0, eps = self._x0_eps(model_output, sample, t)
        return (np.sqrt(a_prev) * x0 + np.sqrt(_F32(1) - a_prev) * eps).astype(_F32, copy=False)


class LCM(_Discrete):
    """diffusers' LCMScheduler: consistency-model boundary scalings; fresh noise between steps."""

    def __init__(self, spec: dict):
        super().__init__(spec)
        self.original_steps = int(spec.get("original_inference_steps", 50))
        self.timestep_scaling = float(spec.get("timestep_scaling", 10.0))
        self.max_steps = self.original_steps

    def timesteps(self, n: int) -> np.ndarray:
        n = self.check_steps(n)
        k = self.num_train_timesteps // self.original_steps
        origin = (np.arange(1, self.original_steps + 1) * k - 1)[::-1]
        idx = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)
        return origin[idx].astype(np.int64)

    def step(self, model_output: np.ndarray, sample: np.ndarray, timesteps: np.ndarray, index: int,
             rng=None) -> np.ndarray:
        ts = timesteps
        t = int(ts[index])
        last = index == len(ts) - 1
        prev_t = t if last else int(ts[index + 1])
        sigma_data = 0.5
        scaled = _F32(t * self.timestep_scaling)
        c_skip = _F32(sigma_data**2 / (scaled**2 + sigma_data**2))
        c_out = _F32(scaled / (scaled**2 + sigma_data**2) ** 0.5)
        x0, _ = self._x0_eps(model_output, sample, t)
        denoised = (c_out * x0 + c_skip * sample).astype(_F32, copy=False)
        if last:
            return denoised
        if rng is None:
            rng = np.random.default_rng()
        noise = rng.standard_normal(sample.shape, dtype=_F32)
        a_prev = self._alpha(prev_t)
        return (np.sqrt(a_prev) * denoised + np.sqrt(_F32(1) - a_prev) * noise).astype(_F32, copy=False)


SCHEDULERS = {"DDIMScheduler": DDIM, "LCMScheduler": LCM}


def make_scheduler(spec: dict):
    """The scheduler a bundle's ``loop["scheduler"]`` describes."""
    cls = SCHEDULERS.get(spec.get("class"))
    if cls is None:
        raise BundleError(f"the bundle's scheduler '{spec.get('class')}' is not one depthrt runs "
                          f"(known: {', '.join(SCHEDULERS)}); update depthrt or re-export the bundle")
    return cls(spec)
