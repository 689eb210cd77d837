"""Independent references for FLUX.2 previews (never the pack's code).

1. `preview_diffusers`: plain Diffusers (`Flux2KleinPipeline` / `Flux2Pipeline` from the saved folder) called with
   ai-toolkit's settings, from the facts of research/flow-families.md "FLUX.2-klein-base-4B": the schedule
   `get_schedule` gives (passed as `sigmas` = schedule[:-1] to a static shift-1 FlowMatch scheduler, so Diffusers'
   `compute_empirical_mu` has no effect), the encoded negative as `negative_prompt_embeds` (klein; the pipeline has no
   `negative_prompt`), no negative for dev, embeds as ai-toolkit encodes them, CPU generator seeded with the seed;
   a LoRA in ai-toolkit's BFL layout merged onto Diffusers' split modules here by rows of B@A (fp32, one rounding).
   Exact to ai-toolkit's preview in fp32; in bf16 Diffusers' split layers round differently (measured, not exact).
2. `AitkFlux2`: ai-toolkit's OWN flux2 code (`extensions_built_in/diffusion_models/flux2/src/*.py` at the pinned
   commit, read with `git show` from the bare mirror into a temp package) driven as `Flux2Model.generate_single_image`
   drives it, with the tiny weights in its BFL layout and the LoRA merged as `merge_in` does on its fused layers.
   Only where the mirror exists (not in CI): `available()` says so.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

MIRROR = os.environ.get("AITK_MIRROR", "/work/.mirror/ostris+ai-toolkit/repo")
AITK_COMMIT = "27a03a91"
SRC = "extensions_built_in/diffusion_models/flux2/src"
QWEN_LAYERS, MISTRAL_LAYERS = (9, 18, 27), (10, 20, 30)


def to_uint8(images) -> np.ndarray:
    return (np.asarray(images) * 255).round().astype(np.uint8)


def aitk_schedule(steps: int, seq_len: int) -> list[float]:
    """`sampling.py:get_schedule` from its facts: linspace(1, 0, n+1), exp(mu)/(exp(mu) + 1/t - 1)."""
    m = (1.15 - 0.5) / (4096 - 256)
    mu = m * seq_len + (0.5 - m * 256)
    t = torch.linspace(1, 0, steps + 1)
    return (math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** 1.0)).tolist()


# ----------------------------------------------------------------------------- 1. plain Diffusers
def load_diffusers(folder: str, dtype):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def merge_split(transformer, state_dict: dict, strength: float) -> int:
    """ai-toolkit's BFL-layout LoRA onto Diffusers' split modules: each takes its rows of the fused B@A; returns
    the number of Diffusers modules changed."""
    split = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
             "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
             "img_attn.proj": ("attn.to_out.0",), "img_mlp.0": ("ff.linear_in",), "img_mlp.2": ("ff.linear_out",),
             "txt_attn.proj": ("attn.to_add_out",), "txt_mlp.0": ("ff_context.linear_in",),
             "txt_mlp.2": ("ff_context.linear_out",), "linear1": ("attn.to_qkv_mlp_proj",),
             "linear2": ("attn.to_out",)}
    changed = 0
    with torch.no_grad():
        for key, a in state_dict.items():
            if not key.endswith(".lora_A.weight"):
                continue
            b = state_dict[key.replace("lora_A", "lora_B")]
            name = key[len("diffusion_model."):-len(".lora_A.weight")]
            kind, i, layer = name.split(".", 2)
            block = "transformer_blocks" if kind == "double_blocks" else "single_transformer_blocks"
            delta = strength * (b.float() @ a.float())  # alpha = rank (peft, no .alpha): scale 1
            start = 0
            for part in split[layer]:
                linear = transformer.get_submodule(f"{block}.{i}.{part}")
                rows = linear.weight.shape[0]
                linear.weight.copy_((linear.weight.float() + delta[start:start + rows]).to(linear.weight.dtype))
                start += rows
                changed += 1
            assert start == delta.shape[0], key
    return changed


def encode(pipe, prompt: str, mistral: bool):
    if mistral:
        return pipe._get_mistral_3_small_prompt_embeds(pipe.text_encoder, pipe.tokenizer, [prompt],
                                                       max_sequence_length=512, hidden_states_layers=MISTRAL_LAYERS)
    return pipe._get_qwen3_prompt_embeds(pipe.text_encoder, pipe.tokenizer, [prompt], max_sequence_length=512,
                                         hidden_states_layers=QWEN_LAYERS)


def preview_diffusers(pipe, prompt, negative, seed, steps, guidance, width, height) -> np.ndarray:
    """ai-toolkit's preview with a plain Diffusers FLUX.2 pipeline (uint8 [H, W, 3])."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    mistral = type(pipe).__name__ == "Flux2Pipeline"
    dtype = pipe.transformer.dtype
    width, height = width // 16 * 16, height // 16 * 16
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    with torch.no_grad():
        kwargs = dict(prompt_embeds=encode(pipe, prompt, mistral).to(dtype))
        if not mistral and guidance > 1:
            kwargs["negative_prompt_embeds"] = encode(pipe, negative, mistral).to(dtype)
        images = pipe(**kwargs, height=height, width=width, num_inference_steps=steps, guidance_scale=guidance,
                      sigmas=aitk_schedule(steps, (width // 16) * (height // 16))[:-1],
                      generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images
    return to_uint8(images)[0]


# ----------------------------------------------------------------------------- 2. ai-toolkit's own code
def available() -> bool:
    if not os.path.isdir(MIRROR):
        return False
    try:
        import einops  # noqa: F401
        import torchvision  # noqa: F401  (its sampling.py imports it at module level)
    except ImportError:
        return False
    return True


def _aitk_package():
    """ai-toolkit's flux2/src as an importable temp package (once per process)."""
    name = "aitk_flux2_src"
    if name in sys.modules:
        return sys.modules[name]
    folder = tempfile.mkdtemp(prefix="aitk_flux2_")
    os.makedirs(os.path.join(folder, name))
    for f in ("__init__", "autoencoder", "model", "pipeline", "sampling"):
        text = subprocess.run(["git", "-C", MIRROR, "show", f"{AITK_COMMIT}:{SRC}/{f}.py"], check=True,
                              capture_output=True, text=True).stdout
        with open(os.path.join(folder, name, f + ".py"), "w", encoding="utf-8") as out:
            out.write(text)
    sys.path.insert(0, folder)
    import importlib

    for sub in ("model", "autoencoder", "sampling", "pipeline"):
        importlib.import_module(f"{name}.{sub}")
    return sys.modules[name]


class AitkFlux2:
    """ai-toolkit's Flux2Pipeline + Flux2 + AutoEncoder on BFL-layout tiny weights, in `dtype`."""

    def __init__(self, transformer_sd: dict, vae_sd: dict, vae_config, text_encoder, tokenizer, kind: str, dtype):
        pkg = _aitk_package()
        model, ae, pipeline = pkg.model, pkg.autoencoder, pkg.pipeline
        hidden, in_ch = transformer_sd["img_in.weight"].shape
        head = transformer_sd["double_blocks.0.img_attn.norm.query_norm.scale"].shape[0]
        params = model.Flux2Params(
            in_channels=in_ch, context_in_dim=transformer_sd["txt_in.weight"].shape[1], hidden_size=hidden,
            num_heads=hidden // head, depth=len({k.split(".")[1] for k in transformer_sd if k.startswith("double_blocks.")}),
            depth_single_blocks=len({k.split(".")[1] for k in transformer_sd if k.startswith("single_blocks.")}),
            axes_dim=[head // 4] * 4, use_guidance_embed="guidance_in.in_layer.weight" in transformer_sd)
        with torch.device("meta"):
            self.transformer = model.Flux2(params)
        self.transformer.load_state_dict({k: v.to(dtype) for k, v in transformer_sd.items()}, assign=True)
        chans = list(vae_config["block_out_channels"])
        with torch.device("meta"):
            self.vae = ae.AutoEncoder(ae.AutoEncoderParams(
                resolution=64, ch=chans[0], ch_mult=[c // chans[0] for c in chans],
                num_res_blocks=vae_config["layers_per_block"], z_channels=vae_config["latent_channels"]))
        self.vae.load_state_dict({k: v.to(dtype) for k, v in vae_sd.items()}, assign=True)
        text_encoder = text_encoder.to(dtype)
        text_encoder.requires_grad_(False)
        self.pipe = pipeline.Flux2Pipeline(scheduler=None, vae=self.vae, text_encoder=text_encoder,
                                           tokenizer=tokenizer, transformer=None, text_encoder_type=kind,
                                           is_guidance_distilled=kind == "mistral")
        self.pipe.transformer = self.transformer
        self.pipe.num_channels_latents = in_ch
        self.pipe.set_progress_bar_config(disable=True)
        for m in (self.transformer, self.vae):
            m.requires_grad_(False)
        self.dtype, self.kind = dtype, kind

    def merge(self, state_dict: dict, strength: float) -> int:
        """`network_mixins.py:merge_in` on the fused layers: W' = (W.float() + m·(B.float() @ A.float())·1).to(W)."""
        n = 0
        with torch.no_grad():
            for key, a in state_dict.items():
                if key.endswith(".lora_A.weight"):
                    b = state_dict[key.replace("lora_A", "lora_B")]
                    layer = self.transformer.get_submodule(key[len("diffusion_model."):-len(".lora_A.weight")])
                    w = layer.weight
                    w.copy_((w.float() + strength * (b.float() @ a.float()) * 1.0).to(w.dtype))
                    n += 1
        return n

    def quantize(self) -> None:
        """qfloat8 as `Flux2Model.load_model` does (`quantize_model`: each double/single block, then the whole
        transformer, no exclusions) and `Flux2KleinModel.load_te` (`quantize(text_encoder, qfloat8)`), frozen."""
        from optimum.quanto import freeze, qfloat8, quantize

        for block in (*self.transformer.double_blocks, *self.transformer.single_blocks):
            quantize(block, weights=qfloat8)
            freeze(block)
        # ai-toolkit's quantize() skips modules that are already quantized: here the blocks
        quantize(self.transformer, weights=qfloat8, exclude=["double_blocks*", "single_blocks*"])
        freeze(self.transformer)
        quantize(self.pipe.text_encoder, weights=qfloat8)
        freeze(self.pipe.text_encoder)

    def branch(self, state_dict: dict, strength: float) -> int:
        """The unmerged fp32 side branch ai-toolkit runs on a quantized base (`ToolkitModuleMixin.forward`)."""
        from tests.reference_flux import _Branch

        n = 0
        for key, a in state_dict.items():
            if key.endswith(".lora_A.weight"):
                layer = self.transformer.get_submodule(key[len("diffusion_model."):-len(".lora_A.weight")])
                branch = _Branch(layer.forward, a, state_dict[key.replace("lora_A", "lora_B")], strength)
                layer._aitk_branch = branch
                layer.forward = branch.forward
                n += 1
        return n

    def preview(self, prompt, negative, seed, steps, guidance, width, height, controls=()) -> np.ndarray:
        """`Flux2Model.generate_single_image` (after `generate_images` encoded both prompts and cast them)."""
        width, height = width // 16 * 16, height // 16 * 16
        extra = {}
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            cond, _ = self.pipe.encode_prompt(prompt, device=torch.device("cpu"))
            if self.kind != "mistral":
                uncond, _ = self.pipe.encode_prompt(negative, device=torch.device("cpu"))
                extra["negative_prompt_embeds"] = uncond.to(self.dtype)
            images = self.pipe(prompt_embeds=cond.to(self.dtype), height=height, width=width,
                               num_inference_steps=steps, guidance_scale=guidance, latents=None,
                               generator=torch.manual_seed(seed), control_img_list=[c.convert("RGB") for c in controls],
                               output_type="np", **extra).images
        return to_uint8(images)[0]


# ----------------------------------------------------------------------------- 3. hand-written BFL-layout reference
class HandFlux2:
    """ai-toolkit's FLUX.2 preview written out by hand on the BFL state dicts (functional style, from the facts in
    this module's docstring and flow-families.md; shares no code with the pack): the fused-layer transformer, the
    LDM VAE, the schedule, true CFG / guidance embedding, reference images, Euler. Text embeds come from Diffusers'
    encoders (identical to ai-toolkit's). Runs in CI; equals ai-toolkit's own code in fp32 and bf16."""

    def __init__(self, folder: str, dtype, lora: dict | None = None, strength: float = 1.0,
                 quantized: bool = False, deltas: dict | None = None):
        """`lora`: an ai-toolkit FLUX.2 LoRA file's tensors, merged at `strength` (or, on a `quantized` base, run as
        ai-toolkit's unmerged fp32 side branch). `quantized`: qfloat8 as `Flux2Model.load_model` /
        `Flux2KleinModel.load_te` do it (every Linear of the transformer, no exclusions; the text encoder), with
        optimum-quanto, the library ai-toolkit quantizes with. `deltas`: BFL weight name -> fp32 term merged into
        that weight with one rounding (e.g. a LoKr's `m * kron(w1, w2) * scale`)."""
        from tests.fixtures import tiny_flux2

        self.pipe = load_diffusers(folder, torch.float32)
        self.t = {k: v.to(dtype) for k, v in tiny_flux2.bfl_transformer_state_dict(self.pipe.transformer).items()}
        self.v = {k: v.to(dtype) for k, v in tiny_flux2.bfl_vae_state_dict(self.pipe.vae).items()}
        self.pipe.text_encoder.to(dtype)
        self.dtype, self.mistral = dtype, type(self.pipe).__name__ == "Flux2Pipeline"
        self.heads = self.t["img_in.weight"].shape[0] // self.t["double_blocks.0.img_attn.norm.query_norm.scale"].shape[0]
        for name, delta in (deltas or {}).items():
            self.t[name] = (self.t[name].float() + delta).to(dtype)
        self.q = self._quantized_linears() if quantized else {}
        for key, a in (lora or {}).items():  # merge_in on the fused weights, one rounding
            if key.endswith(".lora_A.weight"):
                name = key[len("diffusion_model."):-len(".lora_A.weight")]
                b = lora[key.replace("lora_A", "lora_B")]
                if quantized:
                    from tests.reference_flux import _Branch

                    layer = self.q[name]
                    layer._aitk_branch = _Branch(layer.forward, a, b, strength)
                    layer.forward = layer._aitk_branch.forward
                else:
                    self.t[name + ".weight"] = (self.t[name + ".weight"].float()
                                                + strength * (b.float() @ a.float()) * 1.0).to(dtype)

    def _quantized_linears(self) -> dict:
        """Each Linear weight (2-D, no bias in FLUX.2) as an optimum-quanto qfloat8 `QLinear`, frozen; and the text
        encoder quantized the same way."""
        from optimum.quanto import freeze, qfloat8, quantize

        out = {}
        for key, w in self.t.items():
            if key.endswith(".weight") and w.ndim == 2:
                holder = torch.nn.Module()
                holder.linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype)
                holder.linear.weight.data.copy_(w)
                quantize(holder, weights=qfloat8)
                freeze(holder)
                out[key[: -len(".weight")]] = holder.linear
        quantize(self.pipe.text_encoder, weights=qfloat8)
        freeze(self.pipe.text_encoder)
        return out

    # -- transformer
    def _lin(self, x, name):
        if name in self.q:
            return self.q[name](x)
        return torch.nn.functional.linear(x, self.t[name + ".weight"])

    @staticmethod
    def _temb(t):
        t = 1000.0 * t
        freqs = torch.exp(-math.log(10000) * torch.arange(0, 128, dtype=torch.float32) / 128)
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t)

    def _rope(self, ids):
        d = self.t["double_blocks.0.img_attn.norm.query_norm.scale"].shape[0] // 4
        outs = []
        for axis in range(4):
            pos = ids[..., axis]
            omega = 1.0 / (2000 ** (torch.arange(0, d, 2, dtype=pos.dtype) / d))
            ang = torch.einsum("...n,d->...nd", pos, omega)
            outs.append(torch.stack([ang.cos(), -ang.sin(), ang.sin(), ang.cos()], -1).reshape(*ang.shape, 2, 2).float())
        return torch.cat(outs, dim=-3).unsqueeze(1)

    @staticmethod
    def _ln(x):
        return torch.nn.functional.layer_norm(x, (x.shape[-1],), eps=1e-6)

    def _rms(self, x, name):
        xf = x.float()
        return (xf * torch.rsqrt(torch.mean(xf ** 2, dim=-1, keepdim=True) + 1e-6)).to(x.dtype) * self.t[name + ".scale"]

    def _attn(self, q, k, v, pe):
        def rot(x):
            p = x.float().reshape(*x.shape[:-1], -1, 1, 2)
            return (pe[..., 0] * p[..., 0] + pe[..., 1] * p[..., 1]).reshape(*x.shape).type_as(x)
        out = torch.nn.functional.scaled_dot_product_attention(rot(q), rot(k), v)
        return out.permute(0, 2, 1, 3).reshape(out.shape[0], out.shape[2], -1)

    def _heads(self, qkv, norm):
        b, n, _ = qkv.shape
        q, k, v = qkv.view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        return self._rms(q, norm + ".query_norm").to(v), self._rms(k, norm + ".key_norm").to(v), v

    @staticmethod
    def _glu(x):
        a, b = x.chunk(2, dim=-1)
        return torch.nn.functional.silu(a) * b

    def _mod(self, vec, name, n):
        out = self._lin(torch.nn.functional.silu(vec), name)[:, None, :].chunk(n, dim=-1)
        return out

    def transformer(self, x, x_ids, t, ctx, ctx_ids, g):
        vec = self._lin(torch.nn.functional.silu(self._lin(self._temb(t), "time_in.in_layer")), "time_in.out_layer")
        if "guidance_in.in_layer.weight" in self.t:
            vec = vec + self._lin(torch.nn.functional.silu(self._lin(self._temb(g), "guidance_in.in_layer")),
                                  "guidance_in.out_layer")
        mi, mt = self._mod(vec, "double_stream_modulation_img.lin", 6), self._mod(vec, "double_stream_modulation_txt.lin", 6)
        ms = self._mod(vec, "single_stream_modulation.lin", 3)
        img, txt = self._lin(x, "img_in"), self._lin(ctx, "txt_in")
        pe_i, pe_t = self._rope(x_ids), self._rope(ctx_ids)
        n_double = len({k.split(".")[1] for k in self.t if k.startswith("double_blocks.")})
        for i in range(n_double):
            p = f"double_blocks.{i}."
            iq, ik, iv = self._heads(self._lin((1 + mi[1]) * self._ln(img) + mi[0], p + "img_attn.qkv"), p + "img_attn.norm")
            tq, tk, tv = self._heads(self._lin((1 + mt[1]) * self._ln(txt) + mt[0], p + "txt_attn.qkv"), p + "txt_attn.norm")
            a = self._attn(torch.cat((tq, iq), 2), torch.cat((tk, ik), 2), torch.cat((tv, iv), 2), torch.cat((pe_t, pe_i), 2))
            ta, ia = a[:, : tq.shape[2]], a[:, tq.shape[2]:]
            img = img + mi[2] * self._lin(ia, p + "img_attn.proj")
            img = img + mi[5] * self._lin(self._glu(self._lin((1 + mi[4]) * self._ln(img) + mi[3], p + "img_mlp.0")), p + "img_mlp.2")
            txt = txt + mt[2] * self._lin(ta, p + "txt_attn.proj")
            txt = txt + mt[5] * self._lin(self._glu(self._lin((1 + mt[4]) * self._ln(txt) + mt[3], p + "txt_mlp.0")), p + "txt_mlp.2")
        h = torch.cat((txt, img), 1)
        pe = torch.cat((pe_t, pe_i), 2)
        dim = h.shape[-1]
        n_single = len({k.split(".")[1] for k in self.t if k.startswith("single_blocks.")})
        for i in range(n_single):
            p = f"single_blocks.{i}."
            y = self._lin((1 + ms[1]) * self._ln(h) + ms[0], p + "linear1")
            qkv, mlp = torch.split(y, [3 * dim, y.shape[-1] - 3 * dim], dim=-1)
            q, k, v = self._heads(qkv, p + "norm")
            h = h + ms[2] * self._lin(torch.cat((self._attn(q, k, v, pe), self._glu(mlp)), 2), p + "linear2")
        h = h[:, ctx.shape[1]:]
        shift, scale = self._lin(torch.nn.functional.silu(vec), "final_layer.adaLN_modulation.1").chunk(2, dim=-1)
        return self._lin((1 + scale[:, None]) * self._ln(h) + shift[:, None], "final_layer.linear")

    # -- VAE (LDM layout)
    def _conv(self, x, name, stride=1, pad=1):
        w = self.v[name + ".weight"]
        return torch.nn.functional.conv2d(x, w, self.v[name + ".bias"], stride, pad if w.shape[-1] == 3 else 0)

    def _gn(self, x, name):
        return torch.nn.functional.group_norm(x, 32, self.v[name + ".weight"], self.v[name + ".bias"], 1e-6)

    def _res(self, x, p):
        h = self._conv(torch.sigmoid(self._gn(x, p + "norm1")) * self._gn(x, p + "norm1"), p + "conv1")
        n2 = self._gn(h, p + "norm2")
        h = self._conv(n2 * torch.sigmoid(n2), p + "conv2")
        return (self._conv(x, p + "nin_shortcut") if p + "nin_shortcut.weight" in self.v else x) + h

    def _vattn(self, x, p):
        h = self._gn(x, p + "norm")
        b, c, hh, ww = x.shape
        q, k, v = (self._conv(h, p + n).reshape(b, c, hh * ww).transpose(1, 2)[:, None].contiguous() for n in "qkv")
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v)[:, 0].transpose(1, 2).reshape(b, c, hh, ww)
        return x + self._conv(o, p + "proj_out")

    def _mid(self, h, side):
        return self._res(self._vattn(self._res(h, f"{side}.mid.block_1."), f"{side}.mid.attn_1."), f"{side}.mid.block_2.")

    def _swish_out(self, h, side):
        n = self._gn(h, f"{side}.norm_out")
        return self._conv(n * torch.sigmoid(n), f"{side}.conv_out")

    def decode(self, z):
        bn_s = torch.sqrt(self.v["bn.running_var"].view(1, -1, 1, 1) + 1e-4)
        z = z * bn_s + self.v["bn.running_mean"].view(1, -1, 1, 1)
        b, c4, h, w = z.shape
        z = z.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c4 // 4, 2 * h, 2 * w)
        h = self._mid(self._conv(self._conv(z, "decoder.post_quant_conv"), "decoder.conv_in"), "decoder")
        levels = len({k.split(".")[2] for k in self.v if k.startswith("decoder.up.")})
        for lv in reversed(range(levels)):
            blocks = len({k.split(".")[4] for k in self.v if k.startswith(f"decoder.up.{lv}.block.")})
            for j in range(blocks):
                h = self._res(h, f"decoder.up.{lv}.block.{j}.")
            if f"decoder.up.{lv}.upsample.conv.weight" in self.v:
                h = self._conv(torch.nn.functional.interpolate(h, scale_factor=2.0, mode="nearest"), f"decoder.up.{lv}.upsample.conv")
        return self._swish_out(h, "decoder")

    def encode(self, x):
        h = self._conv(x, "encoder.conv_in")
        levels = len({k.split(".")[2] for k in self.v if k.startswith("encoder.down.")})
        for lv in range(levels):
            blocks = len({k.split(".")[4] for k in self.v if k.startswith(f"encoder.down.{lv}.block.")})
            for j in range(blocks):
                h = self._res(h, f"encoder.down.{lv}.block.{j}.")
            if f"encoder.down.{lv}.downsample.conv.weight" in self.v:
                h = self._conv(torch.nn.functional.pad(h, (0, 1, 0, 1)), f"encoder.down.{lv}.downsample.conv", 2, 0)
        m = self._conv(self._swish_out(self._mid(h, "encoder"), "encoder"), "encoder.quant_conv").chunk(2, dim=1)[0]
        b, c, hh, ww = m.shape
        z = m.reshape(b, c, hh // 2, 2, ww // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, hh // 2, ww // 2)
        return torch.nn.functional.batch_norm(z, self.v["bn.running_mean"], self.v["bn.running_var"], None, None,
                                              False, 0.1, 1e-4)

    # -- the preview
    def _ref_tokens(self, images):
        from PIL import Image

        toks, ids = [], []
        for i, img in enumerate(images):
            img = img.convert("RGB")
            w, h = img.size
            if w * h > 1024 ** 2:
                f = math.sqrt(1024 ** 2 / (w * h))
                img = img.resize((int(w * f), int(h * f)), Image.Resampling.LANCZOS)
                w, h = img.size
            l, tp = (w - w // 16 * 16) // 2, (h - h // 16 * 16) // 2
            img = img.crop((l, tp, l + w // 16 * 16, tp + h // 16 * 16))
            x = 2 * (torch.tensor(np.array(img)).permute(2, 0, 1).float() / 255) - 1
            z = self.encode(x[None].to(self.dtype))[0]
            c, zh, zw = z.shape
            toks.append(z.reshape(c, zh * zw).T)
            ids.append(torch.cartesian_prod(torch.tensor([10 + 10 * i]), torch.arange(zh), torch.arange(zw), torch.arange(1)))
        return torch.cat(toks)[None].to(torch.bfloat16), torch.cat(ids)[None]

    def preview(self, prompt, negative, seed, steps, guidance, width, height, controls=()) -> np.ndarray:
        width, height = width // 16 * 16, height // 16 * 16
        h, w = height // 16, width // 16
        with torch.no_grad():
            cond = encode(self.pipe, prompt, self.mistral).to(self.dtype)
            cfg = not self.mistral and guidance > 1.0
            uncond = encode(self.pipe, negative, self.mistral).to(self.dtype) if cfg else None
            ch = self.t["img_in.weight"].shape[1]
            noise = torch.randn((1, ch, h, w), generator=torch.Generator().manual_seed(seed), dtype=cond.dtype)
            x = noise[0].reshape(ch, h * w).T.contiguous()[None]
            x_ids = torch.cartesian_prod(torch.arange(1), torch.arange(h), torch.arange(w), torch.arange(1))[None]
            c_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(cond.shape[1]))[None]
            g = torch.full((1,), guidance, dtype=x.dtype)
            rt, rid = self._ref_tokens(controls) if controls else (None, None)
            ts = aitk_schedule(steps, h * w)
            for tc, tp in zip(ts[:-1], ts[1:]):
                tv = torch.full((1,), tc, dtype=x.dtype)
                xi, ii = (x, x_ids) if rt is None else (torch.cat((x, rt), 1), torch.cat((x_ids, rid), 1))
                pred = self.transformer(xi, ii, tv, cond, c_ids, g)
                if cfg:
                    un = self.transformer(xi, ii, tv, uncond, c_ids, g)
                    pred = un + guidance * (pred - un)
                x = x + (tp - tc) * pred[:, : h * w]
            z = x[0].T.reshape(1, ch, h, w)
            image = self.decode(z).float()
        return to_uint8((image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy())[0]
