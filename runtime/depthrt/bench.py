"""`depthrt bench`: backends side by side in one process, with the PyTorch pipeline as reference.

Every entry (a backend at a precision, or a PyTorch reference) runs the same image through its
whole pipeline: preprocess, inference, postprocess. Entries take turns frame by frame (round
robin), so a noisy neighbour on a shared machine slows all of them alike and the ratios hold.
Each stage is timed separately (median and p90), end to end is the wall time of the three, FPS
is 1000 / median end to end, and the speed-up is the reference's end-to-end median over the
entry's. Accuracy is the centred relative L2 of each entry's depth map against the fp32
reference (PyTorch when it runs, otherwise the first fp32 backend).

Peak memory is the growth of the process's peak resident set while the entry loaded and warmed up
(Linux: ``/proc/self/clear_refs``), so it is the entry's own working set.

The PyTorch references need the export tools (torch, transformers); the backends do not.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import metrics
from .backends import first_line
from .errors import InputError

log = logging.getLogger("depthrt")

STAGES = ("preprocess", "inference", "postprocess", "end_to_end")
REFERENCES = ("eager", "compile")


# --------------------------------------------------------------------------- measuring
def _rss_mib(field_name: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def summarise(times_ms: list[float]) -> dict:
    """Median, p90, min and count of a list of milliseconds."""
    a = np.asarray(times_ms, dtype=np.float64)
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "min_ms": float(a.min()),
            "runs": int(a.size)}


@dataclass
class Entry:
    """One thing being measured: ``frame(image) -> (depth, {stage: seconds})``."""

    label: str
    backend: str
    precision: str
    frame: object = None
    times: dict = field(default_factory=lambda: {s: [] for s in STAGES})
    depth: np.ndarray | None = None
    peak_mib: float | None = None
    load_s: float = 0.0
    error: str | None = None
    engine_ms: list | None = None  # the engine alone on the GPU (TensorRT backends), CUDA-event timed

    def stats(self) -> dict:
        out = {"label": self.label, "backend": self.backend, "precision": self.precision, "load_s": self.load_s,
               "peak_mib": self.peak_mib, "error": self.error}
        if self.error is None:
            out["stages"] = {s: summarise(self.times[s]) for s in STAGES}
            out["fps"] = 1000.0 / out["stages"]["end_to_end"]["median_ms"]
            if self.engine_ms:
                out["engine"] = summarise(self.engine_ms)
        return out


class _BundleFrame:
    """The estimator's pipeline, split into its timed stages (what ``Estimator.predict`` runs)."""

    def __init__(self, estimator):
        self.est = estimator
        self.last_input: np.ndarray | None = None

    def engine_times(self, repeats: int) -> list[float] | None:
        """The engine alone on the last frame's input, where the backend can time it (TensorRT)."""
        runner = getattr(self.est, "runner", None)
        if self.last_input is None or not hasattr(runner, "engine_time_ms") or len(runner.inputs) != 1:
            return None
        return runner.engine_time_ms({runner.inputs[0]: self.last_input}, repeats=repeats)

    def __call__(self, image: np.ndarray):
        est = self.est
        t0 = time.perf_counter()
        tensor, meta = est.preprocess(image)
        self.last_input = tensor[None]
        t1 = time.perf_counter()
        out = {name: value[0] for name, value in est.infer(tensor[None]).items()}
        t2 = time.perf_counter()
        depth = est.postprocess(out, meta).depth
        t3 = time.perf_counter()
        return depth, {"preprocess": t1 - t0, "inference": t2 - t1, "postprocess": t3 - t2, "end_to_end": t3 - t0}


class _TorchFrame:
    """The PyTorch reference pipeline (transformers processor -> model -> post-process), staged."""

    def __init__(self, reference, compiled: bool, device: str, dtype: str):
        import torch

        self.torch = torch
        self.ref = reference
        self.device = torch.device(device)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        self.staged = hasattr(reference, "processor") and hasattr(reference, "model")
        if not self.staged:  # a reference without processor/model attributes is timed as a whole
            self.model = None
            return
        model = reference.model.to(self.device)
        if dtype != "fp32":
            model = model.to(self.dtype)
        self.model = torch.compile(model) if compiled else model

    def _sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def __call__(self, image: np.ndarray):
        torch = self.torch
        h, w = image.shape[:2]
        t0 = time.perf_counter()
        if not self.staged:
            depth = self.ref(image)["depth"]
            t3 = time.perf_counter()
            return depth, {"preprocess": 0.0, "inference": t3 - t0, "postprocess": 0.0, "end_to_end": t3 - t0}
        pixels = self.ref.processor(images=image, return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, self.dtype)
        self._sync()
        t1 = time.perf_counter()
        with torch.inference_mode():
            predicted = self.model(pixel_values=pixels).predicted_depth
        self._sync()
        t2 = time.perf_counter()
        out = type("Out", (), {"predicted_depth": predicted.float()})()
        post = self.ref.processor.post_process_depth_estimation(out, target_sizes=[(h, w)])
        depth = post[0]["predicted_depth"].reshape(h, w).float().cpu().numpy()
        t3 = time.perf_counter()
        return depth, {"preprocess": t1 - t0, "inference": t2 - t1, "postprocess": t3 - t2, "end_to_end": t3 - t0}


# --------------------------------------------------------------------------- entries
def _load_entry(entry: Entry, make, image: np.ndarray, warmup: int) -> None:
    """Build an entry's frame function and warm it up, measuring its load time and peak memory."""
    before = _rss_mib("VmRSS")
    can_peak = _reset_peak_rss()
    t0 = time.perf_counter()
    try:
        entry.frame = make()
        for _ in range(max(1, warmup)):
            entry.depth, _ = entry.frame(image)
    except Exception as exc:  # a backend that cannot run here is reported, not fatal
        entry.error = f"{type(exc).__name__}: {first_line(exc, 200)}"
        entry.frame = None
        log.info("bench: %s not measured: %s", entry.label, entry.error)
    entry.load_s = time.perf_counter() - t0
    peak = _rss_mib("VmHWM") if can_peak else None
    if peak is not None and before is not None:
        entry.peak_mib = max(0.0, peak - before)


def _reference_entries(bundle: Path, manifest: dict, references, weights, device: str, dtype: str):
    """(entry, maker) for each PyTorch reference asked for; errors become the entry's error."""
    if not references:
        return []
    try:
        from depthrt_export.specs import get_spec
        from depthrt_export.weights import resolve_weights
    except ImportError as exc:
        return [(Entry(f"pytorch {r}", "pytorch", dtype, error=f"needs the export tools ({exc.name}): pip install "
                       "'depthrt[export]'"), None) for r in references]
    holder: dict = {}

    def reference():
        if "ref" not in holder:
            spec = get_spec(manifest["model"]["family"])
            resolved = resolve_weights(weights or manifest["source"]["id"])
            holder["ref"] = spec.reference(resolved)
        return holder["ref"]

    out = []
    for r in references:
        label = f"pytorch {r}" + ("" if device == "cpu" else f" ({device})")

        def make(compiled=(r == "compile")):
            import copy

            ref = reference()
            if compiled and hasattr(ref, "model"):  # a separate module: eager keeps the uncompiled one
                ref = copy.copy(ref)
                ref.model = copy.deepcopy(ref.model)
            return _TorchFrame(ref, compiled, device, dtype)

        out.append((Entry(label, "pytorch", dtype), make))
    return out


def parse_size(text: str) -> tuple[int, int]:
    """'640x480' -> (height 480, width 640)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"image size '{text}' is not WIDTHxHEIGHT, e.g. 640x480") from None
    if w < 1 or h < 1:
        raise InputError(f"image size '{text}' must be positive")
    return h, w


def machine_info() -> dict:
    info = {"machine": platform.machine(), "python": platform.python_version(), "cores": os.cpu_count()}
    try:
        info["affinity_cores"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        flags = set(text.split())
        info["cpu_bf16"] = sorted(f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags)
    except OSError:
        pass
    return info


def run_bench(bundle: str | os.PathLike, backends: list[str] | None = None, precisions: list[str] | None = None,
              size: tuple[int, int] = (480, 640), image: np.ndarray | None = None, runs: int = 10, warmup: int = 2,
              references: tuple[str, ...] = ("eager", "compile"), weights: str | None = None,
              reference_device: str | None = None, reference_precision: str = "fp32", threads: int | None = None,
              progress=None) -> dict:
    """Measure each (backend, precision) and the PyTorch references on one image; return the report."""
    from .backends import GPU_BACKENDS, available_backends
    from .estimator import load
    from .manifest import read_manifest
    from .samples import synthetic_image

    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    if runs < 1:
        raise InputError("--runs must be at least 1")
    # At least two warm-up frames: OpenVINO in fp32 runs a shape's first frame on its any-shape model
    # and compiles the faster per-shape one on the second; the timed frames must see the steady state.
    warmup = max(2, warmup)
    bad = [r for r in references if r not in REFERENCES]
    if bad:
        raise InputError(f"unknown reference {bad[0]!r}: choose from {', '.join(REFERENCES)} (or none)")
    image = synthetic_image(*size) if image is None else image
    backends = list(dict.fromkeys(backends or available_backends()))  # each once, in order
    precisions = list(dict.fromkeys(precisions or ["fp32"]))
    if reference_device is None:
        reference_device = "cuda" if any(b in GPU_BACKENDS for b in backends) and _torch_cuda() else "cpu"

    planned: list[tuple[Entry, object]] = _reference_entries(bundle, manifest, references, weights,
                                                             reference_device, reference_precision)
    for backend in backends:
        for precision in precisions:
            def make(backend=backend, precision=precision):
                return _BundleFrame(load(bundle, backend=backend, precision=precision, threads=threads))

            planned.append((Entry(f"{backend} {precision}", backend, precision), make))

    entries = []
    for entry, make in planned:
        if progress:
            progress(f"loading and warming up {entry.label}")
        if make is not None:
            _load_entry(entry, make, image, warmup)
        entries.append(entry)
    live = [e for e in entries if e.error is None]
    for r in range(runs):
        if progress:
            progress(f"round {r + 1}/{runs}")
        for entry in live:  # round robin: every entry sees the same machine load
            depth, seconds = entry.frame(image)
            for stage, s in seconds.items():
                entry.times[stage].append(s * 1000.0)
            entry.depth = depth
    for entry in live:
        timer = getattr(entry.frame, "engine_times", None)
        if timer is not None:
            entry.engine_ms = timer(max(runs, 10))

    truth = next((e for e in live if e.backend == "pytorch" and e.precision == "fp32"), None) or \
        next((e for e in live if e.precision == "fp32"), None)
    reference = next((e for e in live if e.backend == "pytorch"), None)
    rows = []
    for entry in entries:
        row = entry.stats()
        if entry.error is None and truth is not None:
            row["accuracy_vs"] = truth.label
            row["rel_l2_vs_fp32"] = metrics.centred_rel_l2(entry.depth, truth.depth)
            row["nonfinite"] = int(np.count_nonzero(~np.isfinite(entry.depth)))
        if entry.error is None and reference is not None:
            ref_ms = reference.stats()["stages"]["end_to_end"]["median_ms"]
            row["speedup_vs"] = reference.label
            row["speedup"] = ref_ms / row["stages"]["end_to_end"]["median_ms"]
        rows.append(row)
    return {
        "bundle": str(bundle),
        "model": manifest["model"]["name"],
        "untrained": manifest["source"]["untrained"],
        "image": f"{image.shape[1]}x{image.shape[0]}",
        "runs": runs,
        "warmup": warmup,
        "threads": threads,
        "machine": machine_info(),
        "entries": rows,
    }


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def format_table(report: dict) -> str:
    """The report as a fixed-width table: medians (p90 for end to end), FPS, speed-up, accuracy."""
    head = (f"{'entry':<22} {'pre':>7} {'infer':>8} {'post':>7} {'e2e':>8} {'e2e p90':>8} {'FPS':>7} "
            f"{'speed-up':>8} {'rel-L2':>9} {'peak MiB':>8}")
    lines = [f"depthrt bench: {report['model']} on a {report['image']} image, {report['runs']} runs after "
             f"{report['warmup']} warm-up; medians in ms" + (" (UNTRAINED weights)" if report["untrained"] else ""),
             head, "-" * len(head)]
    for row in report["entries"]:
        if row["error"]:
            lines.append(f"{row['label']:<22} not measured: {row['error']}")
            continue
        st = row["stages"]
        speed = f"{row['speedup']:.2f}x" if "speedup" in row else "-"
        acc = f"{row['rel_l2_vs_fp32']:.2e}" if "rel_l2_vs_fp32" in row else "-"
        peak = f"{row['peak_mib']:.0f}" if row["peak_mib"] is not None else "-"
        lines.append(f"{row['label']:<22} {st['preprocess']['median_ms']:>7.1f} {st['inference']['median_ms']:>8.1f} "
                     f"{st['postprocess']['median_ms']:>7.1f} {st['end_to_end']['median_ms']:>8.1f} "
                     f"{st['end_to_end']['p90_ms']:>8.1f} {row['fps']:>7.2f} {speed:>8} {acc:>9} {peak:>8}")
    for row in report["entries"]:
        if row.get("engine"):
            e = row["engine"]
            lines.append(f"{row['label']}: engine alone {e['median_ms']:.3f} ms median, {e['p90_ms']:.3f} ms p90 "
                         "(GPU time between CUDA events, no copies: trtexec's GPU Compute Time)")
    ref = next((r for r in report["entries"] if "speedup_vs" in r), None)
    if ref:
        lines.append(f"speed-up: end-to-end median of {ref['speedup_vs']} / the entry's; rel-L2: centred relative L2 "
                     f"of the depth map against {ref.get('accuracy_vs', '-')}")
    return "\n".join(lines)


def save_json(report: dict, path: str | os.PathLike) -> None:
    from .manifest import write_json_atomic

    write_json_atomic(path, json.loads(json.dumps(report)))
