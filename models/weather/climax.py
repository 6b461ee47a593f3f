"""ClimaX (Nguyen et al. 2023, microsoft/ClimaX), written for sciscale.

Each variable is patch-embedded with its own weights (variable tokenisation) and tagged with a learned
variable embedding; one cross-attention layer with a learned query folds the variables of a patch into one
token; fixed 2D sin-cos positions and a lead-time embedding are added; ViT blocks and an MLP head follow.
The vocabulary (``spec.variables``) fixes the parameters; any subset of it can be fed (fine-tuning).

A grid side that is not a multiple of the patch size is padded before the patch embedding and the output is
cropped back, so the model works on the data grid (e.g. 33, 121 or 721 latitudes with both poles). Latitude
rows are continued across the pole: the row at 90 + d degrees is the row at 90 - d degrees half a turn round
in longitude (the pole row itself is not repeated on a grid with poles; on a pole-free grid, whose pole lies
half a step beyond the edge row, the edge row is its own mirror). Longitude, being periodic, wraps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.weather.config import CLIMAX_SIZES, WeatherModelSpec


class Block(nn.Module):
    """Pre-norm transformer block with fused scaled-dot-product attention (logits times ``scale``; default
    1/sqrt(head width))."""

    def __init__(self, dim: int, heads: int, drop_path: float, mlp_ratio: float = 4.0, scale: float | None = None):
        super().__init__()
        self.heads, self.scale = heads, scale
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)
        x = x + self._drop(self.proj(attn.transpose(1, 2).reshape(b, n, d)))
        return x + self._drop(self.mlp(self.norm2(x)))

    def _drop(self, y: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_path == 0.0:
            return y
        keep = 1.0 - self.drop_path
        mask = y.new_empty(y.shape[0], 1, 1).bernoulli_(keep)
        return y * mask / keep


class VariablePool(nn.Module):
    """Cross-attention of one query over the variables of each patch: torch's MultiheadAttention (the same
    parameters under the same names, so its checkpoints load) with the attention ``scale`` it cannot take."""

    def __init__(self, dim: int, heads: int, scale: float | None = None):
        super().__init__()
        self.heads, self.scale = heads, scale
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)  # torch's MultiheadAttention's initialisation
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """[b or 1, 1, D] query, [b, V, D] tokens -> [b, 1, D]. One query for all is projected once (not
        expanded first: a linear layer on a stride-0 input rounds differently with and without gradients)."""
        w, bias = self.in_proj_weight.chunk(3), self.in_proj_bias.chunk(3)
        b, d = tokens.shape[0], tokens.shape[-1]
        q = F.linear(query, w[0], bias[0]).expand(b, -1, -1)
        k, v = F.linear(tokens, w[1], bias[1]), F.linear(tokens, w[2], bias[2])
        q, k, v = (x.reshape(b, -1, self.heads, d // self.heads).transpose(1, 2) for x in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.out_proj(out.transpose(1, 2).reshape(b, -1, d))


class ClimaX(nn.Module):
    """forward(batch) with ``inputs`` [b, T, V_in, H, W] and ``lead_hours`` [b] -> [b, V_out, H, W]."""

    def __init__(self, spec: WeatherModelSpec):
        super().__init__()
        dim, depth, heads, decoder_depth = CLIMAX_SIZES[spec.size]
        dim = spec.width or dim
        # muP: attention logits scaled by 1/head width (Tensor Programs V), equal to 1/sqrt at the base width
        scale = None if spec.mup is None else math.sqrt(spec.mup.base_width // heads) / (dim // heads)
        self.patch, self.grid, self.residual = spec.patch, tuple(spec.grid), spec.residual
        self.poles = spec.has_poles
        self.padded = tuple(n + (-n) % self.patch for n in self.grid)
        self.activation_checkpointing = False  # set by the trainer from distributed.activation_checkpointing
        vocab = spec.variables
        self.register_buffer("in_ids", torch.tensor([vocab.index(v) for v in spec.model_inputs]), persistent=False)
        self.register_buffer("out_ids", torch.tensor([vocab.index(v) for v in spec.model_outputs]), persistent=False)
        # where each output variable sits among the inputs, for the residual (persistence) path
        self.register_buffer(
            "out_in_pos", torch.tensor([spec.model_inputs.index(v) for v in spec.model_outputs]), persistent=False
        )
        self._build_embeddings(len(vocab), spec.history, dim, heads, scale)
        rates = [spec.drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(Block(dim, heads, r, scale=scale) for r in rates)
        self.norm = nn.LayerNorm(dim)
        self._build_head(len(vocab), dim, decoder_depth)
        self.apply(_init_weights)
        if self.residual:
            # a zero tendency at start: the untrained model is exactly persistence
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

    def _build_embeddings(self, vocab: int, history: int, dim: int, heads: int, scale: float | None) -> None:
        p = self.patch
        fan_in = history * p * p
        self.patch_weight = nn.Parameter(torch.randn(vocab, fan_in, dim) / math.sqrt(fan_in))
        self.patch_bias = nn.Parameter(torch.zeros(vocab, dim))
        self.var_embed = nn.Parameter(_sincos_1d(dim, torch.arange(vocab, dtype=torch.float32)))
        self.var_query = nn.Parameter(torch.zeros(1, 1, dim))
        self.var_agg = VariablePool(dim, heads, scale)
        h, w = self.padded[0] // p, self.padded[1] // p
        self.register_buffer("pos_embed", _sincos_2d(dim, h, w))
        self.lead_embed = nn.Linear(1, dim)

    def _build_head(self, vocab: int, dim: int, decoder_depth: int) -> None:
        layers: list[nn.Module] = []
        for _ in range(decoder_depth):
            layers += [nn.Linear(dim, dim), nn.GELU()]
        layers.append(nn.Linear(dim, vocab * self.patch * self.patch))
        self.head = nn.Sequential(*layers)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.predict(batch["inputs"], batch["lead_hours"])

    def predict(self, inputs: torch.Tensor, lead_hours: torch.Tensor) -> torch.Tensor:
        """Normalised fields at ``lead_hours`` after the last input step."""
        tokens = self._tokenize(inputs) + self.var_embed[self.in_ids][None, :, None, :]
        x = self._aggregate(tokens)
        lead = self.lead_embed((lead_hours.to(x.dtype) / 24.0)[:, None])
        x = x + self.pos_embed + lead[:, None, :]
        for block in self.blocks:
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        out = self._unpatchify(self.head(self.norm(x)))
        if self.residual:
            out = out + inputs[:, -1, self.out_in_pos]
        return out

    def _tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """[b, T, V, H, W] -> [b, V, L, D] with one set of patch weights per variable."""
        b, t, v, hh, ww = x.shape
        if (hh, ww) != self.grid:
            raise ValueError(f"ClimaX inputs: grid {(hh, ww)} differs from model.grid {self.grid}")
        p = self.patch
        x = pad_to_multiple(x, self.padded, self.poles)
        hh, ww = self.padded
        x = x.reshape(b, t, v, hh // p, p, ww // p, p).permute(0, 2, 3, 5, 1, 4, 6)
        patches = x.reshape(b, v, (hh // p) * (ww // p), t * p * p)
        tokens = torch.einsum("bvlk,vkd->bvld", patches, self.patch_weight[self.in_ids])
        return tokens + self.patch_bias[self.in_ids][None, :, None, :]

    def _aggregate(self, tokens: torch.Tensor) -> torch.Tensor:
        """Cross-attention of a learned query over the variables of each patch: [b, V, L, D] -> [b, L, D]."""
        b, v, n, d = tokens.shape
        kv = tokens.permute(0, 2, 1, 3).reshape(b * n, v, d)
        out = self.var_agg(self.var_query, kv)
        return out.reshape(b, n, d)

    def _unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[b, L, vocab * p * p] -> [b, V_out, H, W] for the output variables, cropped to the data grid."""
        p, (hh, ww) = self.patch, self.padded
        b = x.shape[0]
        x = x.reshape(b, hh // p, ww // p, -1, p, p)[:, :, :, self.out_ids]
        x = x.permute(0, 3, 1, 4, 2, 5).reshape(b, -1, hh, ww)
        top = (hh - self.grid[0]) // 2
        return x[..., top:top + self.grid[0], : self.grid[1]]


def pad_to_multiple(x: torch.Tensor, padded: tuple[int, int], poles: bool) -> torch.Tensor:
    """[..., H, W] -> [..., *padded]: latitude rows continued across the poles (split between the two ends,
    the extra one at the south), longitude wrapped at the east end."""
    h, w = x.shape[-2:]
    rows, cols = padded[0] - h, padded[1] - w
    if rows:
        top = rows // 2
        x = torch.cat([_over_pole(x, top, poles, north=True), x, _over_pole(x, rows - top, poles, north=False)],
                      dim=-2)
    if cols:
        x = torch.cat([x, x[..., :cols]], dim=-1)
    return x


def _over_pole(x: torch.Tensor, rows: int, poles: bool, north: bool) -> torch.Tensor:
    """The ``rows`` rows beyond the first (north) or last (south) latitude, nearest the pole last/first."""
    skip = 1 if poles else 0  # a pole row is its own mirror image; on a pole-free grid the edge row is
    mirror = x[..., skip:skip + rows, :] if north else x[..., x.shape[-2] - skip - rows:x.shape[-2] - skip, :]
    return torch.roll(mirror.flip(-2), shifts=x.shape[-1] // 2, dims=-1)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """[n] positions -> [n, dim] sin-cos features (the transformer's fixed embedding)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float32) / (dim / 2))
    angles = pos[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def _sincos_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """[1, h*w, dim]: half of the channels encode the row, half the column (as in MAE/ClimaX)."""
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
    emb = torch.cat([_sincos_1d(dim // 2, rows.flatten()), _sincos_1d(dim // 2, cols.flatten())], dim=1)
    return emb[None]


def build_climax(spec: WeatherModelSpec) -> ClimaX:
    """The ClimaX model of ``spec`` (muP applied when ``model.mup`` is set: models/mup.py)."""
    if spec.mup is not None:
        from models.mup import parametrize

        return parametrize(ClimaX(spec), spec, ClimaX)
    return ClimaX(spec)
