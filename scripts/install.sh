#!/usr/bin/env bash
# Create ./.venv (if missing) and install anomalib-sir with everything it needs, offline-capable.
# torch/torchvision are pinned to the CPU-usable wheels available on this machine's disk.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
# The virtual environment takes about 7 GB (torch's CUDA-enabled wheel and its libraries). Check the
# disk first, so that a full disk is reported here, by name, not as an OSError halfway through pip.
NEED_GB="${ANOMALIB_SIR_INSTALL_NEED_GB:-7}"
if [ ! -x .venv/bin/python ]; then
    FREE_KB=$(df -Pk . | awk 'NR==2 {print $4}')
    if [ "$FREE_KB" -lt $((NEED_GB * 1024 * 1024)) ]; then
        echo "install.sh: only $((FREE_KB / 1024 / 1024)) GB free on the disk of $(pwd);" \
            "the new .venv needs about ${NEED_GB} GB. Free some space (old clones, .venv folders)" \
            "or set ANOMALIB_SIR_INSTALL_NEED_GB to override this check." >&2
        exit 1
    fi
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet --no-cache-dir "torch==2.14.1" "torchvision==0.29.1"
# dev: test tools; ray: the benchmark's Ray executor (its test runs a local Ray instance)
python -m pip install --quiet --no-cache-dir ".[dev,ray]"
# Write the bundled ImageNet EfficientNet-Lite0 teacher into the local Hugging Face cache (no network).
python -c "from anomalib_sir.teacher import install_offline_teacher as i; print('teacher weights:', i())"
