"""`depthrt check`: parity of a bundle against its PyTorch reference pipeline."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

import depthrt
from depthrt import metrics
from depthrt.manifest import read_manifest, verify_hashes, write_json_atomic
from depthrt.samples import synthetic_image

from .specs import get_spec
from .weights import resolve_weights

# (height, width): portrait, landscape, and odd sizes far from the traced one, so a graph that
# baked its trace shape in, or a resize rule that differs by one pixel, fails here.
DEFAULT_SIZES = ((517, 333), (360, 480), (701, 250))


def _synthetic_inputs(sizes) -> list[tuple[str, np.ndarray]]:
    return [(f"synthetic {w}x{h}", synthetic_image(h, w, seed=i)) for i, (h, w) in enumerate(sizes)]


def run_check(bundle: str | Path, weights: str | None = None, images: list[str] | None = None,
              backend: str = "ort-cpu", precision: str = "fp32", sizes=DEFAULT_SIZES,
              trust_pickle: bool = False, model=None, verify=True) -> dict:
    """Run reference and bundle on the same images; return the report (``passed`` says the verdict)."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    if verify:
        verify_hashes(bundle, manifest)
    spec = get_spec(manifest["model"]["family"])
    source = weights or manifest["source"]["id"]
    resolved = resolve_weights(source, trust_pickle=trust_pickle)
    spec.check_config(resolved)
    reference = spec.reference(resolved, model=model)
    estimator = depthrt.load(bundle, backend=backend, precision=precision)
    if images:
        from depthrt.imageio import read_image

        inputs = [(str(p), read_image(p)) for p in images]
    else:
        inputs = _synthetic_inputs(sizes)
    tol = spec.tolerances.get(precision) or spec.tolerances["fp32"]
    rows = []
    for name, image in inputs:
        ours = estimator.predict(image)
        ref = reference(image)
        row = {"image": name, "size": f"{image.shape[1]}x{image.shape[0]}", **metrics.compare(ours.depth, ref["depth"])}
        ok = row["nonfinite"] == 0 and row["rel_l2"] <= tol.rel_l2 and row["abs_rel"] <= tol.abs_rel
        if "sky" in ref:
            # The mask is a threshold of a resized score: a pixel whose score sits on 0.5 may
            # flip with float rounding, so a few in 10^4 may differ; more means a real mismatch.
            row["sky_mismatch"] = float(np.mean(ours.sky != ref["sky"]))
            ok = ok and row["sky_mismatch"] <= 1e-3
        row["passed"] = bool(ok)
        rows.append(row)
    return {
        "reference": getattr(reference, "description", spec.architecture),
        "weights": resolved.id,
        "backend": estimator.backend,
        "precision": precision,
        "machine": platform.machine(),
        "tolerance": {"rel_l2": tol.rel_l2, "abs_rel": tol.abs_rel},
        "images": rows,
        "worst_rel_l2": max(r["rel_l2"] for r in rows),
        "passed": all(r["passed"] for r in rows),
    }


def format_report(report: dict) -> str:
    lines = [f"parity vs {report['reference']}", f"backend {report['backend']} {report['precision']}, "
             f"tolerance rel-L2 <= {report['tolerance']['rel_l2']:g}, AbsRel <= {report['tolerance']['abs_rel']:g}"]
    lines.append(f"{'image':<24} {'rel-L2':>10} {'max abs':>10} {'AbsRel':>10} {'delta1':>8}  result")
    for r in report["images"]:
        lines.append(f"{r['image']:<24} {r['rel_l2']:>10.2e} {r['max_abs']:>10.2e} {r['abs_rel']:>10.2e} "
                     f"{r['delta1']:>8.4f}  {'ok' if r['passed'] else 'FAIL'}")
    lines.append("PASSED" if report["passed"] else "FAILED")
    return "\n".join(lines)


def save_report(report: dict, path: str | Path) -> None:
    write_json_atomic(path, report)
