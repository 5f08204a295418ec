#!/usr/bin/env bash
# Times one build of the CPU GEMV kernels against another in one process, call by call
# (benchmarks/kernel_ab.cpp says why), e.g. the last commit against the working tree:
#
#   bash benchmarks/kernel_ab.sh HEAD int8 4096 4096 1          # v0 = HEAD, v1 = working tree
#   bash benchmarks/kernel_ab.sh HEAD~3 int4 4096 4096 8 1      # hot weights (one copy)
#   V1=HEAD~1 bash benchmarks/kernel_ab.sh HEAD~2 int8 1536 576 1
#
# Arguments after the revision go to kernel_ab (int8|int4 N K M [copies [calls [isa]]]).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 5 ] || { sed -n 2,9p "$0" >&2; exit 2; }
v0_rev=$1; shift
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
torch_dir=$(python -c "import os, torch; print(os.path.dirname(torch.__file__))")
flags=(-O3 -std=c++17 -I"$torch_dir/include")

sources() {  # sources REV|"" DIR: csrc/cpu of a revision (or of the working tree) into DIR
  mkdir -p "$2"
  if [ -n "$1" ]; then git archive "$1" csrc/cpu | tar -x -C "$2" --strip-components=2
  else cp csrc/cpu/*.h csrc/cpu/*.cpp "$2"; fi
}
for v in 0 1; do
  rev=$v0_rev; [ $v = 1 ] && rev=${V1:-}
  sources "$rev" "$work/v$v"
  for f in int8_linear int4_linear; do
    g++ "${flags[@]}" -I"$work/v$v" -Dmyq=myq_v$v -c "$work/v$v/$f.cpp" -o "$work/v${v}_$f.o" &
  done
done
wait
g++ "${flags[@]}" benchmarks/kernel_ab.cpp "$work"/v*_*.o -L"$torch_dir/lib" -lc10 \
    -Wl,-rpath,"$torch_dir/lib" -pthread -o "$work/kernel_ab"
"$work/kernel_ab" "$@"
