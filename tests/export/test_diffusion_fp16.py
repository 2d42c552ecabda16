"""fp16 safety of the latent-diffusion bundles: calibrated fp32 islands, proven on an overflowing VAE.

SDXL's VAE decoder carries activations far above fp16's 65504 (diffusers' ``force_upcast``,
madebyollin/sdxl-vae-fp16-fix). The tiny SDXL-shaped VAE of ``tiny_lbm`` with ``hot_vae=True`` does
the same (its mid-block attention output and the last up-blocks' residual stream are scaled up;
GroupNorm keeps the decoded image at its usual scale), so this shows on a few-MB graph that
(1) plain fp16 conversion, and fp16 with only the fixed norm/softmax islands, decode a realistic
latent to inf/NaN, and (2) the exported fp16 variant (calibrated islands) stays finite and matches
fp32. The Marigold UNet's variant is checked the same way, and the runtime's choice of graph file.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from depthrt.errors import BackendError
from depthrt.manifest import SCHEMA_VERSION, read_manifest, validate_manifest, write_json_atomic
from depthrt.presets import find_preset
from depthrt.samples import synthetic_image

pytest.importorskip("diffusers")
pytest.importorskip("yaml")
ort = pytest.importorskip("onnxruntime")

TOL = 1e-2  # rel-L2, fp16 variant vs fp32 graph (measured: decoder ~3e-3, UNet ~4e-3)


def _write(preset_name: str, weights, out, fp16: bool = True):
    from depthrt_export.diffusion import export_diffusion_bundle

    out.mkdir(parents=True)
    fields = export_diffusion_bundle(find_preset(preset_name), str(weights), out, 17, fp16=fp16)
    manifest = {"schema_version": SCHEMA_VERSION, "created": "test", **fields, "tools": {}, "parity": None}
    validate_manifest(manifest)
    write_json_atomic(out / "manifest.json", manifest)
    return out


@pytest.fixture(scope="module")
def hot_lbm(tmp_path_factory):
    from depthrt_export.diffusion.tiny_lbm import write_tiny_lbm

    root = tmp_path_factory.mktemp("hot_lbm")
    weights = write_tiny_lbm("lbm-depth", root / "weights", hot_vae=True)
    return _write("lbm-depth", weights, root / "bundle")


@pytest.fixture(scope="module")
def marigold(tmp_path_factory):
    from depthrt_export.diffusion.tiny_marigold import write_tiny_marigold

    root = tmp_path_factory.mktemp("marigold_fp16")
    weights = write_tiny_marigold("marigold-depth", root / "weights")
    return _write("marigold-depth-v1-1", weights, root / "bundle")


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _rel_l2(a, ref):
    return float(np.linalg.norm((a - ref).ravel()) / np.linalg.norm(ref.ravel()))


def _variants(bundle):
    graphs = read_manifest(bundle)["graphs"]
    return {g["name"]: g for g in graphs if g["precision"] == "fp16"}


def _image(h=240, w=320, seed=7):
    """A photo-like image (not one of the calibration images, nor their size) in [-1, 1]."""
    x = synthetic_image(h, w, seed=seed).astype(np.float32).transpose(2, 0, 1)[None]
    return np.ascontiguousarray(x / np.float32(127.5) - np.float32(1))


def test_hot_vae_decoder_overflows_plain_fp16_but_not_the_variant(hot_lbm, tmp_path):
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from depthrt_export.fp16 import FP16_MAX, activation_maxima, convert

    latent = _session(hot_lbm / "vae_encoder.onnx").run(None, {"image": _image()})[0]
    ref = _session(hot_lbm / "vae_decoder.onnx").run(None, {"latent": latent})[0]
    assert np.isfinite(ref).all() and np.abs(ref).max() < 20  # fp32: a normal decoded image

    # The premise: on this realistic latent the fp32 decoder's activations exceed fp16's range.
    maxima = activation_maxima(hot_lbm / "vae_decoder.onnx", [{"latent": latent}])
    peak = max(maxima.values())
    over = sorted(n for n, v in maxima.items() if v > FP16_MAX)
    print(f"fp32 decoder: max |activation| {peak:.3g} (fp16 max {FP16_MAX:g}); {len(over)} tensors above it")
    assert peak > 2 * FP16_MAX
    assert any("mid_block/attentions.0" in n for n in maxima if maxima[n] > FP16_MAX / 4)
    assert any("up_blocks.3" in n for n in over)

    # Plain fp16 (everything), and fp16 with the fixed islands only (norms in fp32): inf/NaN.
    naive = convert_float_to_float16(onnx.load(str(hot_lbm / "vae_decoder.onnx")), keep_io_types=True,
                                     op_block_list=[])
    onnx.save(naive, str(tmp_path / "naive.onnx"))
    convert(hot_lbm / "vae_decoder.onnx", tmp_path / "fixed_islands.onnx", scopes=())
    for name in ("naive", "fixed_islands"):
        out = _session(tmp_path / f"{name}.onnx").run(None, {"latent": latent})[0]
        bad = 1 - float(np.isfinite(out).mean())
        print(f"{name} fp16 decoder: {bad:.0%} of the output is inf/NaN")
        assert bad > 0.5

    # The exported variant: finite and close to fp32.
    variant = _variants(hot_lbm)["vae_decoder"]
    half = _session(hot_lbm / variant["file"]).run(None, {"latent": latent})[0]
    err = _rel_l2(half, ref)
    islands = variant["fp32_islands"]
    print(f"calibrated fp16 decoder: rel-L2 {err:.2e} vs fp32; {len(islands['pinned'])} nodes pinned "
          f"(threshold {islands['threshold']:g}, calibration max |x| {islands['max_abs']:.3g})")
    assert half.dtype == np.float32 and np.isfinite(half).all()
    assert err <= TOL


def test_the_variant_records_and_keeps_its_calibrated_islands(hot_lbm):
    import onnx
    from onnx import TensorProto

    from depthrt_export.fp16 import FP16_MAX, HEADROOM

    variant = _variants(hot_lbm)["vae_decoder"]
    islands = variant["fp32_islands"]
    assert islands["threshold"] == FP16_MAX / HEADROOM and islands["max_abs"] > FP16_MAX
    assert "65504/4" in islands["rule"] and variant["external_data"] == "vae_decoder.fp16.onnx.data"
    pinned = set(islands["pinned"])
    assert "/decoder/mid_block/attentions.0/to_out.0/MatMul" in pinned
    assert {"/decoder/up_blocks.3/resnets.1/conv2/Conv", "/decoder/up_blocks.3/resnets.1/Add"} <= pinned
    assert not any("/decoder/conv_out/" in n for n in pinned)  # after the last GroupNorm: back in range

    model = onnx.load(str(hot_lbm / variant["file"]))
    inits = {t.name: t.data_type for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert all(inits[n.input[1]] == TensorProto.FLOAT for n in convs if n.name in pinned)
    assert any(inits[n.input[1]] == TensorProto.FLOAT16 for n in convs if n.name not in pinned)  # still fp16
    # No fp32 -> fp16 -> fp32 round trip between two fp32 nodes (it would turn an over-range value into inf).
    typed = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*typed.value_info, *typed.input)}
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in nodes.values():
        if node.op_type == "Cast" and node.attribute[0].i == TensorProto.FLOAT:
            src = producer.get(node.input[0])
            assert not (src is not None and src.op_type == "Cast" and src.attribute[0].i == TensorProto.FLOAT16
                        and types.get(src.input[0]) == TensorProto.FLOAT), node.name

    # The hot VAE's encoder and the tiny UNet stay in range: nothing pinned there but the timestep path.
    others = _variants(hot_lbm)
    assert others["vae_encoder"]["fp32_islands"]["pinned"] == []
    assert all("time_proj" in n or n.startswith("/unet/") for n in others["unet"]["fp32_islands"]["pinned"])


def test_marigold_fp16_graphs_match_fp32(marigold):
    variants = _variants(marigold)
    assert set(variants) == {"vae_encoder", "unet", "vae_decoder"}
    image = _image(176, 224)
    lat32 = _session(marigold / "vae_encoder.onnx").run(None, {"image": image})[0]
    lat16 = _session(marigold / variants["vae_encoder"]["file"]).run(None, {"image": image})[0]
    errors = {"vae_encoder": _rel_l2(lat16, lat32)}

    text = np.load(marigold / "empty_prompt.npy")
    rng = np.random.default_rng(3)
    sample = np.concatenate([lat32, rng.standard_normal(lat32.shape, dtype=np.float32)], axis=1)
    unet32, unet16 = _session(marigold / "unet.onnx"), _session(marigold / variants["unet"]["file"])
    for t in (999.0, 499.0, 1.0):
        feeds = {"sample": sample, "timestep": np.array([t], np.float32), "encoder_hidden_states": text}
        a, h = unet32.run(None, feeds)[0], unet16.run(None, feeds)[0]
        assert h.dtype == np.float32 and np.isfinite(h).all()
        errors[f"unet t={t:g}"] = _rel_l2(h, a)
    ref = _session(marigold / "vae_decoder.onnx").run(None, {"latent": lat32})[0]
    half = _session(marigold / variants["vae_decoder"]["file"]).run(None, {"latent": lat32})[0]
    errors["vae_decoder"] = _rel_l2(half, ref)
    print("marigold fp16 vs fp32 rel-L2: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert all(v <= TOL for v in errors.values()), errors
    # The UNet's fixed islands are there; its timestep embedding stays fp32.
    islands = variants["unet"]["fp32_islands"]
    assert {"LayerNormalization", "Softmax"} <= set(islands["op_types"])
    assert any(n.endswith("/time_proj/Sin") for n in islands["pinned"])


def test_runtime_uses_the_variants_at_fp16_on_gpu_backends_only(marigold, monkeypatch):
    from depthrt.backends import ort as ort_backend
    from depthrt.diffusion import load_diffusion

    manifest = read_manifest(marigold)
    fp32 = load_diffusion(marigold, manifest, "ort-cpu", "fp32")
    assert {n: g["file"] for n, g in fp32.graphs.items()} == {
        "vae_encoder": "vae_encoder.onnx", "unet": "unet.onnx", "vae_decoder": "vae_decoder.onnx"}
    with pytest.raises(BackendError, match="fp32 only"):
        load_diffusion(marigold, manifest, "ort-cpu", "fp16")

    # ort-cuda at fp16, its runner replaced by a CPU session on the file it was given.
    opened = []

    def cpu_runner(path, threads=None):
        opened.append(path.name)
        return ort_backend.OrtRunner(path)

    monkeypatch.setattr(ort_backend, "OrtCudaRunner", cpu_runner)
    half = load_diffusion(marigold, manifest, "ort-cuda", "fp16")
    assert sorted(opened) == ["unet.fp16.onnx", "vae_decoder.fp16.onnx", "vae_encoder.fp16.onnx"]
    image = synthetic_image(150, 200, seed=4)
    a = fp32.predict(image, processing_resolution=192, seed=0).depth  # the same numpy noise for both
    b = half.predict(image, processing_resolution=192, seed=0).depth
    err = _rel_l2(b, a)
    print(f"marigold end to end (4 steps), fp16 variants vs fp32: rel-L2 {err:.2e}")
    assert np.isfinite(b).all() and err <= TOL


def test_fp16_tool_adds_calibrated_variants_to_a_diffusion_bundle(marigold, tmp_path, capsys):
    from depthrt_export.fp16 import main

    bundle = tmp_path / "bundle"
    shutil.copytree(marigold, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["graphs"] = [g for g in manifest["graphs"] if g["precision"] == "fp32"]
    write_json_atomic(bundle / "manifest.json", manifest)
    for path in bundle.glob("*.fp16.onnx*"):
        path.unlink()
    assert main([str(bundle)]) == 0
    assert "pinned by the calibrated rule" in capsys.readouterr().out
    assert set(_variants(bundle)) == {"vae_encoder", "unet", "vae_decoder"}
    assert main([str(bundle)]) == 0  # again: replaces, does not duplicate
    assert len(read_manifest(bundle)["graphs"]) == 6
