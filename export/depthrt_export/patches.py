"""Export-time patches that make transformers depth models trace with dynamic batch/height/width.

``torch.onnx.export(..., dynamo=False)`` traces the model once; every shape that passes through ``int()``,
``math.ceil``, a Python comparison or ``.item()`` is frozen into the graph, which then silently returns
garbage (or the traced size) at other input sizes.  The context managers below swap the offending methods
on the instances of one model only, for versions that compute the same numbers in eager PyTorch but keep
shape arithmetic as traced tensor ops.  Everything is restored on exit.

Why tracing and not ``dynamo=True``: with transformers 5.24 / torch 2.13 the torch.export-based exporter
also specialised silently (a tiny Depth Anything exported at 70x98 with named dynamic dims still returned
70x98 for every input) and adds an opset-18 -> 17 down-conversion.  With tracing, every frozen value is
visible in the source, and tests/export/test_patches.py checks each patch by running the graph at other
sizes than the traced one.  (``dynamo=False`` is deprecated since torch 2.9 but works in 2.13.)
"""

from __future__ import annotations

import contextlib
import types
import warnings
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["patch_dpt", "patch_zoedepth", "patch_depth_anything", "patch_for", "export_onnx"]


class _Swaps:
    """Instance-level attribute/method swaps (and hook removals), undone in reverse order by ``restore``."""

    def __init__(self) -> None:
        self._undo: list = []

    def attr(self, module: nn.Module, name: str, value) -> None:
        self._undo.append((module, name, name in module.__dict__, module.__dict__.get(name)))
        setattr(module, name, value)

    def method(self, module: nn.Module, name: str, fn) -> None:
        self.attr(module, name, types.MethodType(fn, module))

    def restore(self) -> None:
        for item in reversed(self._undo):
            if callable(item):
                item()
            elif item[2]:
                setattr(item[0], item[1], item[3])
            else:
                delattr(item[0], item[1])
        self._undo.clear()


def _modules_of(model: nn.Module, class_name: str):
    # Match by class name: no imports of transformers internals, and only this model's instances are touched.
    return [m for m in model.modules() if type(m).__name__ == class_name]


# --------------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------------
def _fusion_forward(self, hidden_state: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """DPT/ZoeDepth ``FeatureFusionLayer.forward`` without the ``hidden_state.shape != residual.shape`` test.

    The original only resizes the residual when shapes differ, i.e. when a patch-grid side is odd (the 0.5x
    reassemble branch rounds up).  Tracing freezes that comparison: a graph traced at an even grid has no
    resize and fails at odd grids.  We always resize; a same-size bilinear resize is an exact copy.
    """
    if residual is not None:
        size = (hidden_state.shape[2], hidden_state.shape[3])
        residual = F.interpolate(residual, size=size, mode="bilinear", align_corners=False)
        hidden_state = hidden_state + self.residual_layer1(residual)
    hidden_state = self.residual_layer2(hidden_state)
    hidden_state = F.interpolate(hidden_state, scale_factor=2, mode="bilinear", align_corners=self.align_corners)
    return self.projection(hidden_state)


def _relative_position_index(wh, ww) -> torch.Tensor:
    """BEiT relative position index for a ``wh x ww`` window, built from (traceable) tensor ops only.

    Same values as ``BeitRelativePositionBias.generate_relative_position_index``.
    """
    pos = torch.arange(wh * ww)
    row, col = pos // ww, pos % ww
    rel = (row[:, None] - row[None, :] + (wh - 1)) * (2 * ww - 1) + (col[:, None] - col[None, :] + (ww - 1))
    num_relative_distance = (2 * wh - 1) * (2 * ww - 1) + 3
    zeros_col = torch.zeros_like(rel[:, :1])
    zeros_row = torch.zeros_like(rel[:1, :])
    body = torch.cat([zeros_col + (num_relative_distance - 2), rel], dim=1)  # token -> cls, token -> token
    top = torch.cat([zeros_row[:, :1] + (num_relative_distance - 1), zeros_row + (num_relative_distance - 3)], 1)
    return torch.cat([top, body], dim=0)


def _beit_relative_position_bias_forward(self, window_size, interpolate_pos_encoding=False, dim_size=None):
    """``BeitRelativePositionBias.forward`` with a closed-form relative position index.

    MiDaS v3.1 / ZoeDepth resize the bias table to the current window (2h-1 x 2w-1) and gather it with a
    relative index.  With transformers 5.24 the original does trace dynamically, but only by accident
    (its lru_cache is keyed on the traced size tensors) and builds the index with in-place scatters:
    ~3.5x more ONNX nodes (40 ScatterND per 4 layers) than this version.  Same values in eager.
    """
    wh, ww = window_size
    table = self.relative_position_bias_table
    old_distance = self.num_relative_distance
    old_height, old_width = 2 * self.window_size[0] - 1, 2 * self.window_size[1] - 1
    sub_table = table[: old_distance - 3].reshape(1, old_width, old_height, -1).permute(0, 3, 1, 2)
    sub_table = F.interpolate(sub_table, size=(2 * wh - 1, 2 * ww - 1), mode="bilinear")
    sub_table = sub_table.permute(0, 2, 3, 1).reshape(-1, table.shape[1])
    new_table = torch.cat([sub_table, table[old_distance - 3 :]])
    index = _relative_position_index(wh, ww).to(table.device)
    bias = new_table[index.reshape(-1)]
    tokens = wh * ww + 1
    bias = bias.view(tokens, tokens, -1).permute(2, 0, 1).contiguous()
    if interpolate_pos_encoding:
        bias = F.interpolate(bias.unsqueeze(1), size=(dim_size, dim_size), mode="bilinear", align_corners=False)
        bias = bias.squeeze(1)
    return bias.unsqueeze(0)


def _dynamic_pad_forward(self, input: torch.Tensor) -> torch.Tensor:
    """BiT ``DynamicPad2d.forward`` ("SAME" padding) with the pad amounts kept in-graph.

    The original uses ``math.ceil`` and ``max`` on the traced sizes: ``math.ceil`` silently returns a
    Python int (frozen at the traced size) while ``x`` stays dynamic, so other sizes got nonsense (even
    negative, i.e. cropping) pads.  ``ceil(x / s) == (x + s - 1) // s`` in integer arithmetic, and
    ``clamp`` replaces ``max``; zero pads are a no-op, so eager results are unchanged.
    """
    sizes = []
    for x, k, s, d in zip(input.shape[-2:], self.kernel_size, self.stride, self.dilation):
        pad = ((x + s - 1) // s - 1) * s + (k - 1) * d + 1 - x
        sizes.append(pad.clamp(min=0) if isinstance(pad, torch.Tensor) else max(pad, 0))
    pad_h, pad_w = sizes
    return F.pad(input, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2], value=self.value)


def _weight_standardized_conv_forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
    """BiT ``WeightStandardizedConv2d.forward`` without a training-mode ``batch_norm`` in the graph.

    The original standardises the kernel with ``batch_norm(training=True)`` on every call, which the
    exporter emits as ``BatchNormalization(training_mode=1)`` on the weights (not constant-folded;
    unsupported by some runtimes such as TensorRT).  While tracing we use the kernel standardised once, with
    the same op, when the patch was entered (``_depthrt_weight``), so the graph has a plain constant Conv
    kernel, bit-identical to the eager one.  Eager calls run the original method.
    """
    if not torch.jit.is_tracing():
        return type(self).forward(self, hidden_state)
    if self.pad is not None:
        hidden_state = self.pad(hidden_state)
    weight = self._depthrt_weight
    return F.conv2d(hidden_state, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _hybrid_embeddings_forward(self, pixel_values, interpolate_pos_encoding=True):
    return type(self).forward(self, pixel_values, interpolate_pos_encoding=True)


@contextlib.contextmanager
def _patched(model: nn.Module, forwards: dict):
    """Swap ``forward`` of every submodule whose class name is a key of ``forwards``; yields the ``_Swaps``."""
    swaps = _Swaps()
    try:
        for class_name, forward in forwards.items():
            for module in _modules_of(model, class_name):
                swaps.method(module, "forward", forward)
        yield swaps
    finally:
        swaps.restore()


# --------------------------------------------------------------------------------------------------------
# DPT (ViT, hybrid ViT+BiT, BEiT backbones)
# --------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def patch_dpt(model: nn.Module):
    """Make ``DPTForDepthEstimation`` (ViT, hybrid BiT or BEiT backbone) traceable at any size.

    * ViT / hybrid: the reassemble stage infers the token grid as ``sqrt(seq_len)`` (square inputs only; the
      traced ``sqrt`` even works for squares but fails for any other aspect).  We record the grid
      ``(H // patch, W // patch)`` from ``pixel_values`` with a forward pre-hook and pass it on.  Extends
      eager DPT to non-square inputs; identical results for square ones.
    * hybrid: ``DPTViTHybridEmbeddings`` rejects any size but ``config.image_size`` unless called with
      ``interpolate_pos_encoding=True`` (``DPTModel`` never passes it); the position embeddings are
      resized either way, so we pass ``True``.  BiT: see ``_dynamic_pad_forward`` ("SAME" padding) and
      ``_weight_standardized_conv_forward``.
    * BEiT: relative position bias (see ``_beit_relative_position_bias_forward``).
    * fusion layers: see ``_fusion_forward``.
    """
    forwards = {
        "DPTViTHybridEmbeddings": _hybrid_embeddings_forward,
        "DynamicPad2d": _dynamic_pad_forward,
        "WeightStandardizedConv2d": _weight_standardized_conv_forward,
        "DPTFeatureFusionLayer": _fusion_forward,
        "BeitRelativePositionBias": _beit_relative_position_bias_forward,
    }
    with _patched(model, forwards) as swaps:
        cfg = model.config
        patch = cfg.patch_size if cfg.backbone_config is None or cfg.is_hybrid else cfg.backbone_config.patch_size
        for stage in _modules_of(model, "DPTReassembleStage"):
            original = type(stage).forward

            def reassemble(self, hidden_states, patch_height=None, patch_width=None, _orig=original):
                if patch_height is None and getattr(self, "_depthrt_grid", None) is not None:
                    patch_height, patch_width = self._depthrt_grid
                return _orig(self, hidden_states, patch_height, patch_width)

            swaps.method(stage, "forward", reassemble)
            swaps.attr(stage, "_depthrt_grid", None)

            def record_grid(module, args, kwargs, _stage=stage):
                pixel_values = kwargs["pixel_values"] if "pixel_values" in kwargs else args[0]
                _stage._depthrt_grid = (pixel_values.shape[2] // patch, pixel_values.shape[3] // patch)

            handle = model.register_forward_pre_hook(record_grid, with_kwargs=True)
            swaps._undo.append(handle.remove)
        for conv in _modules_of(model, "WeightStandardizedConv2d"):
            with torch.no_grad():
                flat = conv.weight.reshape(1, conv.out_channels, -1)
                weight = F.batch_norm(flat, None, None, training=True, momentum=0.0, eps=conv.eps)
            swaps.attr(conv, "_depthrt_weight", weight.reshape_as(conv.weight))
        yield model


# --------------------------------------------------------------------------------------------------------
# ZoeDepth (BEiT backbone; single head or router over several bin configurations)
# --------------------------------------------------------------------------------------------------------
def _zoe_reassemble_forward(self, hidden_states, patch_height, patch_width):
    """``ZoeDepthReassembleStage.forward`` without ``split(batch_size)``.

    The original concatenates the stages along the batch axis and splits them back with
    ``split(batch_size)``; the traced split size is a constant, so batch 2 breaks a graph traced at batch
    1.  We reshape to a (stage, batch) axis pair instead; every op is the same, just the re-slicing differs.
    """
    num_stages, batch_size = len(hidden_states), hidden_states[0].shape[0]
    hidden_states = torch.cat(hidden_states, dim=0)
    cls_token, hidden_states = hidden_states[:, 0], hidden_states[:, 1:]
    total_batch_size, _, num_channels = hidden_states.shape
    hidden_states = hidden_states.reshape(total_batch_size, patch_height, patch_width, num_channels)
    hidden_states = hidden_states.permute(0, 3, 1, 2).contiguous()
    if self.readout_type == "project":
        hidden_states = hidden_states.flatten(2).permute((0, 2, 1))
        readout = cls_token.unsqueeze(dim=1).expand_as(hidden_states)
        hidden_states = torch.cat((hidden_states, readout), -1)
    elif self.readout_type == "add":
        hidden_states = hidden_states + cls_token.unsqueeze(-1)
    # reshape (not unflatten, whose ONNX export freezes the -1) to (stage, batch, ...)
    per_stage = hidden_states.reshape([num_stages, batch_size] + list(hidden_states.shape[1:]))
    out = []
    for stage_idx in range(num_stages):
        hidden_state = per_stage[stage_idx]
        if self.readout_type == "project":
            hidden_state = self.readout_projects[stage_idx](hidden_state)
        hidden_state = hidden_state.permute(0, 2, 1).reshape(batch_size, -1, patch_height, patch_width)
        out.append(self.layers[stage_idx](hidden_state))
    return out


def _zoe_multi_head_forward(self, outconv_activation, bottleneck, feature_blocks, relative_depth):
    """``ZoeDepthMultipleMetricDepthEstimationHeads.forward`` with the router computed in-graph.

    The original picks one bin configuration with ``argmax(...).item()`` and runs only that head, so a
    trace bakes in whichever head the sample input chose.  We run every head and select the routed result
    with ``torch.where`` on the (batch-global, as in the original) argmax: the selected tensor is exactly
    the one the original computes.
    """
    x = self.conv2(bottleneck)
    embedding = self.patch_transformer(x)[:, 0, :]
    domain_logits = self.mlp_classifier(embedding)
    domain_vote = torch.softmax(domain_logits.sum(dim=0, keepdim=True), dim=-1)
    choice = torch.argmax(domain_vote, dim=-1).reshape(())
    outs = []
    for conf in self.bin_configurations:
        name, min_depth, max_depth = conf["name"], conf["min_depth"], conf["max_depth"]
        _, seed_bin_centers = self.seed_bin_regressors[name](x)
        if self.bin_centers_type in ["normed", "hybrid2"]:
            prev_bin = (seed_bin_centers - min_depth) / (max_depth - min_depth)
        else:
            prev_bin = seed_bin_centers
        prev_bin_embedding = self.seed_projector(x)
        for projector, attractor, feature in zip(self.projectors, self.attractors[name], feature_blocks):
            bin_embedding = projector(feature)
            prev_bin, bin_centers = attractor(bin_embedding, prev_bin, prev_bin_embedding, interpolate=True)
            prev_bin_embedding = bin_embedding
        last = outconv_activation
        bin_centers = F.interpolate(bin_centers, last.shape[-2:], mode="bilinear", align_corners=True)
        bin_embedding = F.interpolate(bin_embedding, last.shape[-2:], mode="bilinear", align_corners=True)
        probs = self.conditional_log_binomial[name](last, bin_embedding)
        outs.append(torch.sum(probs * bin_centers, dim=1, keepdim=True))
    num_choices = min(len(outs), domain_logits.shape[-1])  # the classifier has 2 outputs
    out = outs[num_choices - 1]
    for idx in reversed(range(num_choices - 1)):
        out = torch.where(choice == idx, outs[idx], out)
    return out, domain_logits


@contextlib.contextmanager
def patch_zoedepth(model: nn.Module):
    """Make ``ZoeDepthForDepthEstimation`` (BEiT backbone, one or several heads) traceable at any size.

    Patches: BEiT relative position bias, fusion layers (odd patch grids), reassemble ``split``
    (dynamic batch), and the multi-head router (``.item()``).
    """
    forwards = {
        "ZoeDepthFeatureFusionLayer": _fusion_forward,
        "ZoeDepthReassembleStage": _zoe_reassemble_forward,
        "ZoeDepthMultipleMetricDepthEstimationHeads": _zoe_multi_head_forward,
        "BeitRelativePositionBias": _beit_relative_position_bias_forward,
    }
    with _patched(model, forwards):
        yield model


# --------------------------------------------------------------------------------------------------------
# Depth Anything V1/V2 (DINOv2 backbone; relative and metric)
# --------------------------------------------------------------------------------------------------------
def _depth_anything_head_forward(self, hidden_states, patch_height, patch_width):
    """``DepthAnythingDepthEstimationHead.forward`` without ``int()`` on the output size.

    ``int(patch_height * patch_size)`` turns the traced size into a constant, so the graph always
    returned the traced resolution.  In eager the values are Python ints already, so nothing changes.
    """
    hidden_states = hidden_states[self.head_in_index]
    predicted_depth = self.conv1(hidden_states)
    size = (patch_height * self.patch_size, patch_width * self.patch_size)
    predicted_depth = F.interpolate(predicted_depth, size, mode="bilinear", align_corners=True)
    predicted_depth = self.conv2(predicted_depth)
    predicted_depth = self.activation1(predicted_depth)
    predicted_depth = self.conv3(predicted_depth)
    predicted_depth = self.activation2(predicted_depth) * self.max_depth
    return predicted_depth.squeeze(dim=1)


@contextlib.contextmanager
def patch_depth_anything(model: nn.Module):
    """Make ``DepthAnythingForDepthEstimation`` (V1, V2, metric) traceable at any size.

    Only the head needs a patch: DINOv2 already interpolates its position embeddings with traced sizes
    when ``torch.jit.is_tracing()`` (bicubic to the same size is exact, so eager is unaffected), and the
    fusion stage resizes to the next feature map's traced shape.
    """
    with _patched(model, {"DepthAnythingDepthEstimationHead": _depth_anything_head_forward}):
        yield model


def patch_for(model: nn.Module):
    """Return the patch context manager for ``model``'s family (a no-op context for unknown models)."""
    name = type(model).__name__
    if name.startswith("DPT"):
        return patch_dpt(model)
    if name.startswith("ZoeDepth"):
        return patch_zoedepth(model)
    if name.startswith("DepthAnything"):
        return patch_depth_anything(model)
    return contextlib.nullcontext(model)


class _DepthOnly(nn.Module):
    """Wraps a transformers depth model so the traced graph has one input and one output tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values, return_dict=True).predicted_depth


def export_onnx(
    model: nn.Module,
    sample: torch.Tensor,
    path,
    opset: int = 17,
    input_name: str = "pixel_values",
    output_name: str = "predicted_depth",
    dynamic: bool = True,
) -> None:
    """Export ``model`` (DPT, ZoeDepth or Depth Anything) to ONNX at ``path`` and check the result.

    Uses TorchScript tracing (``dynamo=False``) under the family's patch, with dynamic batch/height/width
    on the input ``(N, 3, H, W)`` and output ``(N, H, W)`` when ``dynamic``.  The sample's H and W must be
    valid for the model (multiples of the patch size; 16 for the BiT hybrid); use batch 1 or 2 and a
    non-square sample for the most general trace.  Raises if ``onnx.checker`` rejects the graph.
    """
    import onnx

    if opset < 17:
        raise ValueError("opset must be >= 17")
    model = model.eval()
    wrapper = _DepthOnly(model).eval()
    axes = None
    if dynamic:
        axes = {input_name: {0: "batch", 2: "height", 3: "width"}, output_name: {0: "batch", 1: "height", 2: "width"}}
    with patch_for(model), torch.no_grad(), warnings.catch_warnings():
        # Tracer warnings are expected: the remaining frozen values are checked to be size-independent.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(wrapper, (sample,), str(path), dynamo=False, opset_version=opset, input_names=[input_name],
                          output_names=[output_name], dynamic_axes=axes, do_constant_folding=True)
    onnx.checker.check_model(str(path), full_check=True)
