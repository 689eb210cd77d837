"""Cheap live previews: latents → RGB with the registry's per-model linear factors (no VAE decode).

The family turns its sampling latents into [C, h, w] (`Family.preview_latents`: e.g. FLUX unpacks its tokens)."""
from __future__ import annotations

import numpy as np
import torch

from .families import get_family


def latent_to_image(spec, latents: torch.Tensor, max_size: int = 512, request=None):
    """First latent of a batch as a small PIL image, or None when the model has no preview factors."""
    from PIL import Image

    factors = spec.preview.rgb_factors
    if latents is None or not factors:
        return None
    latents = get_family(spec).preview_latents(spec, latents, request)
    if latents is None or latents.ndim != 3 or latents.shape[0] != len(factors):
        return None
    factors = torch.tensor(factors, dtype=torch.float32)
    bias = torch.tensor(spec.preview.rgb_bias, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latents.detach().float().cpu(), factors) + bias
    pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    image = Image.fromarray(np.ascontiguousarray(pixels))
    scale = max(1, int(max_size // max(image.size)))
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST) if scale > 1 else image
