#!/usr/bin/env bash
# Test job: install, then run the default test suite (tiny generated data; no ../shared needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
python -m pytest -q "$@"
