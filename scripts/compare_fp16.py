"""Our fp16 converter against NVIDIA ModelOpt AutoCast, on real-size graphs with random weights.

For each graph: the fp32 ONNX graph, our fp16 variant (``depthrt_export.fp16``: rule-based islands
for the feed-forward models, calibrated islands for the latent-diffusion graphs, exactly as export
makes them) and AutoCast's (``modelopt.onnx.autocast``, fp16, ``--keep_io_types``, CPU reference
runs on the same calibration inputs ours gets). Both variants run on ONNX Runtime's CPU provider
against the fp32 graph on a few held-out inputs; the table gives the worst rel-L2 (||y16 - y32|| /
||y32|| over every input and output), whether every output is finite, how many compute nodes still
run in fp32 (nodes other than Cast/Constant with a float32 output; the same count for both tools)
and the conversion time (ours includes its calibration run; AutoCast's its reference runs).

ModelOpt pins onnx / onnxruntime-gpu / cupy versions that differ from ours, so it is run from its own
environment: ``--autocast-python`` names that interpreter (default: this one, if it imports modelopt).

    python scripts/compare_fp16.py --work /tmp/fp16cmp --autocast-python /path/venv/bin/python \
        [--models da-v2-s,dpt-hybrid,...] [--json out.json]

The checkpoints are written here with the published architecture configs and random weights
(models hubs are not needed): their figures measure the converters on the real graph structure and
sizes, not on trained activations (a trained SDXL VAE overflows fp16 where a random one may not;
``lbm-vae-hot`` scales the decoder as ``depthrt_export.diffusion.tiny_lbm.make_vae_hot`` does to
stand in for that).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
THREADS = 2

# ---------------------------------------------------------------------------------- checkpoints
# Feed-forward models: the published configs (transformers' conversion scripts / the hub config.json).


def _da_v2_small():
    from transformers import DepthAnythingConfig, Dinov2Config

    backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
                            image_size=518, patch_size=14, out_indices=[3, 6, 9, 12], apply_layernorm=True,
                            reshape_hidden_states=False)
    return DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=384, patch_size=14,
                               neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64, head_hidden_size=32)


def _dpt_hybrid():
    from transformers import BitConfig, DPTConfig

    bit = BitConfig(global_padding="same", layer_type="bottleneck", depths=[3, 4, 9],
                    out_features=["stage1", "stage2", "stage3"], embedding_dynamic_padding=True)
    return DPTConfig(is_hybrid=True, backbone_config=bit, hidden_size=768, num_hidden_layers=12,
                     num_attention_heads=12, intermediate_size=3072, image_size=384, patch_size=16,
                     backbone_featmap_shape=[1, 1024, 24, 24], backbone_out_indices=[2, 5, 8, 11],
                     reassemble_factors=[1, 1, 1, 0.5], neck_hidden_sizes=[256, 512, 768, 768],
                     fusion_hidden_size=256, readout_type="project", use_batch_norm_in_fusion_residual=False,
                     use_auxiliary_head=False)


def _zoedepth_nyu():
    from transformers import BeitConfig, ZoeDepthConfig

    beit = BeitConfig(image_size=384, num_hidden_layers=24, hidden_size=1024, intermediate_size=4096,
                      num_attention_heads=16, use_relative_position_bias=True, reshape_hidden_states=False,
                      use_absolute_position_embeddings=False, use_mask_token=False,
                      out_features=["stage6", "stage12", "stage18", "stage24"])
    return ZoeDepthConfig(backbone_config=beit, neck_hidden_sizes=[256, 512, 1024, 1024], bin_centers_type="softplus",
                          bin_configurations=[{"name": "nyu", "n_bins": 64, "min_depth": 1e-3, "max_depth": 10.0}])


# name: (preset, transformers class, config maker, tiny variant whose preprocessor config is published, (h, w))
FEEDFORWARD = {
    "da-v2-s": ("depth-anything-v2-small", "DepthAnythingForDepthEstimation", _da_v2_small, "depth-anything-v2",
                (518, 518)),
    "dpt-hybrid": ("dpt-hybrid-midas", "DPTForDepthEstimation", _dpt_hybrid, "dpt-hybrid", (384, 384)),
    "zoedepth-nyu": ("zoedepth-nyu", "ZoeDepthForDepthEstimation", _zoedepth_nyu, "zoedepth-nyu", (384, 512)),
}

# prs-eth/marigold-depth-v1-1 unet/ and vae/ config.json (Stable Diffusion 2's, 8 input channels).
MARIGOLD_UNET = dict(
    sample_size=96, in_channels=8, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20), use_linear_projection=True, upcast_attention=True, norm_num_groups=32,
    flip_sin_to_cos=True, freq_shift=0)
MARIGOLD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    sample_size=768, scaling_factor=0.18215)
TEXT_SHAPE = (1, 2, 1024)  # Marigold's empty-prompt embedding (CLIP ViT-H: <bos><eos>, 1024 wide)
# Graphs whose AutoCast reference run on one input was killed out of memory on our 24 GiB machine (SD2 UNet,
# 32x32 latents: 19.6 GB resident when killed): AutoCast goes straight to its run without reference data.
REFERENCE_OUT_OF_MEMORY = {"marigold/unet"}
DIFFUSION_EDGE = 256  # VAE images 256x256, latents (and the UNet) 32x32: a reduced size for ORT-CPU


def write_feedforward(name: str, folder: Path) -> Path:
    """A random-weight checkpoint of ``name`` at the real size, in the published layout."""
    from depthrt_export.tiny import VARIANTS, write_random_transformers

    _, arch, make_config, tiny, _ = FEEDFORWARD[name]
    return write_random_transformers(arch, make_config(), VARIANTS[tiny][2], folder, name, seed=0)


def export_feedforward(name: str, work: Path) -> Path:
    from depthrt_export.exporter import export_bundle

    bundle = work / name / "bundle"
    if not (bundle / "model.onnx").is_file():
        weights = write_feedforward(name, work / name / "weights")
        export_bundle(FEEDFORWARD[name][0], weights=str(weights), out=bundle, force=True, check=False)
    return bundle / "model.onnx"


def export_diffusion(name: str, work: Path) -> dict[str, Path]:
    """The fp32 VAE encoder / decoder (and Marigold's UNet) of ``name`` with random weights."""
    import diffusers
    import torch

    from depthrt_export.diffusion.common import (export_graph, image_dynamic, unet_spec, vae_decoder_spec,
                                                 vae_encoder_spec)

    out = work / name
    wanted = ["vae_encoder", "unet", "vae_decoder"] if name == "marigold" else ["vae_encoder", "vae_decoder"]
    paths = {g: out / f"{g}.onnx" for g in wanted}
    if all(p.is_file() for p in paths.values()):
        return paths
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if name == "marigold":
        vae = diffusers.AutoencoderKL(**MARIGOLD_VAE).eval()
    else:
        from depthrt_export.diffusion.lbm import shipped_config

        vae = diffusers.AutoencoderKL(**shipped_config("sdxl_vae_config.json")).eval()
        if name == "lbm-vae-hot":
            from depthrt_export.diffusion.tiny_lbm import make_vae_hot

            make_vae_hot(vae)
    dynamic = image_dynamic(768, 8)
    specs = [vae_encoder_spec(vae, dynamic, (64, 64)), vae_decoder_spec(vae, dynamic, (64, 64), 8)]
    if name == "marigold":
        unet = diffusers.UNet2DConditionModel(**MARIGOLD_UNET).eval()
        specs.insert(1, unet_spec(unet, dynamic, (8, 8), TEXT_SHAPE))
    for spec in specs:
        if not paths[spec.name].is_file():
            export_graph(spec, out, 17)
    return paths


# ------------------------------------------------------------------------------------- inputs
def feedforward_feeds(name: str, path: Path, seeds) -> list[dict]:
    """Normalised synthetic photos at the model's processing size, one feed per seed."""
    import onnx

    from depthrt.samples import synthetic_image
    from depthrt_export.tiny import VARIANTS

    pp = VARIANTS[FEEDFORWARD[name][3]][2]
    h, w = FEEDFORWARD[name][4]
    mean = np.asarray(pp["image_mean"], np.float32)[:, None, None]
    std = np.asarray(pp["image_std"], np.float32)[:, None, None]
    (inp,) = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    out = []
    for s in seeds:
        img = synthetic_image(h, w, seed=s).astype(np.float32).transpose(2, 0, 1) / np.float32(255)
        out.append({inp: np.ascontiguousarray(((img - mean) / std)[None], dtype=np.float32)})
    return out


def diffusion_feeds(paths: dict[str, Path], seeds, timesteps) -> dict[str, list[dict]]:
    """As ``depthrt_export.fp16.diffusion_calibration``: photos (and a grey one) in [-1, 1], their latents
    and unit Gaussian latents, UNet samples (image latents first, then noise) at ``timesteps``."""
    from depthrt_export.fp16 import vae_calibration

    rng = np.random.default_rng(seeds[0])
    feeds = vae_calibration(paths["vae_encoder"], DIFFUSION_EDGE, DIFFUSION_EDGE, seeds, rng)
    if "unet" in paths:
        latents = feeds["vae_decoder"][0]["latent"]
        text = rng.standard_normal(TEXT_SHAPE, dtype=np.float32)
        n = len(latents)
        feeds["unet"] = [{"sample": np.concatenate([latents, rng.standard_normal(latents.shape, dtype=np.float32)], 1),
                          "timestep": np.full((n,), t, np.float32),
                          "encoder_hidden_states": np.repeat(text, n, axis=0)} for t in timesteps]
    return feeds


# ---------------------------------------------------------------------------------- converters
def run_ours(path: Path, dst: Path, calibrate: list[dict] | None, unet: bool) -> float:
    """Our converter as export runs it; returns seconds (calibration included)."""
    import onnx

    from depthrt_export import fp16

    start = time.perf_counter()
    if calibrate is None:
        fp16.convert(path, dst)
    else:
        pinned, _ = fp16.calibrated_nodes(path, calibrate, threads=THREADS)
        if unet:
            proto = onnx.load(str(path), load_external_data=False)
            pinned += [n for n in fp16.timestep_path_nodes(proto.graph) if n not in pinned]
        fp16.convert(path, dst, scopes=(), keep_nodes=pinned, external=True)
    return time.perf_counter() - start


_AUTOCAST_DRIVER = """
import json, sys, time
from modelopt.onnx import utils
from modelopt.onnx.autocast.convert import convert_to_mixed_precision
src, dst, data, data_max = sys.argv[1:5]
start = time.perf_counter()
model = convert_to_mixed_precision(onnx_path=src, low_precision_type="fp16", keep_io_types=True,
                                   calibration_data=data, providers=["cpu"], data_max=float(data_max))
utils.save_onnx(model, dst, save_as_external_data=model.ByteSize() > 1900 * 1024**2)
import resource
print("AUTOCAST", time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2)
"""


def autocast_python(given: str | None) -> str | None:
    """The interpreter that imports modelopt.onnx.autocast, or None."""
    for exe in ([given] if given else [sys.executable]):
        try:
            probe = subprocess.run([exe, "-c", "import modelopt.onnx.autocast"], capture_output=True, text=True)
        except OSError:  # no such interpreter
            continue
        if probe.returncode == 0:
            return exe
    return None


def run_autocast(python: str, path: Path, dst: Path, calibrate: list[dict], data_max: float,
                 log: Path, skip_reference: bool = False) -> tuple[float, float, str]:
    """AutoCast in its own environment; returns (seconds, peak resident GB, the calibration it used).

    Its reference run keeps every tensor of every calibration input in memory (10.8 GB for DA-V2-S at
    518x518 on two images, killed out of memory here; 13 GB for the SD VAE encoder on three 256x256
    images), so it gets one input: the first item of the first calibration feed; where that is killed
    out of memory too (the SD2 UNet: 19.6 GB), it runs again without its reference run."""
    data = dst.parent / f"{dst.stem}.calibration.npz"
    np.savez(data, **{k: v[:1] for k, v in calibrate[0].items()})
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    # data_max = inf skips the reference run (AutoCast then keeps only initializers above fp16's range
    # in fp32): the fallback where even one input's reference run does not fit in memory.
    tries = [(data_max, "1 input"), (math.inf, "no reference run (1 input: out of memory)")]
    if skip_reference:
        tries = tries[1:]
    for limit, used in tries:
        done = subprocess.run([python, "-c", _AUTOCAST_DRIVER, str(path), str(dst), str(data), repr(limit)],
                              capture_output=True, text=True, env=env)
        log.write_text(done.stdout + done.stderr)
        if done.returncode == 0:
            seconds, peak = [ln for ln in done.stdout.splitlines() if ln.startswith("AUTOCAST")][-1].split()[1:]
            return float(seconds), float(peak), used
        if done.returncode != -9:
            raise RuntimeError(f"AutoCast failed on {path.name} (log: {log}): "
                               f"{(done.stderr.strip().splitlines() or ['?'])[-1]}")
    raise RuntimeError(f"AutoCast was killed (out of memory) on {path.name}, even without its reference run")


# ---------------------------------------------------------------------------------- measures
def fp32_nodes(path: Path) -> tuple[int, int]:
    """(compute nodes with a float32 output, compute nodes) of the ONNX graph ``path``; Cast and
    Constant are not compute nodes."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(path), load_external_data=False)
    typed = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in (*typed.graph.value_info, *typed.graph.output)}
    compute = [n for n in typed.graph.node if n.op_type not in ("Cast", "Constant")]
    return sum(any(types.get(o) == TensorProto.FLOAT for o in n.output) for n in compute), len(compute)


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def compare(reference: list[list[np.ndarray]], path: Path, feeds: list[dict]) -> tuple[float, bool]:
    """(worst rel-L2 against ``reference``, all outputs finite) of ``path`` on ``feeds``."""
    sess = session(path)
    worst, finite = 0.0, True
    for ref, feed in zip(reference, feeds):
        for r, y in zip(ref, sess.run(None, feed)):
            y = np.asarray(y, np.float64)
            finite &= bool(np.isfinite(y).all())
            err = float(np.linalg.norm(y - r) / max(np.linalg.norm(r), 1e-30))
            worst = max(worst, err if math.isfinite(err) else math.inf)
    return worst, finite


def measure(label: str, path: Path, feeds: list[dict], calibrate: list[dict], ours_calibrate: list[dict] | None,
            unet: bool, python: str | None, data_max: float, work: Path) -> list[dict]:
    rows: list[dict] = []
    tools = [("depthrt", None)] + ([("autocast", python)] if python else [])
    reference = None
    for tool, exe in tools:
        dst = work / "variants" / f"{label.replace('/', '.')}.{tool}.onnx"
        dst.parent.mkdir(parents=True, exist_ok=True)
        done = dst.with_suffix(".json")  # a row measured by an earlier run on the same fp32 graph is reused
        if done.is_file() and done.stat().st_mtime > path.stat().st_mtime:
            rows.append(json.loads(done.read_text()))
            print(format_row(rows[-1]), flush=True)
            continue
        row = {"graph": label, "tool": tool}
        if reference is None:
            sess = session(path)
            reference = [[np.asarray(y, np.float64) for y in sess.run(None, f)] for f in feeds]
            del sess
        try:
            if tool == "depthrt":
                seconds = run_ours(path, dst, ours_calibrate, unet)
            else:
                seconds, peak, used = run_autocast(exe, path, dst, calibrate, data_max, dst.with_suffix(".log"),
                                                   skip_reference=label in REFERENCE_OUT_OF_MEMORY)
                row.update(peak_gb=round(peak, 1), calibration=used)
            worst, finite = compare(reference, dst, feeds)
            kept, total = fp32_nodes(dst)
            row.update(rel_l2=worst, finite=finite, fp32_nodes=kept, nodes=total, seconds=round(seconds, 1))
        except Exception as exc:  # a converter failing is a result of the comparison, not a crash of it
            row.update(error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        print(format_row(row), flush=True)
        done.write_text(json.dumps(row) + "\n")
        rows.append(row)
    return rows


def format_row(row: dict) -> str:
    if "error" in row:
        return f"| {row['graph']} | {row['tool']} | failed: {row['error']} | | | | |"
    peak = f"{row['peak_gb']:.1f} GB, {row['calibration']}" if "peak_gb" in row else "-"
    return (f"| {row['graph']} | {row['tool']} | {row['rel_l2']:.2e} | {'yes' if row['finite'] else 'NO'} | "
            f"{row['fp32_nodes']} / {row['nodes']} | {row['seconds']:.1f} | {peak} |")


MODELS = ("da-v2-s", "dpt-hybrid", "zoedepth-nyu", "marigold", "lbm-vae", "lbm-vae-hot")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="folder for checkpoints, graphs and variants (reused)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--autocast-python", help="interpreter with nvidia-modelopt[onnx] installed")
    parser.add_argument("--data-max", type=float, default=512.0, help="AutoCast's data_max (its default: 512)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    work = Path(args.work)
    models = [m for m in args.models.split(",") if m]
    unknown = set(models) - set(MODELS)
    if unknown:
        print(f"compare_fp16: unknown model(s) {', '.join(sorted(unknown))}; known: {', '.join(MODELS)}",
              file=sys.stderr)
        return 2
    python = autocast_python(args.autocast_python)
    if python is None:
        print("compare_fp16: modelopt.onnx.autocast is not importable; measuring depthrt's converter only",
              file=sys.stderr)
    print("| graph | tool | worst rel-L2 | finite | fp32 nodes / nodes | seconds | AutoCast peak RSS, calibration |\n"
          "|---|---|---|---|---|---|---|",
          flush=True)
    rows = []
    for name in models:
        if name in FEEDFORWARD:
            path = export_feedforward(name, work)
            feeds = feedforward_feeds(name, path, seeds=(0, 1, 2))
            calibrate = feedforward_feeds(name, path, seeds=(10, 11))
            rows += measure(name, path, feeds, calibrate, None, False, python, args.data_max, work)
            continue
        paths = export_diffusion(name, work)
        calib = diffusion_feeds(paths, seeds=(10, 11), timesteps=(999.0, 500.0, 250.0))
        evals = diffusion_feeds(paths, seeds=(0, 1), timesteps=(999.0, 100.0))
        for graph, path in paths.items():
            rows += measure(f"{name}/{graph}", path, evals[graph], calib[graph], calib[graph], graph == "unet",
                            python, args.data_max, work)
    if args.json:
        versions = {}
        from importlib import metadata

        for dist in ("onnx", "onnxruntime", "torch", "transformers", "diffusers"):
            try:
                versions[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                pass
        Path(args.json).write_text(json.dumps({"rows": rows, "autocast_python": python, "data_max": args.data_max,
                                               "threads": THREADS, "diffusion_edge": DIFFUSION_EDGE,
                                               "versions": versions}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
