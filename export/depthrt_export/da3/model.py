"""A PyTorch port of the monocular Depth Anything 3 network (DA3MONO-LARGE, DA3METRIC-LARGE).

The network is a DINOv2 ViT (no register tokens, LayerScale, plain MLP) whose outputs after four
blocks feed a DPT head with two 1-channel branches: depth (``exp`` of the logits) and sky
(``relu`` of the logits). Written from the upstream description
(ByteDance-Seed/Depth-Anything-3, ``src/depth_anything_3/model``); parameter names follow the
published ``model.safetensors`` once the leading ``model.`` is added (see ``loader.py``).

Upstream differences, on purpose:

* Single view only: the input is ``(B, 3, H, W)`` rather than ``(B, N, 3, H, W)``; the multi-view
  pieces (camera tokens, alternating attention, RoPE, camera heads) are not used by the monocular
  presets and are absent.
* The sky fill (sky pixels get the 0.99 quantile of the non-sky depth) is post-processing and lives
  in ``reference.py``; ``forward`` returns the two head outputs.
* The bicubic resampling of the position embedding is written as two small matrix products whose
  weights are computed from the traced patch-grid size, so one ONNX graph serves every input size.
  It reproduces ``F.interpolate(mode="bicubic", scale_factor=((h+0.1)/M, (w+0.1)/M))`` (upstream's
  call) to float rounding, including upstream's shortcut of using the table unchanged when the
  grid is exactly M x M.

Everything in ``forward`` is traceable with ``torch.onnx.export(dynamo=False)`` and dynamic H/W:
no Python integer is taken from a tensor shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PATCH_SIZE = 14
POS_EMBED_OFFSET = 0.1  # DINOv2's "interpolate_offset"
BICUBIC_A = -0.75  # PyTorch's (and OpenCV's) cubic convolution coefficient


@dataclass(frozen=True)
class DA3Config:
    """Every size the network needs. ``loader.py`` fills it from the model name and the tensors."""

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_hidden: int = 4096
    pos_grid: int = 37  # the position table is pos_grid x pos_grid patches (518 / 14)
    out_layers: tuple[int, ...] = (4, 11, 17, 23)
    features: int = 256
    out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    head_hidden: int = 32  # width of the last 3x3 conv of both output branches
    patch_size: int = PATCH_SIZE
    block_eps: float = 1e-6
    final_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if len(self.out_layers) != 4 or len(set(self.out_layers)) != 4:
            raise ValueError(f"out_layers must be 4 distinct block indices, got {self.out_layers}")
        if list(self.out_layers) != sorted(self.out_layers):
            raise ValueError(f"out_layers must be increasing, got {self.out_layers}")
        if not 0 <= min(self.out_layers) <= max(self.out_layers) < self.depth:
            raise ValueError(f"out_layers {self.out_layers} out of range for {self.depth} blocks")


# --------------------------------------------------------------------------------------------
# DINOv2 backbone
# --------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:  # (B,3,H,W) -> (B,C,h,w)
        return self.proj(x)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.matmul(q * (self.head_dim**-0.5), k.transpose(-2, -1)).softmax(dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf) GELU, as upstream
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: DA3Config) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.block_eps)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads)
        self.ls1 = LayerScale(cfg.embed_dim)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.block_eps)
        self.mlp = Mlp(cfg.embed_dim, cfg.mlp_hidden)
        self.ls2 = LayerScale(cfg.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


def _cubic_weights(t: Tensor) -> list[Tensor]:
    """The four cubic-convolution weights for taps at offsets -1, 0, 1, 2 (t in [0, 1))."""
    a = BICUBIC_A

    def near(x: Tensor) -> Tensor:  # |x| <= 1
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0

    def far(x: Tensor) -> Tensor:  # 1 < |x| < 2
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a

    return [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]


def bicubic_matrix(n_out: Tensor, n_in: int, scale: Tensor) -> Tensor:
    """(n_out, n_in) matrix of PyTorch's bicubic resampling (align_corners=False, no antialias).

    ``n_out`` is a 0-dim integer tensor (traced), ``scale`` the input step per output pixel
    (PyTorch uses ``1 / scale_factor`` when a scale factor is given). Taps outside the input are
    clamped to the border, as in ``F.interpolate``.
    """
    dst = torch.arange(n_out, dtype=torch.float32, device=scale.device)
    src = (dst + 0.5) * scale - 0.5
    base = torch.floor(src)
    weights = _cubic_weights(src - base)
    cols = torch.arange(n_in, dtype=torch.float32, device=scale.device)
    mat = torch.zeros_like(src).unsqueeze(1) * cols.unsqueeze(0)
    for k, w in enumerate(weights):
        idx = torch.clamp(base + float(k - 1), 0.0, float(n_in - 1))
        mat = mat + w.unsqueeze(1) * (idx.unsqueeze(1) == cols.unsqueeze(0)).to(torch.float32)
    return mat


class DinoV2(nn.Module):
    """DINOv2 ViT as configured by upstream's DinoV2(name="vitl", cat_token=False)."""

    def __init__(self, cfg: DA3Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.embed_dim, cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.pos_grid * cfg.pos_grid, cfg.embed_dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.final_eps)

    def interpolate_pos_embed(self, grid_h: Tensor, grid_w: Tensor) -> Tensor:
        """(1, 1 + h*w, C) position table for an h x w patch grid (0-dim integer tensors)."""
        m = self.cfg.pos_grid
        c = self.cfg.embed_dim
        pos = self.pos_embed.float()
        # Upstream keeps the table as is when the grid is exactly m x m; a zero offset gives a
        # unit scale, and a unit-scale bicubic resampling is the identity, so no branch is needed.
        square = ((grid_h == m) & (grid_w == m)).to(torch.float32)
        offset = POS_EMBED_OFFSET * (1.0 - square)
        scale_h = float(m) / (grid_h.to(torch.float32) + offset)
        scale_w = float(m) / (grid_w.to(torch.float32) + offset)
        mat_h = bicubic_matrix(grid_h, m, scale_h)  # (h, m)
        mat_w = bicubic_matrix(grid_w, m, scale_w)  # (w, m)
        table = pos[0, 1:].reshape(m, m * c)
        rows = torch.matmul(mat_h, table).reshape(-1, m, c)  # (h, m, C)
        both = torch.matmul(mat_w, rows)  # (h, w, C): (w, m) @ (h, m, C) broadcast
        return torch.cat([pos[:, :1], both.reshape(1, -1, c)], dim=1)

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """Normed patch tokens (B, h*w, C) after each of ``cfg.out_layers``, and the grid h, w
        (0-dim integer tensors, traced)."""
        feat = self.patch_embed(x)  # (B, C, h, w)
        shape = torch._shape_as_tensor(feat)
        grid_h, grid_w = shape[2], shape[3]
        tokens = feat.flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1)
        tokens = tokens + self.interpolate_pos_embed(grid_h, grid_w).to(tokens.dtype)
        outs = []
        last = max(self.cfg.out_layers)
        for i, blk in enumerate(self.blocks):
            if i > last:
                break  # later blocks feed nothing (they still hold weights)
            tokens = blk(tokens)
            if i in self.cfg.out_layers:
                outs.append(self.norm(tokens)[:, 1:])
        return outs, grid_h, grid_w


# --------------------------------------------------------------------------------------------
# DPT head with sky branch
# --------------------------------------------------------------------------------------------


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, 1, 1, bias=True)
        self.conv2 = nn.Conv2d(features, features, 3, 1, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FusionBlock(nn.Module):
    def __init__(self, features: int, has_residual: bool = True) -> None:
        super().__init__()
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.has_residual = has_residual
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1, 1, 0, bias=True)

    def forward(self, x: Tensor, skip: Tensor | None = None, like: Tensor | None = None) -> Tensor:
        if skip is not None and self.has_residual:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if like is None:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        else:
            x = _resize_like(x, like)
        return self.out_conv(x)


def _resize_like(x: Tensor, like: Tensor) -> Tensor:
    """Bilinear (align_corners=True) resize of x to like's spatial size, traceable."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)


def _branch(c_in: int, hidden: int) -> nn.Sequential:
    # indices 0 and 2 carry weights, as upstream's Sequential(conv, ReLU, conv)
    return nn.Sequential(
        nn.Conv2d(c_in, hidden, 3, 1, 1), nn.ReLU(), nn.Conv2d(hidden, 1, 1, 1, 0)
    )


class DPTHead(nn.Module):
    """Upstream's DPT(dim_in, output_dim=1, features, out_channels) with its defaults:
    no token norm, no UV position embedding, down_ratio 1, depth = exp, sky = relu."""

    def __init__(self, cfg: DA3Config) -> None:
        super().__init__()
        oc = cfg.out_channels
        f = cfg.features
        self.projects = nn.ModuleList(nn.Conv2d(cfg.embed_dim, c, 1) for c in oc)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.scratch = nn.Module()
        for i, c in enumerate(oc):
            setattr(self.scratch, f"layer{i + 1}_rn", nn.Conv2d(c, f, 3, 1, 1, bias=False))
        self.scratch.refinenet1 = FusionBlock(f)
        self.scratch.refinenet2 = FusionBlock(f)
        self.scratch.refinenet3 = FusionBlock(f)
        self.scratch.refinenet4 = FusionBlock(f, has_residual=False)
        self.scratch.output_conv1 = nn.Conv2d(f, f // 2, 3, 1, 1)
        self.scratch.output_conv2 = _branch(f // 2, cfg.head_hidden)
        self.scratch.sky_output_conv2 = _branch(f // 2, cfg.head_hidden)

    def forward(
        self, feats: list[Tensor], grid_h: Tensor, grid_w: Tensor, image: Tensor
    ) -> tuple[Tensor, Tensor]:
        b, _, c = feats[0].shape
        levels = []
        for i, tok in enumerate(feats):
            x = tok.transpose(1, 2).reshape(b, c, grid_h, grid_w)
            x = self.resize_layers[i](self.projects[i](x))
            levels.append(x)
        s = self.scratch
        l1, l2, l3, l4 = (
            s.layer1_rn(levels[0]), s.layer2_rn(levels[1]), s.layer3_rn(levels[2]), s.layer4_rn(levels[3])
        )
        out = s.refinenet4(l4, like=l3)
        out = s.refinenet3(out, l3, like=l2)
        out = s.refinenet2(out, l2, like=l1)
        out = s.refinenet1(out, l1)
        out = _resize_like(s.output_conv1(out), image)
        depth = torch.exp(s.output_conv2(out))
        sky = F.relu(s.sky_output_conv2(out))
        return depth[:, 0], sky[:, 0]


class DA3Mono(nn.Module):
    """Monocular Depth Anything 3.

    ``forward(pixel_values)``: ``pixel_values`` is (B, 3, H, W) float, ImageNet-normalised RGB,
    H and W multiples of 14. Returns ``(depth, sky)``, both (B, H, W) float32 at the input size:
    ``depth`` = exp(depth logits) (> 0; relative depth for da3mono, and for da3metric the value
    that ``* focal / 300`` turns into metres), ``sky`` = relu(sky logits) (>= 0, sky where >= 0.5).
    No sky fill is applied (see ``reference.apply_sky``).
    """

    def __init__(self, cfg: DA3Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = nn.Module()
        self.backbone.pretrained = DinoV2(cfg)
        self.head = DPTHead(cfg)

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        feats, grid_h, grid_w = self.backbone.pretrained(pixel_values)
        return self.head(feats, grid_h, grid_w, pixel_values)
