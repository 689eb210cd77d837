"""Cheap live previews: latents → RGB with the registry's per-family linear factors (no VAE decode)."""
from __future__ import annotations

import numpy as np
import torch


def latent_to_image(spec, latents: torch.Tensor, max_size: int = 512):
    """First latent of a batch as a small PIL image, or None when the model has no preview factors."""
    from PIL import Image

    if latents is None or not spec.latent_rgb_factors or latents.ndim != 4:
        return None
    factors = torch.tensor(spec.latent_rgb_factors, dtype=torch.float32)
    if latents.shape[1] != factors.shape[0]:
        return None
    bias = torch.tensor(spec.latent_rgb_bias, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latents[0].detach().float().cpu(), factors) + bias
    pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    image = Image.fromarray(np.ascontiguousarray(pixels))
    scale = max(1, int(max_size // max(image.size)))
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST) if scale > 1 else image
