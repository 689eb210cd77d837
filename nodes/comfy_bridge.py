"""Everything the nodes take from ComfyUI, imported lazily so the pack also works without ComfyUI.

Inside ComfyUI: model folders from `folder_paths`, progress/preview/cancel through `comfy.utils.ProgressBar`
(whose hook also raises on Cancel), the preview setting from `comfy.cli_args`. Outside: `AITK_MODELS_DIR` and no
progress UI. The VIDEO output is ComfyUI's `comfy_api` video (a `PlainVideo` with the same parts outside).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction

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


def show_text(node_id, lines) -> None:
    """Lines of text on the node in ComfyUI's frontend (the server's progress-text message); nothing outside."""
    if node_id is None or not lines:
        return
    try:
        from server import PromptServer  # type: ignore
        server = PromptServer.instance
    except (ImportError, AttributeError):
        return
    try:
        server.send_progress_text("\n".join(lines), node_id)
    except Exception:  # noqa: BLE001 - a frontend message must never fail a render
        log.debug("[AI Toolkit] could not send the node text", exc_info=True)


@dataclass(frozen=True)
class PlainVideo:
    """The VIDEO output outside ComfyUI (no comfy_api): the same parts as ComfyUI's `VideoComponents`."""
    images: object            # IMAGE [T, H, W, 3] float32
    frame_rate: Fraction
    audio: dict | None = None  # ComfyUI AUDIO: {"waveform": [1, C, S] float32, "sample_rate": int}

    def get_components(self):
        return self

    def get_dimensions(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[1])


def make_video(images, fps: float, audio: dict | None = None):
    """ComfyUI's VIDEO (`VideoFromComponents(VideoComponents(...))`, what the stock Save Video node writes) from an
    IMAGE batch of frames, the frame rate and an optional AUDIO; a `PlainVideo` when ComfyUI is not there."""
    rate = Fraction(fps).limit_denominator(1001)
    try:
        from comfy_api.input_impl import VideoFromComponents  # type: ignore
        from comfy_api.util import VideoComponents  # type: ignore
    except ImportError:
        return PlainVideo(images, rate, audio)
    return VideoFromComponents(VideoComponents(images=images, frame_rate=rate, audio=audio))
