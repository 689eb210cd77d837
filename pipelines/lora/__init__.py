"""The LoRA engine: read files, bind their keys to a live model with a full match report, merge exactly."""
from .bind import BoundLora, MatchReport, bind_lora
from .files import LoraInfo, lora_info, read_header
from .merge import WeightPatcher

__all__ = ["BoundLora", "MatchReport", "bind_lora", "LoraInfo", "lora_info", "read_header", "WeightPatcher"]
