"""Dynamic-shape ONNX export of DPT / ZoeDepth / Depth Anything, checked against eager PyTorch.

Each variant is a tiny random-weight model (no hub access).  Weights are re-drawn with a larger scale than
the transformers init (which leaves these tiny models' outputs nearly constant, so a baked-in shape could
go unnoticed); position embeddings and the BEiT relative position bias table are made non-zero so their
interpolation to other sizes is exercised.  Every export is traced at one size and run in onnxruntime at
other sizes (portrait, landscape, odd and even patch grids, batch 2).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "export"))
from depthrt_export.patches import export_onnx, patch_depth_anything, patch_dpt, patch_for, patch_zoedepth  # noqa: E402

from transformers import (  # noqa: E402
    BeitConfig,
    BitConfig,
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
    DPTConfig,
    DPTForDepthEstimation,
    ZoeDepthConfig,
    ZoeDepthForDepthEstimation,
)

TOL = 1e-4  # max |onnx - torch| / max |torch|


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The models are tiny: one thread is fastest, and avoids OpenMP spin-waits on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------ configs
def tiny_depth_anything(**kwargs):
    backbone = Dinov2Config(image_size=56, patch_size=14, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                            out_indices=[1, 2, 3, 4], reshape_hidden_states=False, apply_layernorm=True)
    config = DepthAnythingConfig(backbone_config=backbone, patch_size=14, reassemble_hidden_size=32,
                                 neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8, **kwargs)
    return DepthAnythingForDepthEstimation(config)


def tiny_dpt_vit():
    config = DPTConfig(image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                       intermediate_size=64, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 32],
                       fusion_hidden_size=16)
    return DPTForDepthEstimation(config)


def tiny_dpt_hybrid():
    bit = BitConfig(global_padding="same", layer_type="bottleneck", depths=[1, 1, 1], hidden_sizes=[16, 32, 64],
                    embedding_size=16, num_groups=4, out_features=["stage1", "stage2", "stage3"],
                    embedding_dynamic_padding=True)
    config = DPTConfig(is_hybrid=True, backbone_config=bit, backbone_featmap_shape=[1, 64, 4, 4], image_size=64,
                       patch_size=16, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                       backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[16, 32, 32, 32], fusion_hidden_size=16,
                       readout_type="project")
    return DPTForDepthEstimation(config)


def tiny_beit():
    return BeitConfig(image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                      intermediate_size=64, use_relative_position_bias=True, use_absolute_position_embeddings=False,
                      reshape_hidden_states=False, out_indices=[1, 2, 3, 4])


def tiny_dpt_beit():
    config = DPTConfig(backbone_config=tiny_beit(), neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16)
    return DPTForDepthEstimation(config)


def tiny_zoedepth(two_heads=False):
    bins = [dict(n_bins=8, min_depth=1e-3, max_depth=10.0, name="nyu")]
    extra = {}
    if two_heads:
        bins.append(dict(n_bins=8, min_depth=1e-3, max_depth=80.0, name="kitti"))
        # the router's MLP classifier is hard-wired to 128 inputs, and the encoder always runs 4 layers
        extra = dict(num_patch_transformer_layers=4, patch_transformer_hidden_size=128,
                     patch_transformer_intermediate_size=128, patch_transformer_num_attention_heads=4)
    config = ZoeDepthConfig(backbone_config=tiny_beit(), neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
                            num_relative_features=8, bottleneck_features=16, bin_embedding_dim=16,
                            num_attractors=[4, 4, 2, 1], bin_configurations=bins, **extra)
    return ZoeDepthForDepthEstimation(config)


def randomize(model, seed=0):
    """Re-draw all parameters at a scale where the tiny models give non-degenerate depth maps."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if any(key in name for key in ("position", "cls_token", "mask_token")):
                param.copy_(0.5 * noise)
            elif param.ndim >= 2:
                param.copy_(noise / max(param[0].numel(), 1) ** 0.5)
            elif name.endswith("bias"):
                param.copy_(0.1 * noise)
            elif name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
    return model.eval()


# name: (builder, traced (H, W), [(batch, H, W) checked in onnxruntime], sizes where the unpatched model runs)
P14 = [(2, 98, 56), (1, 42, 126), (1, 56, 84)]
P16 = [(2, 96, 48), (1, 48, 128), (1, 80, 112), (1, 64, 64)]
# Most patch-16 variants are traced at an even 4x6 grid: the original fusion layers skip the residual
# resize there, so a trace without the fusion patch breaks at odd grids (5x7, 6x3, 3x8) - see _fusion_forward.
VARIANTS = {
    "depth_anything_v1": (tiny_depth_anything, (70, 98), P14, None),
    "depth_anything_v2_metric": (
        lambda: tiny_depth_anything(depth_estimation_type="metric", max_depth=20), (70, 98), P14, None),
    # DPT with a plain ViT only accepts square inputs without the patch (sqrt of the token count)
    "dpt_vit": (tiny_dpt_vit, (64, 96), P16, [(64, 64), (96, 96)]),
    # DPT hybrid only accepts config.image_size without the patch
    "dpt_hybrid": (tiny_dpt_hybrid, (64, 96), P16, [(64, 64)]),
    "dpt_beit": (tiny_dpt_beit, (80, 112), [(2, 96, 48), (1, 48, 128), (1, 64, 64)], None),  # traced at odd 5x7
    "zoedepth_nyu": (tiny_zoedepth, (64, 96), P16, None),
    "zoedepth_nyu_kitti": (lambda: tiny_zoedepth(two_heads=True), (64, 96), P16, None),
}


def _eager(model, x, patched):
    with torch.no_grad():
        if patched:
            with patch_for(model):
                return model(pixel_values=x).predicted_depth.numpy()
        return model(pixel_values=x).predicted_depth.numpy()


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _assert_close(out, ref, what):
    assert out.shape == ref.shape, f"{what}: onnx {out.shape} vs torch {ref.shape}"
    scale = float(np.abs(ref).max())
    assert scale > 0 and float(ref.std()) > 1e-3 * scale, f"{what}: degenerate reference output"
    err = float(np.abs(out - ref).max()) / scale
    assert err < TOL, f"{what}: relative error {err:.2e}"


@pytest.mark.parametrize("name", list(VARIANTS))
def test_dynamic_export_matches_eager(name, tmp_path):
    build, (th, tw), checks, _ = VARIANTS[name]
    torch.manual_seed(0)
    model = randomize(build())
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, torch.randn(1, 3, th, tw), path, opset=17)

    graph = onnx.load(str(path)).graph
    in_dims = graph.input[0].type.tensor_type.shape.dim
    out_dims = graph.output[0].type.tensor_type.shape.dim
    assert [in_dims[i].dim_param for i in (0, 2, 3)] == ["batch", "height", "width"]
    assert [out_dims[i].dim_param for i in (0, 1, 2)] == ["batch", "height", "width"]

    session = _session(path)
    for batch, h, w in [(1, th, tw)] + checks:
        x = torch.randn(batch, 3, h, w)
        ref = _eager(model, x, patched=True)
        out = session.run(None, {"pixel_values": x.numpy()})[0]
        _assert_close(out, ref, f"{name} {batch}x{h}x{w}")
        if batch > 1:  # the two images give different maps (no degenerate, input-independent output)
            assert float(np.abs(ref[0] - ref[1]).max()) > 1e-3 * float(np.abs(ref).max())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_patched_eager_equals_unpatched(name):
    build, (th, tw), checks, unpatched_sizes = VARIANTS[name]
    model = randomize(build())
    sizes = unpatched_sizes or [(th, tw)] + [(h, w) for _, h, w in checks]
    for h, w in sizes:
        x = torch.randn(2, 3, h, w)
        np.testing.assert_allclose(_eager(model, x, True), _eager(model, x, False), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "build, patch",
    [(tiny_dpt_hybrid, patch_dpt), (tiny_dpt_vit, patch_dpt), (tiny_dpt_beit, patch_dpt),
     (lambda: tiny_zoedepth(True), patch_zoedepth), (tiny_depth_anything, patch_depth_anything)],
)
def test_patches_restore_model(build, patch):
    model = build().eval()
    before = {n: dict(vars(m)) for n, m in model.named_modules()}
    with pytest.raises(RuntimeError, match="boom"):
        with patch(model):
            assert any("forward" in vars(m) for m in model.modules())
            raise RuntimeError("boom")
    after = {n: dict(vars(m)) for n, m in model.named_modules()}
    assert before.keys() == after.keys()
    for n in before:
        assert before[n].keys() == after[n].keys(), n
        assert "forward" not in after[n]
        assert not model.get_submodule(n)._forward_pre_hooks if n else not model._forward_pre_hooks


def test_zoedepth_router_both_branches(tmp_path):
    """One exported nyu-kitti graph must follow PyTorch's router for inputs that choose either head."""
    model = randomize(tiny_zoedepth(two_heads=True))
    bias = model.metric_head.mlp_classifier.linear2.bias
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(1, 3, 80, 112, generator=gen) * s for s in (0.25, 0.5, 1.0, 2.0, 4.0) for _ in range(2)]

    def margins():  # logit(nyu) - logit(kitti) per input, as the original router sees it (batch of 1)
        with torch.no_grad():
            return [float(l[0, 0] - l[0, 1]) for l in (model(pixel_values=x).domain_logits for x in inputs)]

    # shift the router's bias so that the decision boundary splits the inputs in half
    with torch.no_grad():
        bias[0] -= statistics.median(margins())
    margin = margins()
    assert min(abs(m) for m in margin) > 1e-4, "an input sits on the router's decision boundary"
    assert any(m > 0 for m in margin) and any(m < 0 for m in margin)

    path = tmp_path / "zoe_nyu_kitti.onnx"
    export_onnx(model, inputs[0], path)
    session = _session(path)
    for x, m in zip(inputs, margin):
        ref = _eager(model, x, patched=False)  # the original .item() router
        out = session.run(None, {"pixel_values": x.numpy()})[0]
        _assert_close(out, ref, f"router margin {m:+.3f}")
        # the other head gives a clearly different map, so a baked-in branch could not pass
        with torch.no_grad():
            bias[0] += -1e4 if m > 0 else 1e4
            other = _eager(model, x, patched=False)
            bias[0] -= -1e4 if m > 0 else 1e4
        assert float(np.abs(other - ref).max()) > 1e-2 * float(np.abs(ref).max())

    # batch of mixed inputs: the original routes the whole batch by the summed logits
    x = torch.cat([inputs[int(np.argmax(margin))], inputs[int(np.argmin(margin))]])
    _assert_close(session.run(None, {"pixel_values": x.numpy()})[0], _eager(model, x, patched=False), "mixed batch")


@pytest.mark.parametrize("name", ["dpt_hybrid", "zoedepth_nyu_kitti"])
def test_export_inside_active_patch(name, tmp_path):
    """depthrt_export.exporter enters the family patch itself, under inference_mode, around export_onnx."""
    build, (th, tw), checks, _ = VARIANTS[name]
    model = randomize(build())
    with patch_for(model), torch.inference_mode():
        export_onnx(model, torch.randn(1, 3, th, tw), tmp_path / "m.onnx")
    assert not any("forward" in vars(m) or "_depthrt_grid" in vars(m) for m in model.modules())
    batch, h, w = checks[0]
    x = torch.randn(batch, 3, h, w)
    _assert_close(_session(tmp_path / "m.onnx").run(None, {"pixel_values": x.numpy()})[0],
                  _eager(model, x, patched=True), f"{name} nested")
