#!/usr/bin/env bash
# Installs everything into a fresh environment and runs the whole test suite:
# the ops on every backend and CPU code path, the Triton kernels under the interpreter,
# the CUDA sources compiled without a GPU, the models, and a benchmark smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

echo "== tests"
python -m pytest python_tests -q -p no:cacheprovider

# The compiled kernels choose AMX / AVX-512 VNNI / AVX2 / portable code at run time;
# the suite above ran the best this machine has, so check the lower paths explicitly.
for isa in avx512_vnni avx2 scalar; do
    echo "== op tests with MYQ_CPU_ISA=$isa"
    MYQ_CPU_ISA=$isa python -m pytest python_tests/test_ops.py -q -p no:cacheprovider -k cpp
done

if [ -f .ci/cuda_checks.sh ]; then
    echo "== CUDA sources: compile without a GPU"
    bash .ci/cuda_checks.sh
fi

if [ -d benchmarks ] && ls benchmarks/test_*.py >/dev/null 2>&1; then
    echo "== benchmark smoke run"
    MYQ_BENCH_SMOKE=1 python -m pytest benchmarks -q -p no:cacheprovider --benchmark-disable
fi
