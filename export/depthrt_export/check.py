"""`depthrt check`: parity of a bundle against its PyTorch reference pipeline."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

import depthrt
from depthrt import metrics
from depthrt.errors import BundleError
from depthrt.manifest import read_manifest, verify_hashes, write_json_atomic
from depthrt.samples import synthetic_image

from .specs import get_spec
from .weights import resolve_weights

# (height, width): portrait, landscape, and odd sizes far from the traced one, so a graph that
# baked its trace shape in, or a resize rule that differs by one pixel, fails here.
DEFAULT_SIZES = ((517, 333), (360, 480), (701, 250))


def _synthetic_inputs(sizes) -> list[tuple[str, np.ndarray]]:
    return [(f"synthetic {w}x{h}", synthetic_image(h, w, seed=i)) for i, (h, w) in enumerate(sizes)]


def check_bundle(bundle: str | Path, weights: str | None = None, images: list[str] | None = None,
                 backend: str = "ort-cpu", precision: str = "fp32", trust_pickle: bool = False,
                 processing_resolution: int | None = None) -> tuple[dict, str]:
    """`depthrt check` for any family: (report, printable table).

    ``processing_resolution`` applies to latent-diffusion bundles (default: the bundle's, e.g. 768).
    """
    from . import kit
    from .diffusion import DIFFUSION_FAMILIES, checker_for

    manifest = read_manifest(bundle)
    family = manifest["model"]["family"]
    if backend == "trt":
        kit.require_polygraphy_trt()  # before any PyTorch work: say what to install
    if family in DIFFUSION_FAMILIES:
        if images:
            raise BundleError(f"--images is not supported for {family} bundles yet: they are checked on "
                              "synthetic images with the same initial noise on both sides")
        checker = checker_for(family)
        report = checker.run_check(bundle, weights=weights, backend=backend, precision=precision,
                                   processing_resolution=processing_resolution)
        table = checker.format_report(report)
    else:
        report = run_check(bundle, weights=weights, images=images, backend=backend, precision=precision,
                           trust_pickle=trust_pickle)
        table = format_report(report)
    return _with_kits(bundle, manifest, report, table)


def _with_kits(bundle, manifest: dict, report: dict, table: str) -> tuple[dict, str]:
    """Add each graph's Polygraphy kit, run on the backend the check used, to the report and its verdict."""
    from . import kit

    rows = kit.check_kits(bundle, manifest, report["backend"], report["precision"])
    if not rows:
        return report, table
    report["kits"] = rows
    report["passed"] = report["passed"] and all(r.get("passed", True) for r in rows)
    lines = table.splitlines()[:-1]  # every family's table ends with its PASSED / FAILED line
    return report, "\n".join([*lines, *kit.format_kits(rows), "PASSED" if report["passed"] else "FAILED"])


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
    rows, refs = [], []
    for name, image in inputs:
        ours = estimator.predict(image)
        ref = reference(image)
        refs.append(ref)
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
        "variants": (variants := check_variants(bundle, manifest, spec, inputs, refs)),
        "passed": all(r["passed"] for r in rows) and all(v["passed"] for v in variants if "passed" in v),
    }


def _variant_tolerance(spec, precision: str):
    from .specs import REDUCED

    return spec.tolerances.get(precision) or REDUCED[precision]


def _variant_estimators(bundle: Path, manifest: dict):
    """(precision, backend, estimator or None, why not) for every reduced-precision variant.

    fp16 graphs run on ort-cuda where it is available, else in ONNX Runtime on the CPU (slow, but
    the same numerics); bf16 runs on OpenVINO where the CPU supports it.
    """
    from depthrt.backends import unavailable

    out = []
    for graph in manifest["graphs"]:
        if graph.get("precision") != "fp16":
            continue
        if unavailable("ort-cuda") is None:
            out.append(("fp16", "ort-cuda", depthrt.load(bundle, backend="ort-cuda", precision="fp16"), None))
            continue
        from depthrt.backends.ort import OrtRunner

        est = depthrt.load(bundle, backend="ort-cpu", precision="fp32")
        est.runner = OrtRunner(bundle / graph["file"], "ort-cpu")  # the fp16 graph's numerics, on the CPU
        out.append(("fp16", "ort-cpu (fp16 graph)", est, None))
    if unavailable("openvino") is None:
        try:
            out.append(("bf16", "openvino", depthrt.load(bundle, backend="openvino", precision="bf16"), None))
        except depthrt.BackendError as exc:
            out.append(("bf16", "openvino", None, str(exc)))
    return out


def check_variants(bundle: Path, manifest: dict, spec, inputs, refs) -> list[dict]:
    """Accuracy of every reduced-precision variant against the fp32 PyTorch reference."""
    reports = []
    for precision, backend, est, why_not in _variant_estimators(bundle, manifest):
        if est is None:
            reports.append({"precision": precision, "backend": backend, "skipped": why_not})
            continue
        tol = _variant_tolerance(spec, precision)
        rows = []
        for (name, image), ref in zip(inputs, refs):
            row = {"image": name, "size": f"{image.shape[1]}x{image.shape[0]}",
                   **metrics.compare(est.predict(image).depth, ref["depth"])}
            row["within_tolerance"] = bool(row["nonfinite"] == 0 and row["rel_l2"] <= tol.rel_l2
                                           and row["abs_rel"] <= tol.abs_rel)
            rows.append(row)
        # Reduced precision is the user's opt-in: its accuracy is reported, and only a broken variant
        # (NaN or inf anywhere) fails the check. `check --precision P` gates on P's tolerance.
        reports.append({"precision": precision, "backend": backend,
                        "tolerance": {"rel_l2": tol.rel_l2, "abs_rel": tol.abs_rel}, "images": rows,
                        "worst_rel_l2": max(r["rel_l2"] for r in rows),
                        "worst_abs_rel": max(r["abs_rel"] for r in rows),
                        "within_tolerance": all(r["within_tolerance"] for r in rows),
                        "passed": all(r["nonfinite"] == 0 for r in rows)})
    return reports


def format_report(report: dict) -> str:
    lines = [f"parity vs {report['reference']}", f"backend {report['backend']} {report['precision']}, "
             f"tolerance rel-L2 <= {report['tolerance']['rel_l2']:g}, AbsRel <= {report['tolerance']['abs_rel']:g}"]
    lines.append(f"{'image':<24} {'rel-L2':>10} {'max abs':>10} {'AbsRel':>10} {'delta1':>8}  result")
    for r in report["images"]:
        lines.append(f"{r['image']:<24} {r['rel_l2']:>10.2e} {r['max_abs']:>10.2e} {r['abs_rel']:>10.2e} "
                     f"{r['delta1']:>8.4f}  {'ok' if r['passed'] else 'FAIL'}")
    for v in report.get("variants") or []:
        if "skipped" in v:
            lines.append(f"{v['precision']} variant on {v['backend']}: not checked ({v['skipped']})")
            continue
        lines.append(f"{v['precision']} variant on {v['backend']} vs fp32 reference: worst rel-L2 "
                     f"{v['worst_rel_l2']:.2e}, worst AbsRel {v['worst_abs_rel']:.2e} "
                     f"(tolerance {v['tolerance']['rel_l2']:g} / {v['tolerance']['abs_rel']:g}: "
                     f"{'within' if v['within_tolerance'] else 'over'}), "
                     f"{'finite' if v['passed'] else 'FAIL: non-finite values'}")
        if v["passed"] and not v["within_tolerance"]:
            lines.append(f"  (reported, not gated: a variant fails this check only with non-finite values; "
                         f"`depthrt check B --precision {v['precision']}` gates on its tolerance)")
    lines.append("PASSED" if report["passed"] else "FAILED")
    return "\n".join(lines)


def save_report(report: dict, path: str | Path) -> None:
    write_json_atomic(path, report)
