"""The training run's own `config.yaml`, when it sits beside a LoRA file: what "match training" can learn from it.

ai-toolkit writes the job's config as `<training_folder>/<name>/config.yaml` (`BaseTrainProcess.save_training_config`)
into the folder that also receives the LoRA checkpoints (`<name>.safetensors`, `<name>_000000250.safetensors`). A
LoRA's metadata does not record how the base was quantized, so the config is the only place that says. The config
is used only when the LoRA file's name starts with the job's `config.name` (so an unrelated config.yaml in a shared
loras folder is never taken for it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

CONFIG_NAME = "config.yaml"
MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class TrainingConfig:
    path: str
    job_name: str
    model: dict          # the first process's `model:` section

    @property
    def quantization(self) -> str | None:
        """The qtype the run's base was quantized with (`model.quantize` / `model.qtype`), or None."""
        return self.quantization_for("quantize")

    def quantization_for(self, flag: str = "quantize") -> str | None:
        """The qtype of the components that `model.<flag>` turns on, or None. `quantize_te` defaults to `quantize`
        (`ModelConfig.__init__`); the legacy model classes quantize those components with `model.qtype`."""
        on = self.model.get(flag, self.model.get("quantize", False) if flag == "quantize_te" else False)
        if not on:
            return None
        qtype = str(self.model.get("qtype") or "qfloat8")
        adapter = self.model.get("accuracy_recovery_adapter")  # ModelConfig: also given on its own, not in qtype
        if flag == "quantize" and adapter and "|" not in qtype:
            qtype = f"{qtype}|{adapter}"
        return qtype


def find_training_config(lora_path: str) -> TrainingConfig | None:
    """The `config.yaml` of the run that saved `lora_path`, or None when there is none (or it is not that run's)."""
    path = os.path.join(os.path.dirname(os.path.abspath(lora_path)), CONFIG_NAME)
    if not os.path.isfile(path) or os.path.getsize(path) > MAX_CONFIG_BYTES:
        return None
    try:
        import yaml

        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
        config = raw["config"]
        name = str(config["name"])
        model = config["process"][0].get("model") or {}
    except Exception:  # noqa: BLE001 - not an ai-toolkit job config (or unreadable): nothing to learn from it
        return None
    if not isinstance(model, dict) or not name or not os.path.basename(lora_path).startswith(name):
        return None
    return TrainingConfig(path, name, model)
