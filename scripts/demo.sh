#!/usr/bin/env bash
# Installs everything into a fresh environment, then runs the main job: quantize the real
# SmolLM2-135M model with each scheme and show footprint, perplexity and speed against fp32.
# Extra arguments go to `myq demo` (e.g. --model DIR, --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
myq demo "$@"
