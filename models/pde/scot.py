"""scOT (Poseidon's scalable operator transformer), written for sciscale.

A U-shaped Swin V2 encoder/decoder on patch tokens [b, H, W, C]:
patch embedding -> 4 encoder stages (windowed scaled-cosine attention with a continuous log-spaced relative
position bias, shifted windows on odd layers, res-post-norm) joined by patch merging -> ConvNeXt blocks on the
skip connections -> 4 decoder stages joined by patch unmerging -> patch recovery. Every layer norm is
time-conditioned: normalise, then scale = Linear(1, dim)(t) and shift = Linear(1, dim)(t).

Channel-dependent parameters live only in ``embed.proj`` (inputs) and ``recovery.*`` (outputs), so a
checkpoint fine-tuned on other channels re-initialises just those.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.pde.config import SCOT_SIZES, PdeModelSpec

_CPB_HIDDEN = 512  # Swin V2's continuous position bias MLP width


class TimeLayerNorm(nn.Module):
    """LayerNorm whose scale and shift are affine functions of the lead time."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Linear(1, dim)
        self.bias = nn.Linear(1, dim)

    def reset_parameters(self) -> None:
        # Start as a plain LayerNorm (scale 1, shift 0) whatever the lead time.
        for lin, value in ((self.weight, 1.0), (self.bias, 0.0)):
            nn.init.zeros_(lin.weight)
            nn.init.constant_(lin.bias, value)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x, (self.dim,), eps=self.eps)
        t = t.reshape(-1, 1).to(x.dtype)
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (self.dim,)
        return x * self.weight(t).view(shape) + self.bias(t).view(shape)


def _log_spaced_table(w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative coordinates of a w x w window, log-spaced into [-1, 1] (Swin V2), and the pair index."""
    rel = torch.arange(-(w - 1), w, device=device, dtype=torch.float32)
    table = torch.stack(torch.meshgrid(rel, rel, indexing="ij"), -1)  # [2w-1, 2w-1, 2]
    if w > 1:
        table = table / (w - 1) * 8
        table = torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)
    coords = torch.stack(torch.meshgrid(torch.arange(w, device=device), torch.arange(w, device=device),
                                        indexing="ij")).flatten(1)  # [2, w*w]
    rel_idx = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)
    index = rel_idx[..., 0] * (2 * w - 1) + rel_idx[..., 1]
    return table.reshape(-1, 2), index


class WindowAttention(nn.Module):
    """Scaled-cosine multi-head attention inside windows with a continuous relative position bias."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))  # no key bias: it cancels in the softmax
        self.logit_scale = nn.Parameter(torch.full((heads, 1, 1), math.log(10.0)))
        self.cpb = nn.Sequential(nn.Linear(2, _CPB_HIDDEN), nn.ReLU(), nn.Linear(_CPB_HIDDEN, heads, bias=False))
        self.proj = nn.Linear(dim, dim)

    def position_bias(self, w: int, device) -> torch.Tensor:
        table, index = _log_spaced_table(w, device)
        bias = self.cpb(table.to(self.proj.weight.dtype))[index.reshape(-1)]
        return 16 * torch.sigmoid(bias.reshape(w * w, w * w, -1).permute(2, 0, 1))  # [heads, N, N]

    def forward(self, x: torch.Tensor, w: int, mask: torch.Tensor | None) -> torch.Tensor:
        """x: [windows, N, C]; mask: [nW, N, N] additive, windows ordered batch-major."""
        bw, n, c = x.shape
        qkv = F.linear(x, self.qkv.weight, torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias]))
        q, k, v = qkv.reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        scale = torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
        q = F.normalize(q, dim=-1) * scale
        k = F.normalize(k, dim=-1)
        bias = self.position_bias(w, x.device).unsqueeze(0)  # [1, heads, N, N]
        if mask is not None:
            bias = (bias.view(1, -1, self.heads, n, n) + mask[None, :, None]).view(-1, self.heads, n, n)
            bias = bias.repeat(bw // bias.shape[0], 1, 1, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0)
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


def _shift_mask(h: int, w_: int, w: int, s: int, device) -> torch.Tensor:
    """Additive mask [nW, w*w, w*w] that keeps shifted windows from mixing regions that are not adjacent."""
    img = torch.zeros(h, w_, device=device)
    count = 0
    for hs in (slice(0, -w), slice(-w, -s), slice(-s, None)):
        for ws in (slice(0, -w), slice(-w, -s), slice(-s, None)):
            img[hs, ws] = count
            count += 1
    win = img.view(h // w, w, w_ // w, w).permute(0, 2, 1, 3).reshape(-1, w * w)
    diff = win[:, None, :] - win[:, :, None]
    return torch.where(diff != 0, -100.0, 0.0)


class SwinLayer(nn.Module):
    """Swin V2 block (res-post-norm): x + norm(attn(x)), then x + norm(mlp(x)); odd layers shift windows."""

    def __init__(self, dim: int, heads: int, window: int, shifted: bool):
        super().__init__()
        self.window, self.shifted = window, shifted
        self.attn = WindowAttention(dim, heads)
        self.norm1 = TimeLayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.norm2 = TimeLayerNorm(dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b, h, w_, c = x.shape
        w = min(self.window, h, w_)
        s = w // 2 if self.shifted and min(h, w_) > self.window else 0
        ph, pw = (-h) % w, (-w_) % w
        y = F.pad(x, (0, 0, 0, pw, 0, ph)) if ph or pw else x
        hp, wp = y.shape[1:3]
        if s:
            y = torch.roll(y, (-s, -s), (1, 2))
        win = y.view(b, hp // w, w, wp // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)
        mask = _shift_mask(hp, wp, w, s, x.device) if s else None
        win = self.attn(win, w, mask)
        y = win.view(b, hp // w, wp // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if s:
            y = torch.roll(y, (s, s), (1, 2))
        x = x + self.norm1(y[:, :h, :w_], t)
        return x + self.norm2(self.mlp(x), t)


class PatchMerge(nn.Module):
    """2x2 neighbouring tokens -> one token of twice the width."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = TimeLayerNorm(2 * dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.norm(self.reduction(x), t)


class PatchUnmerge(nn.Module):
    """One token -> 2x2 tokens of half the width."""

    def __init__(self, dim: int):
        super().__init__()
        self.upsample = nn.Linear(dim, 2 * dim, bias=False)
        self.mixup = nn.Linear(dim // 2, dim // 2, bias=False)
        self.norm = TimeLayerNorm(dim // 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        x = self.upsample(x).view(b, h, w, 2, 2, c // 2).permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, c // 2)
        return self.mixup(self.norm(x, t))


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, time-conditioned norm, pointwise MLP, layer scale; on skip connections."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = TimeLayerNorm(dim)
        self.pw1 = nn.Linear(dim, 4 * dim)
        self.pw2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.gamma * self.pw2(F.gelu(self.pw1(self.norm(y, t))))


class Stage(nn.Module):
    """Swin layers at one width; the encoder merges afterwards, the decoder unmerges."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, resample: nn.Module | None):
        super().__init__()
        self.layers = nn.ModuleList(SwinLayer(dim, heads, window, i % 2 == 1) for i in range(depth))
        self.resample = resample


class ScOT(nn.Module):
    """u(t) -> u(t + lead_time) on a square grid of ``spec.resolution``."""

    def __init__(self, spec: PdeModelSpec):
        super().__init__()
        cfg = dict(SCOT_SIZES[spec.size])
        if spec.window_size:
            cfg["window_size"] = spec.window_size
        if spec.width:
            cfg["embed_dim"] = spec.width
        self.resolution, self.patch, self.residual = spec.resolution, cfg["patch_size"], spec.residual
        self.activation_checkpointing = spec.activation_checkpointing
        self._build(spec.in_channels, spec.out_ch, cfg)
        self.apply(self._init_weights)
        if self.residual:
            nn.init.zeros_(self.recovery_mixup.weight)  # start at the persistence prediction

    def _build(self, c_in: int, c_out: int, cfg: dict) -> None:
        d, depths, heads, win = cfg["embed_dim"], cfg["depths"], cfg["num_heads"], cfg["window_size"]
        dims = [d * 2**i for i in range(len(depths))]
        self.embed = nn.Conv2d(c_in, d, self.patch, stride=self.patch)
        self.embed_norm = TimeLayerNorm(d)
        last = len(depths) - 1
        self.encoder = nn.ModuleList(
            Stage(dims[i], depths[i], heads[i], win, PatchMerge(dims[i]) if i < last else None)
            for i in range(len(depths)))
        self.skips = nn.ModuleList(nn.ModuleList(ConvNeXtBlock(dims[i]) for _ in range(n))
                                   for i, n in enumerate(cfg["skip_blocks"]))
        self.decoder = nn.ModuleList(
            Stage(dims[i], depths[i], heads[i], win, PatchUnmerge(dims[i]) if i > 0 else None)
            for i in reversed(range(len(depths))))
        self.recovery = nn.ConvTranspose2d(d, c_out, self.patch, stride=self.patch)
        self.recovery_mixup = nn.Conv2d(c_out, c_out, 5, padding=2, bias=False)

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        if isinstance(m, TimeLayerNorm):
            m.reset_parameters()

    def _run(self, fn, *args):
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x, t = batch["x"], batch["lead_time"].reshape(-1).to(batch["x"].dtype)
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            raise ValueError(f"scOT input is {tuple(x.shape[-2:])} but model.resolution is {self.resolution}; "
                             "set model.resolution to the dataset's grid")
        h = self.embed_norm(self.embed(x).permute(0, 2, 3, 1), t)
        skips = []
        for stage in self.encoder:
            start = h
            for layer in stage.layers:
                h = self._run(layer, h, t)
            skips.append(h)
            if stage.resample is not None:
                h = stage.resample(h + start, t)  # Poseidon adds the stage input back before merging
        for i, blocks in enumerate(self.skips):
            for block in blocks:
                skips[i] = self._run(block, skips[i], t)
        h = skips[-1]
        for k, stage in enumerate(self.decoder):
            if k > 0:
                h = h + skips[len(skips) - 1 - k]
            for layer in stage.layers:
                h = self._run(layer, h, t)
            if stage.resample is not None:
                h = stage.resample(h, t)
        out = self.recovery_mixup(self.recovery(h.permute(0, 3, 1, 2)))
        return x[:, : out.shape[1]] + out if self.residual else out
