"""Every registry entry is complete: it resolves to a Family, has a tiny test model, an example workflow that
loads it, and a README row; its typed parts are consistent (sizes, steps, guidance, sampler, quantization)."""
from __future__ import annotations

import json
import os
import re

import pytest

from tests.conftest import ROOT
from tests.fixtures.tiny_models import TINY

from aitk_pack.pipelines.families import get_family
from aitk_pack.pipelines.families.base import Family
from aitk_pack.pipelines.quantize import QTYPES
from aitk_pack.pipelines.registry import REGISTRY
from aitk_pack.pipelines.samplers import sampler_names

IDS = list(REGISTRY)


@pytest.mark.parametrize("model_id", IDS)
def test_entry_resolves_to_a_family(model_id):
    spec = REGISTRY[model_id]
    family = get_family(spec)
    assert isinstance(family, Family) and type(family) is not Family
    assert family.lora_component_names, "a family names the components LoRAs may patch"
    assert set(spec.lora.kohya_prefixes.values()) | set(spec.lora.peft_prefixes.values()) <= \
        set(family.lora_component_names), "every LoRA prefix targets a patchable component"


@pytest.mark.parametrize("model_id", IDS)
def test_entry_has_a_tiny_model(model_id):
    assert model_id in TINY, f"add the tiny {model_id} model: TINY_MODELS in tests/fixtures/tiny_<family>.py"


@pytest.mark.parametrize("model_id", IDS)
def test_entry_has_an_example_workflow_that_loads_it(model_id):
    spec = REGISTRY[model_id]
    path = os.path.join(ROOT, "example_workflows", f"{spec.workflow}.json")
    assert spec.workflow and os.path.isfile(path), f"{model_id}: example_workflows/{spec.workflow}.json"
    with open(path, encoding="utf-8") as f:
        graph = json.load(f)
    loaders = [n for n in graph["nodes"] if n["type"] == "LoadAIToolkitPipeline"]
    assert loaders and loaders[0]["widgets_values"][0] == model_id
    assert any(n["type"] == "ApplyAIToolkitLoRA" for n in graph["nodes"]), "the example wires a LoRA"
    if any(slot.required for slot in spec.controls):
        assert any(n["type"] == "LoadImage" for n in graph["nodes"]), "a LoadImage feeds the control input"


@pytest.mark.parametrize("model_id", IDS)
def test_entry_has_a_readme_row(model_id):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert re.search(rf"^\| `{re.escape(model_id)}` \|", readme, re.M), f"README models table: a row for {model_id}"


@pytest.mark.parametrize("model_id", IDS)
def test_entry_parts_are_consistent(model_id):
    spec = REGISTRY[model_id]
    d = spec.defaults
    assert spec.size.floor(d.width, d.height) == (d.width, d.height), "defaults are renderable sizes"
    assert 1 <= d.steps <= spec.scheduler.max_steps
    assert spec.scheduler.default_sampler in sampler_names(spec)
    assert spec.quant.preset is None or (spec.quant.preset in QTYPES and spec.quant.components)
    names = [slot.name for slot in spec.controls]
    assert names == ["control_image", "control_image_2", "control_image_3"][: len(names)]
    if spec.guidance.kind == "embedded":
        assert not spec.guidance.uses_negative
