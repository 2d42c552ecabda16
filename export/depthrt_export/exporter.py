"""`depthrt export`: weights -> bundle (manifest.json + ONNX graph), checked against PyTorch."""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import Callable

from depthrt.errors import OutputError, ParityError, WeightsError, disk_full
from depthrt.manifest import MANIFEST_NAME, SCHEMA_VERSION, sha256_file, validate_manifest, write_json_atomic
from depthrt.presets import find_preset
from depthrt.progress import step

from .diffusion import DIFFUSION_FAMILIES
from .specs import family_for_config, get_spec, graph_limits
from .weights import resolve_weights

ONNX_LIMIT = 2 * 1024**3  # protobuf's 2 GB limit: above it the weights go to external data


def _tool_versions() -> dict:
    out = {}
    for dist in ("depthrt", "torch", "transformers", "diffusers", "onnx", "onnxruntime", "onnxruntime-gpu"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse before any work if ``out`` cannot be (re)placed."""
    if out.exists():
        if not out.is_dir() or not (out / MANIFEST_NAME).is_file():
            raise OutputError(
                f"'{out}' exists and is not a depthrt bundle; refusing to replace it (even with --force): "
                "choose another --out"
            )
        if not force:
            raise OutputError(f"bundle '{out}' already exists; pass --force to replace it, or choose another --out")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create '{parent}': {exc.strerror}; choose another --out") from None
    if not os.access(parent, os.W_OK):
        raise OutputError(f"'{parent}' is not writable; choose another --out")


def _export_graph(model, spec, dynamic: dict, path: Path, opset: int) -> dict:
    import onnx

    inputs, outputs = spec.export_graph(model, path, dynamic, opset)
    onnx.checker.check_model(str(path))
    if path.stat().st_size > ONNX_LIMIT:  # only a huge graph: keep the .onnx loadable by every tool
        proto = onnx.load(str(path))
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
        onnx.checker.check_model(str(path))
    return {
        "name": "model",
        "file": path.name,
        "external_data": path.name + ".data" if (path.parent / (path.name + ".data")).exists() else None,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "opset": opset,
        "precision": "fp32",
        "inputs": inputs,
        "outputs": outputs,
        "dynamic": dynamic,
        "limits": graph_limits(dynamic),
    }


def _export_feedforward(model: str, preset, weights: str | None, staging: Path, opset: int,
                        trust_pickle: bool) -> tuple[dict, Callable]:
    """Export a feed-forward family; return (manifest fields, parity check of the staged bundle)."""
    with step(f"resolving weights {weights or preset.hub_id}"):
        resolved = resolve_weights(weights or preset.hub_id, trust_pickle=trust_pickle)
    spec = get_spec(preset.family) if preset else family_for_config(resolved.config)
    spec.check_config(resolved)
    preprocessing, postprocessing = spec.processing(resolved)
    dynamic = spec.dynamic(resolved)
    with step(f"loading {spec.architecture}"):
        torch_model = spec.load_model(resolved)
    with step(f"exporting {spec.architecture} to ONNX (opset {opset})"):
        graph = _export_graph(torch_model, spec, dynamic, staging / "model.onnx", opset)
    from .fp16 import make_variant

    with step("making the fp16 variant (fp32 islands: norms, softmax, head)"):
        fp16_graph = make_variant(staging, graph)
    kind, units, description = spec.output(resolved.config)
    fields = {
        "model": {"name": preset.name if preset else model, "family": spec.family,
                  "architecture": spec.architecture, "variant": spec.variant(resolved.config)},
        "output": {"kind": kind, "units": units, "description": description},
        "graphs": [graph, fp16_graph],
        "preprocessing": preprocessing,
        "postprocessing": postprocessing,
        "source": {"id": resolved.id, "revision": resolved.revision, "untrained": resolved.untrained,
                   "files": resolved.files},
    }

    def parity(bundle: Path) -> tuple[dict, str]:
        from . import kit
        from .check import format_report, run_check

        # The check's first PyTorch call (its first image) is also the graph's Polygraphy kit.
        with kit.record_first_call(torch_model, graph) as seen:
            report = run_check(bundle, weights=str(resolved.path), model=torch_model, verify=False)
        kit.attach(fields["graphs"], graph["name"],
                   kit.write_kit(bundle, graph["name"], seen["feeds"], seen["outputs"],
                                 reference=f"PyTorch {spec.architecture}, the parity check's first image"))
        return report, format_report(report)

    return fields, parity


def _export_diffusion(preset, weights: str | None, staging: Path, opset: int) -> tuple[dict, Callable]:
    """Export a latent-diffusion family (VAE encoder, UNet, VAE decoder and the loop)."""
    from .diffusion import checker_for, export_diffusion_bundle

    with step(f"exporting {preset.name} (VAE encoder, UNet, VAE decoder; opset {opset})"):
        fields = export_diffusion_bundle(preset, weights, staging, opset)

    def parity(bundle: Path) -> tuple[dict, str]:
        checker = checker_for(preset.family)
        report = checker.run_check(bundle, weights=weights or preset.hub_id, verify=False,
                                   **getattr(checker, "EXPORT_CHECK", {}))
        return report, checker.format_report(report)

    return fields, parity


def export_bundle(model: str, weights: str | None = None, out: str | Path | None = None, opset: int = 17,
                  force: bool = False, check: bool = True, trust_pickle: bool = False) -> tuple[Path, dict]:
    """Export ``model`` (a preset name or hub id) to a bundle; returns (bundle path, manifest)."""
    preset = find_preset(model)
    if preset is None and weights is None:
        raise WeightsError(f"'{model}' is not a depthrt preset or a hub id of one (see `depthrt models`); "
                           "pass --weights DIR to export a checkpoint of a supported family")
    if preset is not None and preset.status != "supported":
        raise WeightsError(f"preset '{preset.name}' is not exportable yet ({preset.status})")
    if opset < 17:
        raise WeightsError(f"--opset {opset} is too old: depthrt exports opset 17 or newer")
    out = Path(out or Path("bundles") / (preset.name if preset else Path(model).name))
    check_output_dir(out, force)

    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    report = None
    try:
        if preset is not None and preset.family in DIFFUSION_FAMILIES:
            fields, parity = _export_diffusion(preset, weights, staging, opset)
        else:
            fields, parity = _export_feedforward(model, preset, weights, staging, opset, trust_pickle)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **fields,
            "tools": _tool_versions(),
            "parity": None,
        }
        validate_manifest(manifest, where="the manifest being written")
        write_json_atomic(staging / MANIFEST_NAME, manifest)
        if check:
            with step("checking parity against PyTorch"):
                report, table = parity(staging)
            print(table)
            manifest["parity"] = report
            validate_manifest(manifest, where="the manifest being written")  # the check added the parity kits
            write_json_atomic(staging / MANIFEST_NAME, manifest)
        _install(staging, out)
    except Exception as exc:
        if disk_full(exc):  # the staging folder goes below; a bundle already at `out` was never touched
            raise OutputError(f"no space left on device while writing bundle '{out}'; free space and rerun "
                              f"(nothing was written to '{out}')") from exc
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if report is not None and not report["passed"]:
        raise ParityError(f"bundle '{out}' was written but does not match PyTorch within tolerance "
                          f"(worst rel-L2 {report['worst_rel_l2']:.2e}); see the parity report in its manifest")
    return out, manifest


def _install(staging: Path, out: Path) -> None:
    """Move the finished bundle into place; an old bundle is removed only after that succeeded."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
