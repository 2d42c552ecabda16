"""Parity of a Marigold bundle against diffusers' MarigoldDepthPipeline / MarigoldNormalsPipeline.

Both sides get the same image and the same initial noise (``latents``), so the comparison is
deterministic: DDIM at 1 step and the model's default (4), LCM at 1 step (LCM draws fresh noise
between steps, which diffusers takes from torch's global generator, so more steps cannot be
compared). Normals are also compared with ``ensemble_size`` 3 (same rule on both sides); depth
ensembling uses another alignment solver than diffusers (see depthrt.diffusion.marigold) and is
reported for information only.
"""

from __future__ import annotations

import importlib.util
import platform
from pathlib import Path

import numpy as np

from depthrt import metrics
from depthrt.diffusion import load_diffusion
from depthrt.errors import BundleError
from depthrt.manifest import read_manifest, verify_hashes
from depthrt.samples import synthetic_image

from .common import resolve_pipeline
from .marigold import COMPONENTS, load_pipeline

DEFAULT_SIZES = ((517, 333), (240, 401))  # (height, width): portrait and landscape, not multiples of 8
REL_L2 = 1e-2  # the acceptance figure; measured about 1e-6 on the tiny pipelines
ANGLE_DEG = 0.5
ABS_REL = 1e-2


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos = np.clip(np.sum(a.astype(np.float64) * b, axis=-1), -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def compare(ours: np.ndarray, ref: np.ndarray, task: str) -> dict:
    """Relative L2 (plain and centred), max abs; AbsRel/delta1 for depth, angular error for normals."""
    row = {"rel_l2_plain": float(np.linalg.norm(ours - ref) / max(np.linalg.norm(ref), 1e-12))}
    row.update(metrics.compare(ours, ref, depth=task == "depth"))
    if task == "normals":
        ang = _angles(ours, ref)
        row.update(angle_mean_deg=float(ang.mean()), angle_max_deg=float(ang.max()),
                   abs_rel=float("nan"), delta1=float("nan"))
        row["passed"] = bool(row["nonfinite"] == 0 and row["rel_l2"] <= REL_L2 and row["angle_mean_deg"] <= ANGLE_DEG)
    else:
        row["passed"] = bool(row["nonfinite"] == 0 and row["rel_l2"] <= REL_L2 and row["abs_rel"] <= ABS_REL)
    return row


# What `depthrt export` checks by default: one step at a small processing resolution, enough to
# prove the three graphs and the loop against diffusers in seconds (`depthrt check` does more).
EXPORT_CHECK = {"processing_resolution": 128, "steps": (1,)}


def run_check(bundle: str | Path, weights: str | None = None, backend: str = "ort-cpu", precision: str = "fp32",
              sizes=DEFAULT_SIZES, processing_resolution: int | None = None, steps=None, seed: int = 0,
              verify: bool = True, pipeline=None) -> dict:
    """Run diffusers and the bundle on the same images and noise; the report (``passed`` is the verdict)."""
    import torch

    bundle = Path(bundle)
    manifest = read_family_manifest(bundle, "marigold", "a Marigold", verify)
    loop = manifest["loop"]
    task = loop["task"]
    if pipeline is None:
        pipeline, _ = load_pipeline(resolve_pipeline(weights or manifest["source"]["id"], COMPONENTS))
    pipeline.set_progress_bar_config(disable=True)
    estimator = load_diffusion(bundle, manifest, backend, precision)
    resolution = loop["processing_resolution"] if processing_resolution is None else processing_resolution
    lcm = loop["scheduler"]["class"] == "LCMScheduler"
    if steps is None:
        steps = (1,) if lcm else tuple(sorted({1, loop["default_steps"]}))
    cases = [(s, 1) for s in steps] + [(steps[-1], 3)]
    if task == "depth" and importlib.util.find_spec("scipy") is None:
        cases.pop()  # diffusers' depth ensembling needs scipy; the figure is informative only
    rows, info = [], []
    for i, (h, w) in enumerate(sizes):
        image = synthetic_image(h, w, seed=i)
        tensor = torch.from_numpy(image).permute(2, 0, 1)[None]  # diffusers reads HxWx3 numpy sizes wrongly
        edge = max(h, w)
        ph, pw = (h * resolution // edge, w * resolution // edge) if resolution else (h, w)
        f = loop["vae_scale_factor"]
        for n, ens in cases:
            shape = (ens, loop["latent_channels"], -(-ph // f), -(-pw // f))
            latents = torch.randn(shape, generator=torch.Generator().manual_seed(seed + i))
            ref = pipeline(tensor, num_inference_steps=n, ensemble_size=ens, processing_resolution=resolution,
                           latents=latents, output_type="np").prediction[0]
            pred = estimator.predict(image, num_inference_steps=n, ensemble_size=ens,
                                     processing_resolution=resolution, latents=latents.numpy())
            ours = pred.normals if task == "normals" else pred.depth
            ref = ref if task == "normals" else ref[..., 0]
            row = {"image": f"synthetic {w}x{h}", "size": f"{w}x{h}", "steps": n, "ensemble": ens,
                   **compare(ours, ref, task)}
            (info if (task == "depth" and ens > 1) else rows).append(row)
    # informative rows: depth ensembles, aligned by another solver than diffusers'
    return loop_report(f"diffusers {type(pipeline).__name__} with the same latents", weights or manifest["source"]["id"],
                       estimator, precision, resolution, rows, info)


def read_family_manifest(bundle: Path, family: str, what: str, verify: bool) -> dict:
    """The bundle's manifest, refused unless it is of ``family``; graph hashes checked if ``verify``."""
    manifest = read_manifest(bundle)
    if manifest["model"]["family"] != family:
        raise BundleError(f"'{bundle}' is a {manifest['model']['family']} bundle, not {what} one")
    if verify:
        verify_hashes(bundle, manifest)
    return manifest


def loop_report(reference: str, weights: str, estimator, precision: str, resolution, rows: list[dict],
                informative: list[dict] | None = None) -> dict:
    """The parity report of a latent-diffusion check (Marigold, Lotus, LBM share its format)."""
    return {
        "reference": reference,
        "weights": weights,
        "backend": estimator.backend,
        "precision": precision,
        "machine": platform.machine(),
        "processing_resolution": resolution,
        "tolerance": {"rel_l2": REL_L2, "abs_rel": ABS_REL, "angle_mean_deg": ANGLE_DEG},
        "images": rows,
        "informative": informative or [],
        "worst_rel_l2": max(r["rel_l2"] for r in rows),
        "passed": all(r["passed"] for r in rows),
    }


def format_report(report: dict) -> str:
    lines = [f"parity vs {report['reference']} at processing_resolution {report['processing_resolution']}",
             f"backend {report['backend']} {report['precision']}, tolerance rel-L2 <= {report['tolerance']['rel_l2']:g}"]
    lines.append(f"{'image':<20} {'steps':>5} {'ens':>3} {'rel-L2':>9} {'centred':>9} {'max abs':>9} "
                 f"{'AbsRel/deg':>10}  result")
    for r in report["images"] + report.get("informative", []):
        third = r["angle_mean_deg"] if "angle_mean_deg" in r else r["abs_rel"]
        verdict = ("ok" if r["passed"] else "FAIL") if r in report["images"] else "info"
        lines.append(f"{r['image']:<20} {r['steps']:>5} {r['ensemble']:>3} {r['rel_l2_plain']:>9.2e} "
                     f"{r['rel_l2']:>9.2e} {r['max_abs']:>9.2e} {third:>10.2e}  {verdict}")
    lines.append("PASSED" if report["passed"] else "FAILED")
    return "\n".join(lines)
