#!/usr/bin/env bash
# Main job: install, then train + test SIR on the offline demo dataset (real fundus image,
# SYNTHETIC lesions) with the stock `anomalib` CLI. Prints anomalib's test metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
anomalib train --config configs/demo.yaml "$@"
