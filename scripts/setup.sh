#!/usr/bin/env bash
# Create .venv at the repo root and install beit-data with everything it needs.
# Safe to rerun: a finished install is detected by a stamp tied to the inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.beit-data-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# torch first, pinned: the pair that lies on local disk (a bare 'torch' would pull a multi-GB download).
pip install -q torch==2.14.1 torchvision==0.29.1
pip install -q -e '.[dev]'
# pillow-simd last: it shares the PIL/ folder with Pillow, which torchvision pulls in.
CC="cc -mavx2" pip install -q --force-reinstall --no-deps --no-cache-dir pillow-simd==12.1.1.post0
python -c "import PIL; print('PIL', PIL.__version__)"
echo "$want" > "$stamp"
