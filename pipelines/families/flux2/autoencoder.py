"""The FLUX.2 VAE in the BFL layout (`ae.safetensors`), computing as ai-toolkit's own `src/autoencoder.py:AutoEncoder`.

ai-toolkit loads `ae.safetensors` into its BFL `AutoEncoder` (`Flux2Model.load_model`) and decodes previews with
`AutoEncoder.decode`; reference images go through `AutoEncoder.encode` (`src/sampling.py:encode_image_refs`).
Diffusers' `AutoencoderKLFlux2` has the same weights, but its attention (Linear q/k/v, its processor) and its latent
normalisation round differently (measured on a tiny VAE: 8 levels in bf16, ~1e-6 in fp32). Facts reproduced here:
- LDM layout: conv_in, `down.N.block.M` ResNets (GroupNorm(32, eps 1e-6) → x·sigmoid(x) → 3×3 conv, twice; 1×1
  `nin_shortcut` when widths differ; `x + h`), `downsample` = zero pad (0,1,0,1) + stride-2 conv; `mid.block_1`,
  `mid.attn_1` (GroupNorm, 1×1 conv q/k/v, SDPA over the h·w positions as one head, 1×1 `proj_out`, residual),
  `mid.block_2`; norm_out → swish → conv_out → `quant_conv` (encoder) / `post_quant_conv` → conv_in … (decoder);
  `up.N.upsample` = nearest ×2 + conv, levels walked from the last;
- encode: the mean half of the moments, 2×2 patchified to 4·z channels, then `BatchNorm2d` in eval mode (eps 1e-4,
  running stats); decode: `z·sqrt(var + 1e-4) + mean`, unpatchify, decoder.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

BN_EPS = 1e-4


@dataclass(frozen=True)
class AutoEncoderParams:
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    decoder_ch: int = 128
    ch_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 32
    groups: int = 32


def _swish(x):
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6, affine=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6, affine=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1, 1, 0)

    def forward(self, x):
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch, eps=1e-6, affine=True)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape

        def tokens(t):
            return t.reshape(b, c, hh * ww).permute(0, 2, 1).unsqueeze(1).contiguous()
        out = F.scaled_dot_product_attention(tokens(q), tokens(k), tokens(v))
        out = out.squeeze(1).permute(0, 2, 1).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(ch, groups):
    mid = nn.Module()
    mid.block_1 = ResnetBlock(ch, ch, groups)
    mid.attn_1 = AttnBlock(ch, groups)
    mid.block_2 = ResnetBlock(ch, ch, groups)
    return mid


def _run_mid(mid, h):
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, p: AutoEncoderParams):
        super().__init__()
        g = p.groups
        self.conv_in = nn.Conv2d(p.in_channels, p.ch, 3, 1, 1)
        self.down = nn.ModuleList()
        cin = p.ch
        for level, mult in enumerate(p.ch_mult):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(p.num_res_blocks):
                stage.block.append(ResnetBlock(cin, p.ch * mult, g))
                cin = p.ch * mult
            if level != len(p.ch_mult) - 1:
                stage.downsample = Downsample(cin)
            self.down.append(stage)
        self.mid = _mid(cin, g)
        self.norm_out = nn.GroupNorm(g, cin, eps=1e-6, affine=True)
        self.conv_out = nn.Conv2d(cin, 2 * p.z_channels, 3, 1, 1)
        self.quant_conv = nn.Conv2d(2 * p.z_channels, 2 * p.z_channels, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for stage in self.down:
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = _run_mid(self.mid, h)
        return self.quant_conv(self.conv_out(_swish(self.norm_out(h))))


class Decoder(nn.Module):
    def __init__(self, p: AutoEncoderParams):
        super().__init__()
        g, ch = p.groups, p.decoder_ch
        cin = ch * p.ch_mult[-1]
        self.post_quant_conv = nn.Conv2d(p.z_channels, p.z_channels, 1)
        self.conv_in = nn.Conv2d(p.z_channels, cin, 3, 1, 1)
        self.mid = _mid(cin, g)
        stages = []
        for level in reversed(range(len(p.ch_mult))):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(p.num_res_blocks + 1):
                stage.block.append(ResnetBlock(cin, ch * p.ch_mult[level], g))
                cin = ch * p.ch_mult[level]
            if level != 0:
                stage.upsample = Upsample(cin)
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)
        self.norm_out = nn.GroupNorm(g, cin, eps=1e-6, affine=True)
        self.conv_out = nn.Conv2d(cin, p.out_channels, 3, 1, 1)

    def forward(self, z):
        h = _run_mid(self.mid, self.conv_in(self.post_quant_conv(z)))
        h = h.to(next(self.up.parameters()).dtype)
        for stage in reversed(self.up):
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Flux2AutoEncoder(nn.Module):
    """`encode(images in -1..1)` → normalised 4·z-channel latents at 1/16 size; `decode` the inverse."""

    def __init__(self, params: AutoEncoderParams):
        super().__init__()
        self.params = params
        self.encoder = Encoder(params)
        self.decoder = Decoder(params)
        self.bn = nn.BatchNorm2d(4 * params.z_channels, eps=BN_EPS, momentum=0.1, affine=False,
                                 track_running_stats=True)

    @property
    def dtype(self):
        return next(self.parameters()).dtype

    @property
    def device(self):
        return next(self.parameters()).device

    def encode(self, x):
        mean = torch.chunk(self.encoder(x), 2, dim=1)[0]
        b, c, h, w = mean.shape
        z = mean.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)
        self.bn.eval()
        return self.bn(z)

    def decode(self, z):
        self.bn.eval()
        z = z * torch.sqrt(self.bn.running_var.view(1, -1, 1, 1) + BN_EPS) + self.bn.running_mean.view(1, -1, 1, 1)
        b, c4, h, w = z.shape
        c = c4 // 4
        z = z.reshape(b, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c, h * 2, w * 2)
        return self.decoder(z)
