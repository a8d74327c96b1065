#!/usr/bin/env bash
# Install Ultralytics (AGPL) BESIDE the project for the comparison benchmarks only:
# it goes to benchmarks/.ultralytics (gitignored) and is used via PYTHONPATH; the project
# never imports it. Its other dependencies (torch, numpy, opencv, ...) come from .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/pip install -q --no-deps --target benchmarks/.ultralytics ultralytics ultralytics-thop
echo "use: PYTHONPATH=benchmarks/.ultralytics .venv/bin/python benchmarks/inference_speed.py --ultralytics"
