"""Parity and accuracy metrics between a prediction and its reference (numpy only)."""

from __future__ import annotations

import numpy as np


def _finite_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    p = pred.astype(np.float64).ravel()
    r = ref.astype(np.float64).ravel()
    keep = np.isfinite(p) & np.isfinite(r)
    return p[keep], r[keep]


def centred_rel_l2(pred: np.ndarray, ref: np.ndarray) -> float:
    """||(p - mean p) - (r - mean r)|| / ||r - mean r||: insensitive to a constant offset only."""
    p, r = _finite_pair(pred, ref)
    pc, rc = p - p.mean(), r - r.mean()
    denom = np.linalg.norm(rc)
    return float(np.linalg.norm(pc - rc) / denom) if denom > 0 else float(np.linalg.norm(pc - rc))


def align_scale_shift(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``pred`` mapped by the least-squares scale and shift that best fit ``ref``."""
    p, r = _finite_pair(pred, ref)
    a = np.stack([p, np.ones_like(p)], axis=1)
    (scale, shift), *_ = np.linalg.lstsq(a, r, rcond=None)
    return (pred.astype(np.float64) * scale + shift).astype(np.float32)


def abs_rel_delta1(pred: np.ndarray, ref: np.ndarray, align: bool = True) -> tuple[float, float]:
    """AbsRel and delta1 (share of pixels with max(p/r, r/p) < 1.25), after alignment if asked.

    Only pixels where the reference is above 1% of its 99th percentile take part: relative error
    is undefined at zero (sky in inverse depth, untrained models' near-zero maps), and a handful
    of such pixels would otherwise decide the figure.
    """
    if align:
        pred = align_scale_shift(pred, ref)
    p, r = _finite_pair(pred, ref)
    floor = 0.01 * np.percentile(r, 99) if r.size else 0.0
    keep = (r > max(floor, 0.0)) & (p > 0)
    if not keep.any():
        return float("nan"), float("nan")
    p, r = p[keep], r[keep]
    abs_rel = float(np.mean(np.abs(p - r) / r))
    delta1 = float(np.mean(np.maximum(p / r, r / p) < 1.25))
    return abs_rel, delta1


def max_abs(pred: np.ndarray, ref: np.ndarray) -> float:
    p, r = _finite_pair(pred, ref)
    return float(np.max(np.abs(p - r))) if p.size else float("nan")


def compare(pred: np.ndarray, ref: np.ndarray, depth: bool = True) -> dict:
    """All parity figures of one map against its reference, as a JSON-able dict."""
    out = {"rel_l2": centred_rel_l2(pred, ref), "max_abs": max_abs(pred, ref),
           "nonfinite": int(np.count_nonzero(~np.isfinite(pred)))}
    if depth:
        out["abs_rel"], out["delta1"] = abs_rel_delta1(pred, ref)
    return out
