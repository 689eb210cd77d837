"""Errors the library raises for bad input: each message names the input and says what to do."""
from __future__ import annotations


class AitkError(Exception):
    """Base class: a user-facing problem with the inputs (never a bug in the pack)."""


class UnknownModelError(AitkError, ValueError):
    pass


class InputError(AitkError, ValueError):
    """A sampling input is out of range or malformed (size, steps, a prompt --flag …)."""


class ModelSourceError(AitkError, FileNotFoundError):
    """A base model cannot be found, read or downloaded."""


class LoraError(AitkError, ValueError):
    """A LoRA file cannot be read, belongs to another model, or nothing in it applies."""


class ControlImageError(AitkError, ValueError):
    pass


class RenderError(AitkError, RuntimeError):
    """A render produced non-finite latents or pixels (it would have been a black image)."""


class Interrupted(AitkError):
    """Sampling was cancelled between steps; the cached pipeline is left as it was."""


class QuantizationError(AitkError):
    """A quantized base cannot be built: optimum-quanto is missing, or the qtype is not one the pack reproduces."""
