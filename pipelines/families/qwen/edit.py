"""Qwen-Image-Edit, -Edit-2509 and -Edit-2511: previews as ai-toolkit renders them, in our own sampling loop.

What ai-toolkit 0.12.26 (27a03a91) does (`extensions_built_in/diffusion_models/qwen_image/`), and so what this does:
- Loading as Qwen-Image (`QwenImageModel.load_model`) but the text encoder keeps its vision tower
  (`_qwen_image_keep_visual = True`) and `Qwen2VLProcessor.from_pretrained(folder, subfolder="processor")` is loaded.
  2511 is `QwenImageEditPlusModel` on other weights; its transformer config's `zero_cond_t` is read by Diffusers.
- Every control image enters twice (`BaseModel.generate_images`: each `ctrl_img*` file → `.convert("RGB")` →
  `TF.to_tensor` (0..1) → `.to(sampling dtype)`, the SAME list for the positive and the negative prompt):
  1. the Qwen2.5-VL prompt (`get_prompt_embeds`): the 0..1 tensor `F.interpolate(mode="bilinear")`-resized to an
     area of `VL_AREA_EDIT` (1024², Edit) / `VL_AREA_PLUS` (Diffusers' CONDITION_IMAGE_SIZE 384², Edit-Plus), sides
     `round(side / 32) * 32` (h = √(area·H/W), w = h·W/H), then `pipeline.encode_prompt(prompt, image=…)`; the
     Qwen2VL image processor rescales the already-0..1 tensor by 1/255 once more (a quirk kept on purpose).
     Edit-Plus writes the resized tensors back into the shared list, so the negative re-resizes the resized ones.
  2. the VAE tokens: Edit-Plus (`QwenImageEditPlusCustomPipeline.__call__`) takes each control PIL as it is,
     `calculate_dimensions(VAE_AREA, W/H)` (1024², sides /32), `VaeImageProcessor.preprocess` (LANCZOS, 2x-1);
     Edit (`QwenImageEditModel.generate_single_image` → stock `QwenImageEditPipeline.__call__`) first resizes the
     control with PIL BILINEAR to the output size (if it differs), then `image_processor.resize` + `preprocess` to
     the 1024² area of the output's ratio. `vae.encode(…).mode()`, `(z − mean) / std`, packed 2x2, concatenated
     after the noise tokens; `img_shapes = [(1, h/16, w/16), *(1, vh/16, vw/16)]`; the prediction is sliced to the
     output tokens.
- Sampling: true CFG `neg + g·(cond − neg)` whenever guidance > 1 with the negative (`""` included) encoded with the
  same images; the norm rescale to ‖cond‖ is always applied by the stock Edit pipeline and only with
  `sample.do_cfg_norm` by the Edit-Plus one (default False). Noise `randn(1, 1, 16, H/8, W/8)` in the embeds' dtype
  from the seeded CPU generator (the VAE mode draws nothing), sigmas `linspace(1, 1/n, n)`, `mu` from the output
  tokens only. The output size is always the node's (floored to 8, then 32): height/width are always passed.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ...errors import ControlImageError
from . import QwenImage

#: `QwenImageEditModel.get_prompt_embeds`: the VL side's target area (hard-coded 1024 * 1024)
VL_AREA_EDIT = 1024 * 1024
#: `QwenImageEditPlusModel.get_prompt_embeds`: Diffusers' `CONDITION_IMAGE_SIZE`
VL_AREA_PLUS = 384 * 384
#: the VAE side's area: Diffusers' `VAE_IMAGE_SIZE` (Edit-Plus) / `calculate_dimensions(1024 * 1024, …)` (Edit)
VAE_AREA = 1024 * 1024


def sides(area: int, ratio: float) -> tuple[int, int]:
    """`calculate_dimensions(area, ratio = W/H)`: (width, height), each rounded to a multiple of 32."""
    width = math.sqrt(area * ratio)
    height = width / ratio
    return round(width / 32) * 32, round(height / 32) * 32


def to_tensor(image, device, dtype) -> torch.Tensor:
    """torchvision's `TF.to_tensor` of an RGB PIL image ([1, 3, H, W], uint8 / 255 in float32), `.to(dtype)`."""
    pixels = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8, copy=True))
    pixels = pixels.permute(2, 0, 1).contiguous().to(dtype=torch.get_default_dtype()).div(255)
    return pixels.unsqueeze(0).to(device=device, dtype=dtype)


def vl_resize(tensor: torch.Tensor, area: int) -> torch.Tensor:
    """`get_prompt_embeds`' bilinear resize of a [1, 3, H, W] 0..1 tensor to `area` (ratio H/W, sides /32)."""
    import torch.nn.functional as F

    ratio = tensor.shape[2] / tensor.shape[3]
    height = math.sqrt(area * ratio)
    width = height / ratio
    size = (round(height / 32) * 32, round(width / 32) * 32)
    return F.interpolate(tensor, size=size, mode="bilinear")


class QwenImageEdit(QwenImage):
    """Qwen-Image-Edit (ai-toolkit's QwenImageEditModel over the stock `QwenImageEditPipeline`)."""
    pipeline_class = "QwenImageEditPipeline"
    keep_visual = True
    cfg_norm_default = True   # the stock pipeline always rescales

    def controls(self, spec, request) -> list:
        images = [c for c in request.controls[: len(spec.controls)] if c is not None]
        if not images:
            raise ControlImageError(f"{spec.label} needs a control image: connect an IMAGE to control_image.")
        return images

    def check_request(self, spec, request) -> None:
        super().check_request(spec, request)
        self.controls(spec, request)

    def cfg_norm(self, spec, request) -> bool:
        return self.cfg_norm_default

    def vl_images(self, spec, request, images) -> list:
        """The images the prompt encoder sees (the VAE side takes `images` as they are)."""
        return images

    # ---- the two sides of the control images ---------------------------------------------------------------
    def prompt_embeds(self, sampling, request, images, dtype, device):
        """(positive, negative) (embeds, mask) with the VL-side images (`get_prompt_embeds`)."""
        tensor = vl_resize(to_tensor(images[0], device, dtype), VL_AREA_EDIT)
        return self.encode(sampling, request.prompt, tensor), self.encode(sampling, request.negative_prompt or "",
                                                                          tensor)

    def vae_images(self, sampling, images, width, height):
        """[(preprocessed [1, 3, 1, vh, vw] tensor, (vw, vh))] for the VAE tokens (stock Edit `__call__`)."""
        from PIL import Image

        image = images[0].convert("RGB")
        if image.size != (width, height):  # QwenImageEditModel.generate_single_image
            image = image.resize((width, height), Image.BILINEAR)
        vw, vh = sides(VAE_AREA, image.size[0] / image.size[1])
        image = sampling.image_processor.resize(image, vh, vw)
        return [(sampling.image_processor.preprocess(image, vh, vw).unsqueeze(2), (vw, vh))]

    @staticmethod
    def vae_input(tensors):
        """What `prepare_latents` takes: one tensor (`QwenImageEditPipeline`) or the list (Edit-Plus)."""
        return tensors[0]

    # ---- sampling ------------------------------------------------------------------------------------------
    def generate(self, spec, pipe, request, sampler=None, on_step=None):
        from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift, retrieve_timesteps

        images = self.controls(spec, request)
        sampling = self.sampling_pipeline(spec, pipe, sampler)
        transformer, scheduler, vae = sampling.transformer, sampling.scheduler, sampling.vae
        device, dtype = transformer.device, transformer.dtype
        width, height = self.output_size(request)
        guidance = spec.guidance.pipeline_value(request.guidance_scale)
        do_cfg = guidance > spec.guidance.threshold
        steps = request.steps
        generator = torch.Generator("cpu").manual_seed(request.seed)
        config = scheduler.config
        with torch.no_grad():
            (embeds, _), (neg, _) = self.prompt_embeds(sampling, request, self.vl_images(spec, request, images),
                                                        dtype, device)
            # `encode_prompt(prompt_embeds=…, prompt_embeds_mask=ones)` inside `__call__`: an all-ones mask -> None
            vae_side = self.vae_images(sampling, images, width, height)
            latents, image_latents = sampling.prepare_latents(
                self.vae_input([v for v, _ in vae_side]), 1, transformer.config.in_channels // 4, height, width, embeds.dtype,
                device, generator)
            scale = sampling.vae_scale_factor * 2
            img_shapes = [[(1, height // scale, width // scale),
                           *[(1, vh // scale, vw // scale) for _, (vw, vh) in vae_side]]]
            mu = calculate_shift(latents.shape[1], config.get("base_image_seq_len", 256),
                                 config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                 config.get("max_shift", 1.15))
            timesteps, _ = retrieve_timesteps(scheduler, steps, device,
                                              sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
            scheduler.set_begin_index(0)
            norm = self.cfg_norm(spec, request)
            tokens = latents.shape[1]
            for i, t in enumerate(timesteps):
                model_input = torch.cat([latents, image_latents], dim=1)
                timestep = t.expand(latents.shape[0]).to(latents.dtype) / 1000

                def predict(text):
                    return transformer(hidden_states=model_input, timestep=timestep, guidance=None,
                                       encoder_hidden_states_mask=None, encoder_hidden_states=text,
                                       img_shapes=img_shapes, attention_kwargs={}, return_dict=False)[0][:, :tokens]
                noise_pred = predict(embeds)
                if do_cfg:
                    neg_pred = predict(neg)
                    comb = neg_pred + guidance * (noise_pred - neg_pred)
                    if norm:
                        cond_norm = torch.norm(noise_pred, dim=-1, keepdim=True)
                        comb = comb * (cond_norm / torch.norm(comb, dim=-1, keepdim=True))
                    noise_pred = comb
                latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                if on_step is not None:
                    on_step(i + 1, steps, latents)
            latents = sampling._unpack_latents(latents, height, width, sampling.vae_scale_factor).to(vae.dtype)
            z = vae.config.z_dim
            mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
            inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(latents.device,
                                                                                         latents.dtype)
            image = vae.decode(latents / inv_std + mean, return_dict=False)[0][:, :, 0]
            return sampling.image_processor.postprocess(image, output_type="np")


class QwenImageEditPlus(QwenImageEdit):
    """Qwen-Image-Edit-2509 / 2511 (ai-toolkit's `QwenImageEditPlusCustomPipeline`, re-implemented)."""
    pipeline_class = "QwenImageEditPlusPipeline"
    cfg_norm_default = False

    def cfg_norm(self, spec, request) -> bool:
        options = self.options(spec, request)
        return bool(getattr(options, "do_cfg_norm", False))

    def vl_images(self, spec, request, images) -> list:
        """`BaseModel.generate_images` lists `ctrl_img`, `ctrl_img_1`, `ctrl_img_2`, `ctrl_img_3` for the prompt
        encoder, and `GenerateImageConfig` sets ctrl_img_1 = ctrl_img when only ctrl_img is given: a legacy sample
        (option `legacy_ctrl_img`) shows its first image to the VL encoder twice. The VAE side
        (`generate_single_image`: ctrl_img, else ctrl_img_1, then 2 and 3) sees it once."""
        if getattr(self.options(spec, request), "legacy_ctrl_img", False):
            return [images[0], *images]
        return images

    def prompt_embeds(self, sampling, request, images, dtype, device):
        shared = [to_tensor(image, device, dtype) for image in images]
        shared = [vl_resize(t, VL_AREA_PLUS) for t in shared]  # written back into the shared list ...
        positive = self.encode(sampling, request.prompt, list(shared))
        shared = [vl_resize(t, VL_AREA_PLUS) for t in shared]  # ... so the negative resizes the resized tensors
        return positive, self.encode(sampling, request.negative_prompt or "", shared)

    @staticmethod
    def vae_input(tensors):
        return tensors

    def vae_images(self, sampling, images, width, height):
        out = []
        for image in images:  # `__call__`: each control PIL as given, its own ratio
            vw, vh = sides(VAE_AREA, image.size[0] / image.size[1])
            out.append((sampling.image_processor.preprocess(image.convert("RGB"), vh, vw).unsqueeze(2), (vw, vh)))
        return out
