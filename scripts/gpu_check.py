"""GPU check: real-size random-weight graphs on ort-cuda fp16 against PyTorch fp16 eager, in one process.

For each model (Depth Anything V2 Small and Large at 518, an SD2 UNet step at a 96x96 latent, i.e.
Marigold/Lotus at 768) it writes a random-weight checkpoint at the real architecture, exports the
ONNX graph and its fp16-with-fp32-islands variant, then times (medians, p90) and compares:

* PyTorch fp16 eager (and fp32 eager, the accuracy reference) on the same input;
* depthrt's ort-cuda runner on the fp16 graph, with the input and output on the device
  (``__cuda_array_interface__``, no host copies), CUDA graphs where ORT allows them;
* TensorRT when it is installed: an fp16 engine built for the Depth Anything bundles at the input's
  size, timed through the runner and alone (CUDA events); reported as skipped otherwise.

It checks parity (centred rel-L2 against PyTorch fp32) and that no output holds NaN or inf, prints
a short table last and writes every figure to JSON. On the GPU test machine (see
../shared/gpu/README.md): stage the wheels, then

    source scripts/gpu-env.sh && python3 scripts/gpu_check.py --out gpu_check.json

On a CPU-only machine, ``--tiny --device cpu`` runs the same steps on tiny models (ORT CPU on the
fp16 graph, PyTorch fp32), to prove the script before a GPU session.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for sub in ("runtime", "export", "engines"):  # runnable from a checkout without installing
    if str(ROOT / sub) not in sys.path:
        sys.path.insert(0, str(ROOT / sub))

from depthrt.bench import summarise  # noqa: E402  (median, p90, min and count, as `depthrt bench` reports them)

MODELS = ("da-v2-small", "da-v2-large", "sd2-unet")
TARGETS = {"da-v2-small": 3.0, "da-v2-large": 2.0}  # ort-cuda fp16 speed-up over PyTorch fp16 eager
PARITY = 2e-2  # fp16 rel-L2 limit against fp32 (depthrt_export.specs.FP16)


# --------------------------------------------------------------------------- checkpoints
def _da_config(size: str, tiny: bool):
    from transformers import DepthAnythingConfig, Dinov2Config

    if tiny:
        dims = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, out_indices=[1, 2, 3, 4])
        neck, fusion, reassemble, head = [8, 16, 32, 32], 16, 32, 8
    elif size == "small":
        dims = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, out_indices=[3, 6, 9, 12])
        neck, fusion, reassemble, head = [48, 96, 192, 384], 64, 384, 32
    else:  # large
        dims = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, out_indices=[5, 12, 18, 24])
        neck, fusion, reassemble, head = [256, 512, 1024, 1024], 256, 1024, 32
    backbone = Dinov2Config(mlp_ratio=4, image_size=518, patch_size=14, reshape_hidden_states=False,
                            apply_layernorm=True, layerscale_value=1.0,
                            out_features=[f"stage{i}" for i in dims["out_indices"]], **dims)
    return DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=reassemble, patch_size=14,
                               neck_hidden_sizes=neck, fusion_hidden_size=fusion, head_hidden_size=head,
                               reassemble_factors=[4, 2, 1, 0.5], depth_estimation_type="relative")


def write_depth_anything(folder: Path, size: str, tiny: bool) -> Path:
    """A random-weight Depth Anything V2 checkpoint in the published layout (real or tiny sizes)."""
    import torch
    from transformers import DepthAnythingForDepthEstimation

    from depthrt_export.tiny import _DA_PP, _centre_final_conv, _spread_weights

    torch.manual_seed(0)
    model = DepthAnythingForDepthEstimation(_da_config(size, tiny)).eval()
    _spread_weights(model)  # fan-in scaled weights: a map with structure, not a constant
    _centre_final_conv(model, model.head.conv3)
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(_DA_PP, indent=2))
    return folder


def _sd2_unet(tiny: bool):
    from diffusers import UNet2DConditionModel

    if tiny:
        return UNet2DConditionModel(sample_size=16, in_channels=8, out_channels=4, block_out_channels=(32, 64),
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                    cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True,
                                    norm_num_groups=8)
    # stabilityai/stable-diffusion-2's UNet, with Marigold's 8 input channels (image + noisy latent)
    return UNet2DConditionModel(sample_size=96, in_channels=8, out_channels=4,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                                cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                                use_linear_projection=True)


# --------------------------------------------------------------------------- graphs
class _UNetStep:
    """The UNet as one tensor-in tensor-out step (what the bundle's unet graph is)."""

    def __init__(self, unet):
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self, unet):
                super().__init__()
                self.unet = unet

            def forward(self, sample, timestep, text):
                return self.unet(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]

        self.module = Wrapper(unet).eval()


def prepare(name: str, work: Path, tiny: bool) -> dict:
    """Write the checkpoint and the fp32 + fp16 ONNX graphs; return what timing needs."""
    import torch

    from depthrt_export.fp16 import convert

    work.mkdir(parents=True, exist_ok=True)
    if name.startswith("da-v2"):
        from depthrt_export.exporter import export_bundle

        ckpt = write_depth_anything(work / "ckpt", name.split("-")[-1], tiny)
        out, _ = export_bundle("depth-anything-v2-small", weights=str(ckpt), out=work / "bundle", force=True,
                               check=False)
        from transformers import DepthAnythingForDepthEstimation

        model = DepthAnythingForDepthEstimation.from_pretrained(str(ckpt)).eval()
        side = 182 if tiny else 518
        inputs = {"pixel_values": torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))}
        fp32 = out / "model.onnx"
        call = lambda m, feeds: m(pixel_values=feeds["pixel_values"]).predicted_depth  # noqa: E731
    else:
        unet = _sd2_unet(tiny).eval()
        model = _UNetStep(unet).module
        lat, text = (16, (1, 8, 32)) if tiny else (96, (1, 77, 1024))
        g = torch.Generator().manual_seed(0)
        inputs = {"sample": torch.randn(1, 8, lat, lat, generator=g), "timestep": torch.tensor([999], dtype=torch.int64),
                  "text": torch.randn(*text, generator=g)}
        fp32 = work / "unet.onnx"
        with torch.inference_mode():
            torch.onnx.export(model, tuple(inputs.values()), str(fp32), dynamo=False, opset_version=17,
                              input_names=list(inputs), output_names=["noise"])
        call = lambda m, feeds: m(feeds["sample"], feeds["timestep"], feeds["text"])  # noqa: E731
    fp16 = fp32.with_name(fp32.stem + ".fp16.onnx")
    islands = convert(fp32, fp16)
    prep = {"model": model, "inputs": inputs, "call": call, "fp32": fp32, "fp16": fp16, "islands": islands}
    if name.startswith("da-v2"):
        prep["bundle"] = out
    return prep


# --------------------------------------------------------------------------- timing
def _time(fn, runs: int, warmup: int, sync) -> tuple[dict, object]:
    out = None
    for _ in range(warmup):
        out = fn()
    sync()
    ms = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        sync()
        ms.append((time.perf_counter() - t0) * 1000)
    return summarise(ms), out


def _rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def check_model(name: str, prep: dict, device: str, runs: int, warmup: int) -> dict:
    import torch

    from depthrt.backends.ort import OrtCudaRunner, OrtRunner

    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model, call = prep["model"].to(device), prep["call"]
    feeds32 = {k: v.to(device) for k, v in prep["inputs"].items()}
    rows = {}
    with torch.inference_mode():
        rows["pytorch fp32 eager"], ref = _time(lambda: call(model, feeds32), runs, warmup, sync)
        ref = ref.float().cpu().numpy()
        if cuda:
            half = {k: (v.half() if v.is_floating_point() else v) for k, v in feeds32.items()}
            model16 = model.half()
            rows["pytorch fp16 eager"], out = _time(lambda: call(model16, half), runs, warmup, sync)
            rows["pytorch fp16 eager"]["rel_l2"] = _rel_l2(out.float().cpu().numpy(), ref)
            rows["pytorch fp16 eager"]["nonfinite"] = int((~torch.isfinite(out)).sum())
            model.float()
    # ONNX Runtime on the fp16 graph. On the GPU the input lives on the device and so does the output.
    if cuda:
        runner = OrtCudaRunner(prep["fp16"])
        feeds = {k: v.contiguous() for k, v in feeds32.items()}
        label = "ort-cuda fp16" + (" +graph" if runner.cuda_graph else "")
    else:
        runner = OrtRunner(prep["fp16"])
        feeds = {k: v.cpu().numpy() for k, v in feeds32.items()}
        label = "ort-cpu fp16 graph"
    rows[label], out = _time(lambda: runner.run(feeds), runs, warmup, sync)
    value = next(iter(out.values()))
    host = torch.as_tensor(value, device="cuda").cpu().numpy() if cuda else value
    rows[label]["rel_l2"] = _rel_l2(host, ref)
    rows[label]["nonfinite"] = int(np.count_nonzero(~np.isfinite(host)))
    rows[label]["device_output"] = type(value).__name__
    rows.update(_tensorrt_rows(prep, device, runs, warmup, ref))
    base = rows.get("pytorch fp16 eager") or rows["pytorch fp32 eager"]
    ours = rows[label]
    speedup = base["median_ms"] / ours["median_ms"]
    return {"model": name, "rows": rows, "islands": prep["islands"], "speedup_vs_eager": speedup,
            "target": TARGETS.get(name) if cuda else None,
            "parity_ok": ours["rel_l2"] <= PARITY and ours["nonfinite"] == 0}


def _tensorrt_rows(prep: dict, device: str, runs: int, warmup: int, ref: np.ndarray) -> dict:
    """Build an fp16 engine for the Depth Anything bundle at the input's size and time it: through the
    runner (host input, host output, copies included) and the engine alone (CUDA events)."""
    from depthrt.backends import trt as trt_backend

    if trt_backend.load_tensorrt("trt") is None:
        return {"tensorrt": {"skipped": "full TensorRT (its builder) is not installed here"}}
    if device != "cuda" or "bundle" not in prep:
        return {"tensorrt": {"skipped": "TensorRT is timed on the GPU, for the Depth Anything bundles"}}
    from depthrt.manifest import read_manifest
    from depthrt_engines.build import build_bundle
    from depthrt_engines.config import BuildConfig

    x = prep["inputs"]["pixel_values"].cpu().numpy()
    size = (int(x.shape[2]), int(x.shape[3]))
    build_bundle(prep["bundle"], BuildConfig(precision="fp16", sizes={"min": size, "opt": size, "max": size}),
                 progress=False)
    graph = next(g for g in read_manifest(prep["bundle"])["graphs"] if g.get("precision", "fp32") == "fp32")
    runner = trt_backend.open_runner(prep["bundle"], graph, "trt", "fp16", None)
    row, out = _time(lambda: runner.run({"pixel_values": x}), runs, warmup, lambda: None)
    host = out["predicted_depth"]
    row["rel_l2"] = _rel_l2(host, ref)
    row["nonfinite"] = int(np.count_nonzero(~np.isfinite(host)))
    engine = summarise(runner.engine_time_ms({"pixel_values": x}, repeats=runs))
    return {"trt fp16 (host in/out)": row,
            "trt fp16 engine alone": {**engine, "rel_l2": row["rel_l2"], "nonfinite": row["nonfinite"]}}


def format_table(results: list[dict]) -> str:
    head = f"{'model':<14} {'runner':<24} {'median ms':>10} {'p90 ms':>8} {'rel-L2':>9} {'NaN/inf':>7}"
    lines = [head, "-" * len(head)]
    for res in results:
        if "error" in res:
            lines.append(f"{res['model']:<14} ERROR {res['error']}")
            continue
        for label, row in res["rows"].items():
            if "skipped" in row:
                lines.append(f"{res['model']:<14} {label:<24} {row['skipped']}")
                continue
            rel = f"{row['rel_l2']:.2e}" if "rel_l2" in row else "ref"
            lines.append(f"{res['model']:<14} {label:<24} {row['median_ms']:>10.2f} {row['p90_ms']:>8.2f} {rel:>9} "
                         f"{row.get('nonfinite', 0):>7}")
        target = f" (target >= {res['target']:.0f}x)" if res.get("target") else ""
        lines.append(f"{res['model']:<14} speed-up vs eager {res['speedup_vs_eager']:.2f}x{target}; parity "
                     f"{'ok' if res['parity_ok'] else 'FAIL'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models (to test the script on a CPU)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--work", help="folder for checkpoints and graphs (default: a temporary one)")
    parser.add_argument("--out", default="gpu_check.json", help="JSON results (default gpu_check.json)")
    args = parser.parse_args(argv)

    import torch

    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device visible to PyTorch; use --device cpu --tiny to test the script",
                  file=sys.stderr)
            return 2
        import onnxruntime

        onnxruntime.preload_dlls()  # before any CUDA session: finds the pip-installed CUDA 13 libraries
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            print("gpu_check: onnxruntime has no CUDAExecutionProvider: source scripts/gpu-env.sh first",
                  file=sys.stderr)
            return 2
    work = Path(args.work or tempfile.mkdtemp(prefix="depthrt-gpu-check-"))
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        print(f"[gpu_check] {name}: writing checkpoint and graphs", file=sys.stderr, flush=True)
        try:
            prep = prepare(name, work / name, args.tiny)
            print(f"[gpu_check] {name}: timing", file=sys.stderr, flush=True)
            results.append(check_model(name, prep, args.device, args.runs, args.warmup))
        except Exception as exc:  # one model failing must not hide the others' figures
            traceback.print_exc()
            results.append({"model": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"})
        finally:
            if args.device == "cuda":
                torch.cuda.empty_cache()
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": args.device,
            "tiny": args.tiny, "runs": args.runs, "warmup": args.warmup}
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    Path(args.out).write_text(json.dumps({"info": info, "results": results}, indent=2, default=str))
    print(json.dumps(info))
    print(format_table(results))
    ok = all("error" not in r and r["parity_ok"] for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
