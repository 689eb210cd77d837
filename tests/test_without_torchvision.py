"""Without torchvision (a ComfyUI install has it; a bare environment may not): the pack imports, every tiny model
except the Qwen-Image-Edit ones builds, Qwen-Image renders through the engine, and an edit model's base is refused
with a message that names torchvision (transformers 5 builds their Qwen2VLProcessor only with it)."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT
from tests.fixtures.tiny_models import TINY

CODE = r'''
import sys, tempfile
sys.modules["torchvision"] = None  # `import torchvision` now raises ImportError
sys.path.insert(0, ".")
from tests.conftest import pack  # noqa: F401  (imports the pack as ComfyUI does)
from tests.fixtures.tiny_models import TINY
from aitk_pack.pipelines import engine
from aitk_pack.pipelines.errors import ModelSourceError
from aitk_pack.pipelines.sources import ModelRoots

built = []
for model_id, tiny in TINY.items():
    if "edit" in model_id:
        continue
    tiny.build()
    built.append(model_id)
print("BUILT", " ".join(built))
root = tempfile.mkdtemp()
TINY["qwen_image"].save(root + "/diffusers/tiny-qwen_image")
roots = ModelRoots(diffusers=(root + "/diffusers",))
frames = engine.generate(engine.load("qwen_image", base="tiny-qwen_image", dtype="fp32", device="cpu", roots=roots,
                                     quantization="none"), "a cat", width=64, height=64, steps=2)
print("RENDERED", tuple(frames.shape))
try:
    engine.load("qwen_image_edit", base="tiny-edit", dtype="fp32", device="cpu",
                roots=ModelRoots(diffusers=(sys.argv[1],)), quantization="none")
except ModelSourceError as exc:
    print("REFUSED", exc)
'''


def test_the_pack_runs_without_torchvision_and_names_it_where_a_model_needs_it(tmp_path):
    TINY["qwen_image_edit"].save(str(tmp_path / "tiny-edit"))  # built here, where torchvision is present
    out = subprocess.run([sys.executable, "-c", CODE, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    built = out.stdout.split("BUILT", 1)[1].split("\n", 1)[0].split()
    assert set(built) == {m for m in TINY if "edit" not in m}
    assert "RENDERED (1, 64, 64, 3)" in out.stdout
    refused = out.stdout.split("REFUSED", 1)[1]
    assert "torchvision" in refused and "pip install torchvision" in refused
