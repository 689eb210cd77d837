"""The FLUX.2 transformer in the BFL layout, computing in the order ai-toolkit's own model does.

ai-toolkit 0.12.26 never runs Diffusers' `Flux2Transformer2DModel`: `flux2_model.py:Flux2Model.load_model` builds its
`extensions_built_in/diffusion_models/flux2/src/model.py:Flux2` and loads the BFL single file into it. That model
keeps the fused layers (`img_attn.qkv`, `txt_attn.qkv`, a single block's `linear1` = qkv | mlp-in) and its own
RoPE, modulation and QK-norm code. In fp32 Diffusers' split modules give the same pixels; in bf16 they round
differently (measured on tiny klein-4B: up to 51 levels). So this module reproduces that model's arithmetic,
operation for operation, with these facts (written here, not copied):
- parameters have the BFL names (`double_blocks.N.img_attn.qkv`, `single_blocks.N.linear1`, `…norm.query_norm.scale`,
  `double_stream_modulation_img.lin`, `final_layer.adaLN_modulation.1` …), no biases anywhere;
- `timestep_embedding(t·1000, 256)`: fp32 frequencies `exp(-ln(10000)·i/128)`, cos then sin, cast to t's dtype;
  `time_in` (and `guidance_in` for FLUX.2-dev) = Linear → SiLU → Linear; all blocks share one modulation:
  `lin(silu(vec))` split into 6 (double, img and txt each) or 3 (single) chunks of (shift, scale, gate);
- LayerNorm without affine, eps 1e-6; x·(1 + scale) + shift; QK RMSNorm in fp32 (eps 1e-6), cast back, times the
  scale, then `.to(v)`; RoPE on fp32 (cos, -sin, sin, cos) 2×2 blocks per pair, applied in fp32, cast back;
  SDPA over txt|img tokens; SwiGLU `silu(a)·b` of the two halves;
- single blocks: `linear1` → [qkv | mlp], `linear2(cat(attn, swiglu(mlp)))`; output = x + gate·out;
- final layer: `(1 + scale)·LN(x) + shift` with (shift, scale) = `adaLN_modulation.1(silu(vec))`, then `linear`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

EPS = 1e-6


@dataclass(frozen=True)
class Flux2Params:
    """The sizes of one FLUX.2 transformer (ai-toolkit: `Flux2Params`, `Klein4BParams`, `Klein9BParams`)."""
    in_channels: int = 128
    context_in_dim: int = 15360
    hidden_size: int = 6144
    num_heads: int = 48
    depth: int = 8
    depth_single_blocks: int = 48
    axes_dim: tuple = (32, 32, 32, 32)
    theta: int = 2000
    mlp_ratio: float = 3.0
    use_guidance_embed: bool = True
    extra: dict = field(default_factory=dict, compare=False)


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: int = 10000, factor: float = 1000.0):
    t = factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return emb.to(t) if torch.is_floating_point(t) else emb


def rope(pos: torch.Tensor, dim: int, theta: int) -> torch.Tensor:
    """[..., n] positions → [..., n, dim/2, 2, 2] rotation blocks (fp32)."""
    scale = torch.arange(0, dim, 2, dtype=pos.dtype, device=pos.device) / dim
    omega = 1.0 / (theta ** scale)
    angles = torch.einsum("...n,d->...nd", pos, omega)
    blocks = torch.stack([torch.cos(angles), -torch.sin(angles), torch.sin(angles), torch.cos(angles)], dim=-1)
    return blocks.view(*blocks.shape[:-1], 2, 2).float()


def apply_rope(q: torch.Tensor, k: torch.Tensor, pe: torch.Tensor):
    def rotate(x):
        pairs = x.float().reshape(*x.shape[:-1], -1, 1, 2)
        out = pe[..., 0] * pairs[..., 0] + pe[..., 1] * pairs[..., 1]
        return out.reshape(*x.shape).type_as(x)
    return rotate(q), rotate(k)


def attention(q, k, v, pe):
    q, k = apply_rope(q, k, pe)
    x = F.scaled_dot_product_attention(q, k, v)
    b, h, length, d = x.shape
    return x.permute(0, 2, 1, 3).reshape(b, length, h * d)


def split_heads(qkv: torch.Tensor, heads: int):
    """[B, L, 3·H·D] → q, k, v as [B, H, L, D]."""
    b, length, width = qkv.shape
    parts = qkv.view(b, length, 3, heads, width // (3 * heads)).permute(2, 0, 3, 1, 4)
    return parts[0], parts[1], parts[2]


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        return (x * torch.rsqrt(torch.mean(x ** 2, dim=-1, keepdim=True) + EPS)).to(dtype=dtype) * self.scale


class QKNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.query_norm = RMSNorm(dim)
        self.key_norm = RMSNorm(dim)

    def forward(self, q, k, v):
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


class SwiGLU(nn.Module):
    def forward(self, x):
        a, b = x.chunk(2, dim=-1)
        return F.silu(a) * b


def _layer_norm(x):
    return F.layer_norm(x, (x.shape[-1],), eps=EPS)


class Attention(nn.Module):
    """One stream's fused qkv, QK-norm and output projection (BFL `SelfAttention`)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.norm = QKNorm(dim // heads)
        self.proj = nn.Linear(dim, dim, bias=False)


def _mlp(dim: int, hidden: int):
    return nn.Sequential(nn.Linear(dim, 2 * hidden, bias=False), SwiGLU(), nn.Linear(hidden, dim, bias=False))


class DoubleBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_hidden: int):
        super().__init__()
        self.heads = heads
        self.img_attn = Attention(dim, heads)
        self.img_mlp = _mlp(dim, mlp_hidden)
        self.txt_attn = Attention(dim, heads)
        self.txt_mlp = _mlp(dim, mlp_hidden)

    def _qkv(self, stream: Attention, x, shift, scale):
        q, k, v = split_heads(stream.qkv((1 + scale) * _layer_norm(x) + shift), self.heads)
        q, k = stream.norm(q, k, v)
        return q, k, v

    def forward(self, img, txt, pe_img, pe_txt, mod_img, mod_txt):
        (i_shift1, i_scale1, i_gate1), (i_shift2, i_scale2, i_gate2) = mod_img
        (t_shift1, t_scale1, t_gate1), (t_shift2, t_scale2, t_gate2) = mod_txt
        iq, ik, iv = self._qkv(self.img_attn, img, i_shift1, i_scale1)
        tq, tk, tv = self._qkv(self.txt_attn, txt, t_shift1, t_scale1)
        joint = attention(torch.cat((tq, iq), dim=2), torch.cat((tk, ik), dim=2), torch.cat((tv, iv), dim=2),
                          torch.cat((pe_txt, pe_img), dim=2))
        n_txt = tq.shape[2]
        txt_out, img_out = joint[:, :n_txt], joint[:, n_txt:]
        img = img + i_gate1 * self.img_attn.proj(img_out)
        img = img + i_gate2 * self.img_mlp((1 + i_scale2) * _layer_norm(img) + i_shift2)
        txt = txt + t_gate1 * self.txt_attn.proj(txt_out)
        txt = txt + t_gate2 * self.txt_mlp((1 + t_scale2) * _layer_norm(txt) + t_shift2)
        return img, txt


class SingleBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_hidden: int):
        super().__init__()
        self.heads, self.dim, self.mlp_hidden = heads, dim, mlp_hidden
        self.linear1 = nn.Linear(dim, 3 * dim + 2 * mlp_hidden, bias=False)
        self.linear2 = nn.Linear(dim + mlp_hidden, dim, bias=False)
        self.norm = QKNorm(dim // heads)
        self.act = SwiGLU()

    def forward(self, x, pe, mod):
        shift, scale, gate = mod
        qkv, mlp = torch.split(self.linear1((1 + scale) * _layer_norm(x) + shift),
                               [3 * self.dim, 2 * self.mlp_hidden], dim=-1)
        q, k, v = split_heads(qkv, self.heads)
        q, k = self.norm(q, k, v)
        out = self.linear2(torch.cat((attention(q, k, v, pe), self.act(mlp)), 2))
        return x + gate * out


class Modulation(nn.Module):
    def __init__(self, dim: int, chunks: int):
        super().__init__()
        self.chunks = chunks
        self.lin = nn.Linear(dim, chunks * dim, bias=False)

    def forward(self, vec):
        out = self.lin(F.silu(vec))
        if out.ndim == 2:
            out = out[:, None, :]
        parts = out.chunk(self.chunks, dim=-1)
        return (parts[:3], parts[3:]) if self.chunks == 6 else parts[:3]


class Embedder(nn.Module):
    def __init__(self, dim_in: int, dim: int):
        super().__init__()
        self.in_layer = nn.Linear(dim_in, dim, bias=False)
        self.out_layer = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        return self.out_layer(F.silu(self.in_layer(x)))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_channels: int):
        super().__init__()
        self.linear = nn.Linear(dim, out_channels, bias=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=False))

    def forward(self, x, vec):
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=-1)
        if shift.ndim == 2:
            shift, scale = shift[:, None, :], scale[:, None, :]
        return self.linear((1 + scale) * _layer_norm(x) + shift)


class Flux2Transformer(nn.Module):
    """FLUX.2 (dev, klein 4B/9B) in the BFL layout. `forward(x, x_ids, timesteps, ctx, ctx_ids, guidance)` on packed
    tokens [B, L, C] with 4-axis integer positions, timesteps in 0..1."""

    def __init__(self, params: Flux2Params):
        super().__init__()
        dim, heads = params.hidden_size, params.num_heads
        if dim % heads or sum(params.axes_dim) != dim // heads:
            raise ValueError(f"FLUX.2 sizes do not fit: hidden {dim}, heads {heads}, RoPE axes {params.axes_dim}")
        self.params = params
        mlp_hidden = int(dim * params.mlp_ratio)
        self.img_in = nn.Linear(params.in_channels, dim, bias=False)
        self.time_in = Embedder(256, dim)
        self.txt_in = nn.Linear(params.context_in_dim, dim, bias=False)
        if params.use_guidance_embed:
            self.guidance_in = Embedder(256, dim)
        self.double_blocks = nn.ModuleList(DoubleBlock(dim, heads, mlp_hidden) for _ in range(params.depth))
        self.single_blocks = nn.ModuleList(SingleBlock(dim, heads, mlp_hidden)
                                           for _ in range(params.depth_single_blocks))
        self.double_stream_modulation_img = Modulation(dim, 6)
        self.double_stream_modulation_txt = Modulation(dim, 6)
        self.single_stream_modulation = Modulation(dim, 3)
        self.final_layer = FinalLayer(dim, params.in_channels)

    @property
    def dtype(self):
        return next(self.parameters()).dtype

    @property
    def device(self):
        return next(self.parameters()).device

    def positions(self, ids: torch.Tensor) -> torch.Tensor:
        axes = self.params.axes_dim
        return torch.cat([rope(ids[..., i], axes[i], self.params.theta) for i in range(len(axes))],
                         dim=-3).unsqueeze(1)

    def forward(self, x, x_ids, timesteps, ctx, ctx_ids, guidance=None):
        n_txt = ctx.shape[1]
        vec = self.time_in(timestep_embedding(timesteps))
        if self.params.use_guidance_embed:
            vec = vec + self.guidance_in(timestep_embedding(guidance))
        mod_img = self.double_stream_modulation_img(vec)
        mod_txt = self.double_stream_modulation_txt(vec)
        mod_single = self.single_stream_modulation(vec)
        img, txt = self.img_in(x), self.txt_in(ctx)
        pe_img, pe_txt = self.positions(x_ids), self.positions(ctx_ids)
        for block in self.double_blocks:
            img, txt = block(img, txt, pe_img, pe_txt, mod_img, mod_txt)
        hidden = torch.cat((txt, img), dim=1)
        pe = torch.cat((pe_txt, pe_img), dim=2)
        for block in self.single_blocks:
            hidden = block(hidden, pe, mod_single)
        return self.final_layer(hidden[:, n_txt:, ...], vec)
