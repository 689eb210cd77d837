"""Everything the nodes take from ComfyUI, imported lazily so the pack also works without ComfyUI.

Inside ComfyUI: model folders from `folder_paths`, progress/preview/cancel through `comfy.utils.ProgressBar`
(whose hook also raises on Cancel), the preview setting from `comfy.cli_args`. Outside: `AITK_MODELS_DIR` and no
progress UI.
"""
from __future__ import annotations

import logging

from ..pipelines.preview import latent_to_image
from ..pipelines.sources import ModelRoots

log = logging.getLogger("aitk_inference")


def _folder_paths():
    try:
        import folder_paths  # type: ignore
        return folder_paths
    except ImportError:
        return None


def model_roots() -> ModelRoots:
    fp = _folder_paths()
    if fp is None:
        return ModelRoots.from_env()

    def folders(name):
        try:
            return tuple(fp.get_folder_paths(name))
        except Exception:  # noqa: BLE001 - an unknown folder name in an older ComfyUI
            return ()
    return ModelRoots(folders("diffusers"), folders("checkpoints"), folders("loras"))


def check_interrupted() -> None:
    try:
        import comfy.model_management as mm  # type: ignore
    except ImportError:
        return
    mm.throw_exception_if_processing_interrupted()


def _previews_enabled() -> tuple[bool, int]:
    try:
        from comfy.cli_args import LatentPreviewMethod, args  # type: ignore
    except ImportError:
        return False, 512
    return args.preview_method != LatentPreviewMethod.NoPreviews, int(getattr(args, "preview_size", 512) or 512)


def step_callback(spec, total: int, node_id=None, request=None):
    """An `on_step(step, total, latents)` for the library: ProgressBar + live preview inside ComfyUI, else None."""
    try:
        from comfy.utils import ProgressBar  # type: ignore
    except ImportError:
        return None
    bar = ProgressBar(total, node_id=node_id) if node_id is not None else ProgressBar(total)
    previews, size = _previews_enabled()

    def on_step(step, steps, latents):
        preview = None
        if previews:
            image = latent_to_image(spec, latents, size, request)
            preview = ("JPEG", image, size) if image is not None else None
        bar.update_absolute(step, steps, preview)  # ComfyUI's hook raises here when the user pressed Cancel
        check_interrupted()
    return on_step
