"""An independent, hand-written LTX-2 / LTX-2.3 text-to-video + audio preview: ai-toolkit's recipe written out
step by step, sharing no code with the pack and not calling `LTX2Pipeline` (only Diffusers' model classes: the
Gemma 3 encoder, the text connectors, the transformer with its RoPE coordinate helpers, the two VAEs, the vocoder).

The recipe (ai-toolkit 27a03a91 `extensions_built_in/diffusion_models/ltx2/ltx2.py`, `toolkit/models/base_model.py:
generate_images`, and the loop of Diffusers 0.42.1 `LTX2Pipeline.__call__`, which ai-toolkit's previews run):
- every part in the sampling dtype; a LoRA merged as `(W.float() + m * (B.float() @ A.float())).to(W.dtype)` (no
  alpha), its `diffusion_model.` prefix being the transformer;
- prompt and negative each: stripped, Gemma-tokenized with `<bos>` (one prompt: no padding), every hidden state
  stacked on the last dim and flattened, cast to the dtype, then left-padded with zeros to 1024 tokens, the mask
  with zeros, the mask cast to the dtype;
- size floored to 32 (after `max(64, x - x % 8)`), frames to `((n-1)//8)*8+1`, the pipeline's frame rate 24;
- noise: `randn([1, C, (F-1)//8+1, H/32, W/32])` fp32 from a CPU generator seeded with the seed, packed to tokens
  `[1, F*h*w, C]`; then from the same generator the audio noise `randn([1, Ca, L, M/4])`, L = round(F/24 * sr/hop/4),
  packed to `[1, L, Ca*M/4]`;
- sigmas `linspace(1, 1/N, N)` in float32, shifted with `mu` from the packed video token count (the line through
  (1024, 0.95) and (4096, 2.05)) by the exponential time shift `e^mu / (e^mu + (1/s - 1))`, then stretched so the
  last one is `shift_terminal` 0.1: `1 - (1 - s) / ((1 - s_last) / 0.9)`; a 0 appended; timesteps `s * 1000`;
- per step: the text connectors on `[negative, prompt]` (once), the transformer on the CFG batch (negative first;
  it runs whenever the video or the audio guidance is above 1, so at guidance 1 too, the audio's being 7),
  then on the prompt alone with STG at blocks [28], then on the prompt alone with the audio/video cross-attention
  isolated; every prediction turned into x0 = `x - v * s`; guided x0 = `x0 + (g-1)(x0 - x0_neg) + stg (x0 - x0_stg)
  + (modality-1)(x0 - x0_iso)` (audio: its own guidance 7), rescaled by 0.7 towards the std of the unguided x0
  (`0.7 * x0g * std(x0)/std(x0g) + 0.3 * x0g`), back to velocity `(x - x0g) / s`, Euler `x + (s_next - s) * v`
  in fp32 for video and audio alike;
- decode: video tokens unpacked, cast to the dtype, `z * std + mean`, VAE decode, `(x * 0.5 + 0.5).clamp(0, 1)`,
  `round(x * 255)`; audio tokens `z * std + mean`, unpacked to `[1, Ca, L, M/4]`, audio VAE decode to a mel, vocoder:
  the waveform `[2, T]` at the vocoder's `output_sampling_rate`.

Image-to-video (a sample with `ctrl_img`: ai-toolkit switches to `LTX2ImageToVideoPipeline` and passes only `image`):
- the image `convert("RGB")`, resized with LANCZOS to the floored size; then (no `image_crf` passed: the Gemma 3
  default 33) one H.264 frame through PyAV: libx264 `crf` 33 `preset` veryfast, rate 1, rgb24 -> yuv420p, the first
  decoded frame back as rgb24; `/255`, `2x - 1`, `[1, 3, 1, H, W]` in the dtype;
- the video VAE's latent mode (`argmax`, no generator draw), fp32, `(z - mean) / std` (scaling 1), repeated over
  the latent frames; latent frame 0 is the image, the rest the same fp32 noise as text-to-video (drawn from the
  generator first, then the audio noise), packed;
- each transformer call gets the video timestep per token `t * (1 - mask)` (0 on the image's tokens), the audio
  timestep and `sigma` the plain `t`; guidance and rescale as above over all tokens; Euler on latent frames 1..
  only, frame 0 kept as it is.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch

MAX_TOKENS = 1024
FPS = 24.0
SIZE = 32
CONFIG = dict(base_image_seq_len=1024, max_image_seq_len=4096, base_shift=0.95, max_shift=2.05, shift_terminal=0.1)
# ai-toolkit's guidance for both versions (2.0: the pipeline's defaults; 2.3: set explicitly to the same values)
GUIDANCE = dict(stg=1.0, modality=3.0, rescale=0.7, audio_guidance=7.0, audio_stg=1.0, audio_modality=3.0,
                audio_rescale=0.7, stg_blocks=(28,))


def load_parts(folder: str, dtype, v23: bool) -> dict:
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder, LTX2VocoderWithBWE
    from transformers import AutoTokenizer, Gemma3ForConditionalGeneration

    sub = lambda name: os.path.join(folder, name)  # noqa: E731
    parts = dict(tokenizer=AutoTokenizer.from_pretrained(sub("tokenizer")),
                 text_encoder=Gemma3ForConditionalGeneration.from_pretrained(sub("text_encoder")),
                 connectors=LTX2TextConnectors.from_pretrained(sub("connectors")),
                 transformer=LTX2VideoTransformer3DModel.from_pretrained(sub("transformer")),
                 vae=AutoencoderKLLTX2Video.from_pretrained(sub("vae")),
                 audio_vae=AutoencoderKLLTX2Audio.from_pretrained(sub("audio_vae")),
                 vocoder=(LTX2VocoderWithBWE if v23 else LTX2Vocoder).from_pretrained(sub("vocoder")))
    for name, part in parts.items():
        if isinstance(part, torch.nn.Module):
            part.to(dtype=dtype).requires_grad_(False).eval()
    return parts


def merge(parts: dict, state_dict: dict, multiplier: float) -> int:
    """ai-toolkit's merge_in of its saved LTX-2 LoRA (peft, no alpha); returns the number of modules merged."""
    count = 0
    for key in state_dict:
        if not key.endswith(".lora_A.weight"):
            continue
        stem = key[: -len(".lora_A.weight")]
        assert stem.startswith("diffusion_model."), stem
        module = parts["transformer"].get_submodule(stem[len("diffusion_model."):])
        a, b = state_dict[key], state_dict[f"{stem}.lora_B.weight"]
        with torch.no_grad():
            module.weight.data = (module.weight.data.float() + multiplier * (b.float() @ a.float())).to(
                module.weight.dtype)
        count += 1
    return count


def encode(parts: dict, prompt: str, dtype):
    tok = parts["tokenizer"]
    ids = tok(prompt.strip(), add_special_tokens=True, return_tensors="pt").input_ids
    mask = torch.ones_like(ids)
    states = parts["text_encoder"](input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    embeds = torch.stack(states, dim=-1).flatten(2, 3).to(dtype)
    n = embeds.shape[1]
    padded = torch.zeros(1, MAX_TOKENS, embeds.shape[2], dtype=dtype)
    padded[:, MAX_TOKENS - n:] = embeds
    full_mask = torch.zeros(1, MAX_TOKENS, dtype=torch.long)
    full_mask[:, MAX_TOKENS - n:] = 1
    return padded, full_mask.to(dtype)


def sigmas_for(steps: int, tokens: int) -> torch.Tensor:
    c = CONFIG
    m = (c["max_shift"] - c["base_shift"]) / (c["max_image_seq_len"] - c["base_image_seq_len"])
    mu = tokens * m + (c["base_shift"] - m * c["base_image_seq_len"])
    s = np.linspace(1.0, 1 / steps, steps).astype(np.float32)
    s = math.exp(mu) / (math.exp(mu) + (1 / s - 1) ** 1.0)
    one_minus = 1 - s
    s = 1 - (one_minus / (one_minus[-1] / (1 - c["shift_terminal"])))
    s = torch.from_numpy(s).to(dtype=torch.float32)
    return torch.cat([s, torch.zeros(1)])


def _rescale(guided, plain, factor):
    dims = list(range(1, plain.ndim))
    rescaled = guided * (plain.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return factor * rescaled + (1 - factor) * guided


IMAGE_CRF = 33  # LTX2ImageToVideoPipeline's image_crf for a Gemma 3 encoder (ai-toolkit passes none)


def h264_round_trip(rgb: np.ndarray, crf: int) -> np.ndarray:
    """One RGB uint8 frame encoded as a one-frame H.264 mp4 at `crf` and decoded back (ltx-pipelines' preprocess)."""
    import io

    import av

    h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=1, options={"crf": str(crf), "preset": "veryfast"})
        stream.height, stream.width = h, w
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:h, :w]), format="rgb24").reformat(
            format="yuv420p")
        for packet in list(stream.encode(frame)) + list(stream.encode()):
            out.mux(packet)
    buffer.seek(0)
    with av.open(buffer) as inp:
        decoded = next(inp.decode(video=0))
        return decoded.to_ndarray(format="rgb24")


def image_latents(vae, image, width: int, height: int, dtype, crf: int = IMAGE_CRF) -> torch.Tensor:
    """The control image -> its normalized fp32 VAE latent [1, C, 1, h, w] (mode of the posterior)."""
    from PIL import Image

    pixels = np.asarray(image.convert("RGB").resize((width, height), Image.LANCZOS))
    if crf:
        pixels = h264_round_trip(pixels, crf)
    x = torch.from_numpy(pixels.astype(np.float32) / 255.0).permute(2, 0, 1)[None] * 2.0 - 1.0
    z = vae.encode(x[:, :, None].to(dtype)).latent_dist.mode().float()
    mean, std = (b.view(1, -1, 1, 1, 1).float() for b in (vae.latents_mean, vae.latents_std))
    return (z - mean) / std


def preview(parts: dict, prompt: str, negative: str, seed: int, steps: int, guidance: float, width: int,
            height: int, frames: int, dtype, image=None, crf: int = IMAGE_CRF, low_vram: bool = True):
    """(uint8 frames [F, H, W, 3], float32 waveform [2, T] or None, sample rate) as ai-toolkit's LTX-2 preview;
    with `image` (a PIL image, any mode and size) its image-to-video preview. `low_vram` (the UI presets' value):
    `generate_single_image` sets `vae.use_framewise_decoding = True` (tiles of 16 frames, stride 8) around the
    pipeline, so the decode runs in temporal tiles once there are more than 2 latent frames."""
    width, height = (max(64, s - s % 8) for s in (width, height))
    width, height = width - width % SIZE, height - height % SIZE
    if frames != 1 and (frames - 1) % 8:
        frames = (frames - 1) // 8 * 8 + 1
    tr, vae, avae, g = parts["transformer"], parts["vae"], parts["audio_vae"], GUIDANCE
    cfg = guidance > 1.0 or g["audio_guidance"] > 1.0  # the CFG batch runs while either guidance is on
    with torch.no_grad():
        cond, cond_mask = encode(parts, prompt, dtype)
        uncond, uncond_mask = encode(parts, negative, dtype)
        embeds, masks = (torch.cat([uncond, cond]), torch.cat([uncond_mask, cond_mask])) if cfg else (cond, cond_mask)
        video_text, audio_text, text_mask = parts["connectors"](embeds, masks, padding_side="left")

        gen = torch.Generator("cpu").manual_seed(seed)
        f, h, w = (frames - 1) // 8 + 1, height // SIZE, width // SIZE
        channels = tr.config.in_channels
        noise = torch.randn((1, channels, f, h, w), generator=gen, dtype=torch.float32)
        keep = torch.zeros(f * h * w, dtype=torch.bool)  # the tokens of the image's latent frame (I2V)
        if image is not None:
            noise[:, :, 0] = image_latents(vae, image, width, height, dtype, crf)[:, :, 0]
            keep[: h * w] = True
        latents = noise.permute(0, 2, 3, 4, 1).reshape(1, f * h * w, channels)
        token_t = (~keep).float()  # per-token video timestep factor (1 - conditioning mask)
        sr, hop = avae.config.sample_rate, avae.config.mel_hop_length
        audio_len = round(frames / FPS * (sr / hop / 4.0))
        mel_latent = avae.config.mel_bins // 4
        audio_noise = torch.randn((1, avae.config.latent_channels, audio_len, mel_latent), generator=gen,
                                  dtype=torch.float32)
        audio = audio_noise.transpose(1, 2).flatten(2, 3)

        sigmas = sigmas_for(steps, latents.shape[1])
        batch = 2 if cfg else 1
        video_coords = tr.rope.prepare_video_coords(batch, f, h, w, latents.device, fps=FPS)
        audio_coords = tr.audio_rope.prepare_audio_coords(batch, audio_len, audio.device)

        def run(x, a, t, text_v, text_a, mask, vc, ac, isolate=False, stg=None):
            n = x.shape[0]
            ts = (t * 1000).expand(n)
            video_ts = ts[:, None] * token_t[None] if image is not None else ts
            v, va = tr(hidden_states=x.to(dtype), audio_hidden_states=a.to(dtype), encoder_hidden_states=text_v,
                       audio_encoder_hidden_states=text_a, timestep=video_ts, audio_timestep=ts, sigma=ts,
                       encoder_attention_mask=mask,
                       audio_encoder_attention_mask=mask, num_frames=f, height=h, width=w, fps=FPS,
                       audio_num_frames=audio_len, video_coords=vc, audio_coords=ac, isolate_modalities=isolate,
                       spatio_temporal_guidance_blocks=stg, perturbation_mask=None, use_cross_timestep=True,
                       return_dict=False)
            return v.float(), va.float()

        for i in range(steps):
            s, s_next = sigmas[i], sigmas[i + 1]
            t = s.clone()
            pair = run(torch.cat([latents] * batch), torch.cat([audio] * batch), t, video_text, audio_text,
                       text_mask, video_coords, audio_coords)
            if cfg:
                (vu, vc_), (au, ac_) = pair[0].chunk(2), pair[1].chunk(2)
                x0, ax0 = latents - vc_ * s, audio - ac_ * s
                d_cfg = (guidance - 1) * (x0 - (latents - vu * s))
                ad_cfg = (g["audio_guidance"] - 1) * (ax0 - (audio - au * s))
                one = [video_text.chunk(2)[1], audio_text.chunk(2)[1], text_mask.chunk(2)[1],
                       video_coords.chunk(2)[0], audio_coords.chunk(2)[0]]
            else:
                x0, ax0 = latents - pair[0] * s, audio - pair[1] * s
                d_cfg = ad_cfg = 0
                one = [video_text, audio_text, text_mask, video_coords, audio_coords]
            vs, as_ = run(latents, audio, t, *one, stg=list(g["stg_blocks"]))
            d_stg, ad_stg = g["stg"] * (x0 - (latents - vs * s)), g["audio_stg"] * (ax0 - (audio - as_ * s))
            vm, am = run(latents, audio, t, *one, isolate=True)
            d_mod = (g["modality"] - 1) * (x0 - (latents - vm * s))
            ad_mod = (g["audio_modality"] - 1) * (ax0 - (audio - am * s))
            x0g = _rescale(x0 + d_cfg + d_stg + d_mod, x0, g["rescale"])
            ax0g = _rescale(ax0 + ad_cfg + ad_stg + ad_mod, ax0, g["audio_rescale"])
            stepped = latents + (s_next - s) * ((latents - x0g) / s)
            latents = torch.where(keep[None, :, None], latents, stepped)  # I2V: the image frame is never stepped
            audio = audio + (s_next - s) * ((audio - ax0g) / s)

        z = latents.reshape(1, f, h, w, channels).permute(0, 4, 1, 2, 3).to(dtype)
        z = z * vae.latents_std.view(1, -1, 1, 1, 1).to(dtype) / vae.config.scaling_factor + \
            vae.latents_mean.view(1, -1, 1, 1, 1).to(dtype)
        vae.use_framewise_decoding, vae.tile_sample_min_num_frames, vae.tile_sample_stride_num_frames = low_vram, 16, 8
        video = vae.decode(z.to(vae.dtype), None, return_dict=False)[0]
        vae.use_framewise_decoding = False
        video = (video * 0.5 + 0.5).clamp(0, 1)[0].permute(1, 2, 3, 0).float().numpy()
        pixels = (video * 255).round().astype(np.uint8)
        if frames == 1:
            return pixels[:1], None, None
        a = audio * avae.latents_std.to(audio.dtype) + avae.latents_mean.to(audio.dtype)
        a = a.unflatten(2, (-1, mel_latent)).transpose(1, 2)
        mel = avae.decode(a.to(avae.dtype), return_dict=False)[0]
        wave = parts["vocoder"](mel)
    return pixels, wave[0].float().numpy(), int(parts["vocoder"].config.output_sampling_rate)
