"""Parity kits in Polygraphy's own formats: per graph, the check's inputs and PyTorch's outputs.

Export writes, for every graph of a bundle, two files beside it (the bundle stays one flat folder):

* ``<graph>.parity-inputs.json``: a list of feed dicts (one per iteration) serialized by
  ``polygraphy.json.save_json``, which ``polygraphy run --load-inputs`` reads;
* ``<graph>.parity-outputs.json``: a ``polygraphy.comparator.RunResults`` holding PyTorch's outputs for those
  feeds (runner name ``pytorch``), which ``polygraphy run --load-outputs`` reads.

The manifest's graph entry (the fp32 graph and its fp16 variant alike: both keep fp32 inputs and
outputs, so they share the files) records them under ``parity_kit`` with the per-output ``atol`` /
``rtol`` for that entry's precision, so on any machine::

    polygraphy run bundle/model.onnx --trt --load-inputs bundle/model.parity-inputs.json \\
        --load-outputs bundle/model.parity-outputs.json --atol predicted_depth:A --rtol predicted_depth:R \\
        --input-shapes pixel_values:[1,3,H,W]

proves the engine against PyTorch (``python -m depthrt_export.kit BUNDLE --trt`` prints those lines), and
``depthrt check B --backend ...`` runs the same comparison in-process (``check_kits``).

The kit's inputs are the parity check's own: feed-forward families record the model's input and
output of the check's first image (a forward hook, no second PyTorch run); latent-diffusion graphs
(whose reference pipelines call the VAE and UNet with diffusers' conventions, not the exported
wrappers) record the exported module on its export sample, cropped off the traced size.
"""

from __future__ import annotations

import contextlib
import shlex
from pathlib import Path

import numpy as np

from depthrt.errors import BackendError, BundleError

from .specs import FP16, FP32

REFERENCE_RUNNER = "pytorch"
CHECK_ERROR_STAT = "elemwise"  # Polygraphy's default: an element fails only if over both atol and rtol

# Tolerances, per precision, for every family and graph. Polygraphy's elemwise check fails an element
# when |ours - ref| > atol and > rtol * |ref|; we set atol = LIMIT x max|ref| of that output and
# rtol = LIMIT, so the kit asserts: no element of the output is off by more than LIMIT of the
# output's peak magnitude (rtol can only pass what atol already passes; Polygraphy's CLI needs both).
# The scale comes from the reference because outputs differ by orders of magnitude (metres,
# disparity of unknown scale, latents, [-1, 1] images).
#
# LIMIT is the rel-L2 the parity check already states for the precision (specs.FP32 / specs.FP16):
# * fp32 (1e-3), every family: ONNX Runtime or TensorRT (TF32 off) against PyTorch differ only by
#   reordered float sums, about 1e-6 of the peak on every tiny graph and ~1e-5 on deep ViT-L
#   stacks. DA3's check allows 1e-2 and the diffusion checks 1e-2 end to end, but those limits pay
#   for the sky threshold and the loop, which a single graph does not include; its network itself
#   matches to ~1e-5 (da3/spec.py), so the graph keeps 1e-3.
# * fp16 (2e-2), every family's fp16 variant (fp16 with fp32 islands) against the fp32 PyTorch
#   outputs: measured 4.5e-3 rel-L2 on a real-size DA-V2-S and 3e-3 to 4e-3 per diffusion graph
#   (tests/export/test_diffusion_fp16.py); the peak-relative error of an element is the same order,
#   and 2e-2 still fails an overflow, a NaN or a wrong island. ONNX Runtime on the CPU runs many fp16
#   nodes through fp32 kernels (its cast insertion), so `--onnxrt` on a tiny bundle is an easier test
#   than an fp16 TensorRT engine; the limit is set from the half-precision figures above, not from
#   what ONNX Runtime happens to reach.
LIMITS = {"fp32": FP32.rel_l2, "fp16": FP16.rel_l2}


def tolerances(kit: dict, precision: str) -> dict:
    """Per-output {"atol", "rtol"} of ``kit`` for a graph entry of ``precision``."""
    limit = LIMITS[precision]
    # A reference that is all zeros (an untrained head) still gets a usable absolute floor.
    return {name: {"atol": float(limit * max(peak, 1e-6)), "rtol": float(limit)}
            for name, peak in kit["reference_max_abs"].items()}


def with_tolerances(graphs: list[dict]) -> None:
    """Set each kit's tolerances from its own entry's precision (make_variant gives an fp16 variant the fp32 kit)."""
    for graph in graphs:
        kit = graph.get("parity_kit")
        if kit is not None and graph.get("precision", "fp32") in LIMITS:
            # A new dict per entry: a variant made by copying the fp32 entry shares its kit object.
            graph["parity_kit"] = {**kit, "tolerances": tolerances(kit, graph.get("precision", "fp32")),
                                   "check_error_stat": CHECK_ERROR_STAT}


def attach(graphs: list[dict], name: str, kit: dict) -> None:
    """Give every entry of graph ``name`` (fp32 and its variants) ``kit``, with its own tolerances."""
    for graph in graphs:
        if graph["name"] == name:
            graph["parity_kit"] = kit
    with_tolerances(graphs)


def require_polygraphy() -> None:
    """Refuse with what to install when Polygraphy (an `export` dependency) is missing."""
    import importlib.util

    if importlib.util.find_spec("polygraphy") is None:
        raise BackendError("depthrt export and check write and run Polygraphy parity kits, and Polygraphy is not "
                           "installed: pip install 'depthrt[export]' (or pip install polygraphy)")


def write_kit(bundle: Path, name: str, feeds: dict, outputs: dict, reference: str) -> dict:
    """Write ``<name>.parity-inputs.json`` and ``<name>.parity-outputs.json``; the kit entry (no tolerances)."""
    require_polygraphy()
    from polygraphy.comparator import IterationResult, RunResults
    from polygraphy.json import save_json
    from polygraphy.logger import G_LOGGER

    feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()}
    outputs = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in outputs.items()}
    inputs_file, outputs_file = f"{name}.parity-inputs.json", f"{name}.parity-outputs.json"
    results = RunResults()
    results.append((REFERENCE_RUNNER, [IterationResult(outputs, runner_name=REFERENCE_RUNNER)]))
    with G_LOGGER.verbosity(G_LOGGER.ERROR):  # Polygraphy announces every save
        save_json([feeds], Path(bundle) / inputs_file, description="depthrt parity inputs")
        results.save(Path(bundle) / outputs_file)
    return {
        "inputs": inputs_file,
        "outputs": outputs_file,
        "reference": reference,
        "input_shapes": {k: list(v.shape) for k, v in feeds.items()},
        "reference_max_abs": {k: float(np.max(np.abs(v))) if v.size else 0.0 for k, v in outputs.items()},
    }


# --------------------------------------------------------------------------- recording PyTorch
def _named(values, args: tuple, kwargs: dict, names: list[str]) -> dict:
    """Map a call's arguments (positional then keyword) or a model's outputs to the graph's names."""
    if values is None:  # the inputs: positional in order, then keywords
        out = dict(zip(names, args))
        out.update({k: v for k, v in kwargs.items() if k in names})
    elif hasattr(values, "keys"):  # transformers ModelOutput
        out = {k: values[k] for k in names if k in values.keys()}
    elif isinstance(values, (tuple, list)):
        out = dict(zip(names, values))
    else:
        out = {names[0]: values}
    missing = [n for n in names if n not in out]
    if missing:
        raise BundleError(f"the PyTorch call did not give the graph's {', '.join(missing)}; "
                          "the parity kit cannot be written")
    return {k: v.detach().float().cpu().numpy() for k, v in out.items()}


@contextlib.contextmanager
def record_first_call(module, graph: dict):
    """Record ``module``'s first call during the block as the graph's (feeds, outputs).

    Yields a dict that holds ``feeds`` and ``outputs`` once the module has run.
    """
    seen: dict = {}
    in_names = [t["name"] for t in graph["inputs"]]
    out_names = [t["name"] for t in graph["outputs"]]

    def hook(_module, args, kwargs, output):
        if not seen:
            seen["feeds"] = _named(None, args, kwargs, in_names)
            seen["outputs"] = _named(output, (), {}, out_names)

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def kit_sample(spec) -> tuple:
    """The export sample of a :class:`~depthrt_export.diffusion.common.GraphSpec`, each dynamic spatial
    dimension one step (its multiple) below the traced size, so a size baked in by the trace fails."""
    tensors = spec.sample()
    sizes: dict[str, int] = {}
    out = []
    for t, tensor in zip(spec.inputs, tensors):
        index = []
        for dim, size in zip(t.shape, tensor.shape):
            rng = spec.dynamic.get(dim) if isinstance(dim, str) and dim != "batch" else None
            if rng is not None and dim not in sizes:
                smaller = size - int(rng.get("multiple_of", 1))
                sizes[dim] = smaller if smaller >= rng["min"] else size
            index.append(slice(0, sizes[dim]) if rng is not None else slice(None))
        out.append(tensor[tuple(index)].contiguous())
    return tuple(out)


def write_module_kit(spec, bundle: Path) -> dict:
    """Run the exported module of ``spec`` on :func:`kit_sample` and write its kit."""
    import torch

    feeds = kit_sample(spec)
    with torch.inference_mode():
        output = spec.module(*feeds)
    names = [t.name for t in spec.inputs]
    return write_kit(bundle, spec.name, dict(zip(names, (f.numpy() for f in feeds))),
                     _named(output, (), {}, [t.name for t in spec.outputs]),
                     reference=f"PyTorch {spec.name} module as exported, on its export sample")


# --------------------------------------------------------------------------- running a kit
def polygraphy_command(bundle: Path, graph: dict, runner: str = "onnxrt") -> list[str]:
    """The ``polygraphy run`` command line (argv) that checks ``graph`` against its kit.

    ``runner``: ``onnxrt`` or ``trt`` (for TensorRT the kit's shapes become the engine's profile).
    """
    kit = graph["parity_kit"]
    bundle = Path(bundle)
    tol = kit["tolerances"]
    argv = ["polygraphy", "run", str(bundle / graph["file"]), f"--{runner}",
            "--load-inputs", str(bundle / kit["inputs"]), "--load-outputs", str(bundle / kit["outputs"]),
            "--atol", *(f"{k}:{v['atol']:.6g}" for k, v in tol.items()),
            "--rtol", *(f"{k}:{v['rtol']:.6g}" for k, v in tol.items())]
    if runner == "trt":
        argv += ["--input-shapes", *(f"{k}:[{','.join(map(str, s))}]" for k, s in kit["input_shapes"].items())]
    return argv


def polygraphy_trt_missing() -> str | None:
    """Why Polygraphy's TensorRT runner cannot work here (what to install), or None."""
    from depthrt.backends.trt import load_tensorrt

    if load_tensorrt("trt") is not None:
        return None
    return ("depthrt check --backend trt runs the engines through Polygraphy's TensorRT runner, which needs "
            "TensorRT's Python package (`tensorrt`, the full one, not only the lean runtime): pip install "
            "'depthrt[trt]' on a machine with an NVIDIA GPU, or check with --backend ort-cpu")


def require_polygraphy_trt() -> None:
    """Refuse with what to install when Polygraphy's TensorRT runner cannot work here."""
    why = polygraphy_trt_missing()
    if why is not None:
        raise BackendError(why)


def _runner(bundle: Path, graph: dict, backend: str, precision: str):
    """Polygraphy's runner for ``graph`` on ``backend`` (None: Polygraphy has no runner for it)."""
    if backend in ("ort-cpu", "ort-cuda"):
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

        provider = "cpu" if backend == "ort-cpu" else "cuda"
        return OnnxrtRunner(SessionFromOnnx(str(bundle / graph["file"]), providers=[provider]))
    if backend == "trt":
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        from depthrt.backends.trt import find_engine, query_gpu, tensorrt_version

        plan, _ = find_engine(bundle, graph, "trt", precision, tensorrt_version("trt"), query_gpu())
        return TrtRunner(EngineFromBytes(BytesFromPath(str(plan))))
    return None


def check_kits(bundle: str | Path, manifest: dict, backend: str, precision: str) -> list[dict]:
    """Run every graph of ``precision`` on ``backend`` against its kit, through Polygraphy's comparator.

    One row per graph: the worst absolute difference and its tolerance per output, and ``passed``
    (or ``skipped`` with the reason when Polygraphy has no runner for the backend).
    """
    bundle = Path(bundle)
    graphs = [g for g in manifest["graphs"] if g.get("precision", "fp32") == precision]
    if any("parity_kit" in g for g in graphs):
        require_polygraphy()
    # An explicit --backend trt was refused before the check began (check_bundle); here trt came
    # from `auto` on a machine with only the lean runtime: the kits are skipped, with the reason.
    no_trt = polygraphy_trt_missing() if backend == "trt" else None
    rows = []
    for graph in graphs:
        kit = graph.get("parity_kit")
        row = {"graph": graph["name"], "file": graph["file"], "precision": precision, "backend": backend}
        if kit is None:
            rows.append({**row, "skipped": "the bundle has no parity kit for it (re-export with this depthrt)"})
            continue
        runner = None if no_trt else _runner(bundle, graph, backend, precision)
        if runner is None:
            rows.append({**row, "skipped": no_trt or f"Polygraphy has no runner for {backend}"})
            continue
        rows.append({**row, **_compare(bundle, kit, runner)})
    return rows


def _compare(bundle: Path, kit: dict, runner) -> dict:
    from polygraphy.comparator import Comparator, RunResults, SimpleCompareFunc
    from polygraphy.exception import PolygraphyException
    from polygraphy.json import load_json
    from polygraphy.logger import G_LOGGER

    tol = kit["tolerances"]
    compare = SimpleCompareFunc(atol={k: v["atol"] for k, v in tol.items()},
                                rtol={k: v["rtol"] for k, v in tol.items()},
                                check_error_stat=kit.get("check_error_stat", CHECK_ERROR_STAT))
    try:
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL):  # its per-output tables would drown our one table
            feeds = load_json(bundle / kit["inputs"], description="parity inputs")
            reference = RunResults.load(str(bundle / kit["outputs"]))
            ours = Comparator.run([runner], data_loader=feeds)
            accuracy = Comparator.compare_accuracy([ours, reference], compare_func=compare)
    except (PolygraphyException, OSError, ValueError, KeyError) as exc:
        raise BundleError(f"cannot run the parity kit {kit['inputs']} / {kit['outputs']} of '{bundle}' "
                          f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); "
                          "re-export the bundle") from None
    outputs = {}
    for _pair, iterations in accuracy[0].items():
        for iteration in iterations:
            for name, result in iteration.items():
                worst = outputs.setdefault(name, {"max_abs": 0.0, "atol": tol[name]["atol"],
                                                  "rtol": tol[name]["rtol"], "passed": True})
                worst["max_abs"] = max(worst["max_abs"], float(result.max_absdiff))
                worst["passed"] = worst["passed"] and bool(result)
    missing = sorted(set(tol) - set(outputs))
    return {"outputs": outputs, "passed": bool(accuracy) and not missing and bool(outputs),
            **({"missing": missing} if missing else {})}


def format_kits(rows: list[dict]) -> list[str]:
    """Table lines of :func:`check_kits`' rows."""
    lines = []
    for r in rows:
        head = f"Polygraphy kit {r['graph']} ({r['precision']}, {r['backend']}):"
        if "skipped" in r:
            lines.append(f"{head} not checked ({r['skipped']})")
            continue
        figures = ", ".join(f"{k} max abs diff {v['max_abs']:.2e} (atol {v['atol']:.2e})"
                            for k, v in r["outputs"].items())
        lines.append(f"{head} {figures}  {'ok' if r['passed'] else 'FAIL'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """``python -m depthrt_export.kit BUNDLE [--trt]``: print each graph's ``polygraphy run`` line."""
    import argparse
    import sys

    from depthrt.errors import DepthrtError
    from depthrt.manifest import read_manifest

    parser = argparse.ArgumentParser(prog="python -m depthrt_export.kit",
                                     description="print the polygraphy run command of each graph's parity kit")
    parser.add_argument("bundle")
    parser.add_argument("--trt", action="store_true", help="TensorRT (--trt, with --input-shapes) instead of --onnxrt")
    args = parser.parse_args(argv)
    try:
        graphs = read_manifest(args.bundle)["graphs"]
    except DepthrtError as exc:
        print(f"kit: error: {exc}", file=sys.stderr)
        return 2
    missing = [g["file"] for g in graphs if "parity_kit" not in g]
    for graph in graphs:
        if "parity_kit" in graph:
            print(shlex.join(polygraphy_command(Path(args.bundle), graph, "trt" if args.trt else "onnxrt")))
    if missing:
        print(f"kit: no parity kit for {', '.join(missing)}: re-export the bundle with this depthrt (with its check)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
