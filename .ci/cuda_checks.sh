#!/usr/bin/env bash
# Proves the CUDA side of myq_kernels without a GPU:
#   a. every torch-free kernel file csrc/cuda/*.cu compiles with `nvcc -c` for sm_80 and
#      sm_90a with -Xptxas -v; the register / spill report goes to
#      benchmarks/cuda_ptxas_report.txt, and any spill to local memory fails the check;
#   b. the whole extension (CPU + CUDA kernels + ATen binding) builds and links against the
#      CUDA build of torch in a second venv ($MYQ_CUDA_VENV, created once, then reused),
#      from a copy of the tree ($MYQ_CUDA_BUILD, kept for incremental rebuilds), and, without
#      a GPU, the built module imports and has CUDA kernels registered for every op;
#   c. the Triton kernels pass the op tests under TRITON_INTERPRET=1 on CPU tensors;
#   d. the CUDA kernels themselves run, in a CPU emulator of the CUDA execution model
#      (csrc/cuda/sim: the .cu files compiled as C++, threads as fibers, mma.sync / ldmatrix /
#      cp.async emulated from the PTX fragment layouts), against the reference.
# Prints PASS/FAIL per step and exits non-zero if any failed. Steps can be chosen with
# MYQ_CUDA_CHECKS="a c" (default "a b c d").
#
# Environment: CUDA_HOME (default /usr/local/cuda), MYQ_CUDA_VENV (default /tmp/myq-cuda-venv),
# MYQ_CUDA_BUILD (default /tmp/myq-cuda-build), PYTHON (python running step c; default: the
# active python, which must have torch, triton and pytest).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
NVCC="$CUDA_HOME/bin/nvcc"
VENV="${MYQ_CUDA_VENV:-/tmp/myq-cuda-venv}"
BUILD="${MYQ_CUDA_BUILD:-/tmp/myq-cuda-build}"
PY="${PYTHON:-python}"
STEPS="${MYQ_CUDA_CHECKS:-a b c d}"
REPORT="$ROOT/benchmarks/cuda_ptxas_report.txt"
FAILED=0
SUMMARY=()

result() {  # name status seconds
    local line
    line=$(printf '%-4s %-62s %4ss' "$2" "$1" "$3")
    echo "$line"
    SUMMARY+=("$line")
    [ "$2" = PASS ] || FAILED=1
}

# ---- a. nvcc -c of every kernel file, ptxas register/spill report ----------------------------
step_a() {
    local t0=$SECONDS log status=PASS
    echo "== a. nvcc -c csrc/cuda/*.cu for sm_80 and sm_90a (-Xptxas -v)"
    if [ ! -x "$NVCC" ]; then
        echo "nvcc not found at $NVCC (set CUDA_HOME)"
        result "a. kernel files compile (nvcc sm_80 + sm_90a)" FAIL 0
        return
    fi
    log=$(mktemp -d)
    local pids=() files=()
    for f in csrc/cuda/*.cu; do
        files+=("$f")
        "$NVCC" -c -O3 -std=c++17 -lineinfo \
            -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90a,code=sm_90a \
            -Xptxas -v -Icsrc -o "$log/$(basename "$f").o" "$f" >"$log/$(basename "$f").log" 2>&1 &
        pids+=($!)
    done
    local i
    for i in "${!pids[@]}"; do
        if ! wait "${pids[$i]}"; then
            echo "FAIL compile ${files[$i]}:"
            grep -v "^ptxas info" "$log/$(basename "${files[$i]}").log" | head -40
            status=FAIL
        fi
    done
    # Report: one line per kernel and architecture, demangled.
    {
        echo "# ptxas -v summary of csrc/cuda/*.cu (nvcc $("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'))"
        echo "# produced by .ci/cuda_checks.sh; columns: file arch registers spill-stores spill-loads stack smem kernel"
        for f in "${files[@]}"; do
            "$PY" - "$log/$(basename "$f").log" "$(basename "$f")" <<'PYEOF'
import re, subprocess, sys
path, name = sys.argv[1], sys.argv[2]
text = open(path).read()
rows = []
cur = None
for line in text.splitlines():
    m = re.search(r"Compiling entry function '([^']+)' for '(sm_\w+)'", line)
    if m:
        cur = {"kernel": m.group(1), "arch": m.group(2)}
        continue
    if cur is None:
        continue
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m:
        cur.update(stack=int(m.group(1)), st=int(m.group(2)), ld=int(m.group(3)))
    m = re.search(r"Used (\d+) registers", line)
    if m:
        cur["regs"] = int(m.group(1))
        sm = re.search(r"(\d+) bytes smem", line)
        cur["smem"] = int(sm.group(1)) if sm else 0
        rows.append(cur)
        cur = None
names = [r["kernel"] for r in rows]
try:
    demangled = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
except OSError:
    demangled = names
for r, d in sorted(zip(rows, demangled), key=lambda rd: (rd[0]["arch"], rd[1])):
    d = re.sub(r"myq::cuda::\(anonymous namespace\)::", "", d)
    print(f"{name:24s} {r['arch']:7s} regs={r['regs']:3d} spill_st={r.get('st', 0):4d} "
          f"spill_ld={r.get('ld', 0):4d} stack={r.get('stack', 0):4d} smem_static={r['smem']:5d}  {d}")
PYEOF
        done
    } >"$REPORT"
    local kernels spills
    kernels=$(grep -vc '^#' "$REPORT")
    spills=$(grep -v '^#' "$REPORT" | grep -Ev 'spill_st= +0 spill_ld= +0 ' || true)
    echo "   $kernels kernel/arch entries, report: ${REPORT#"$ROOT"/}"
    if [ "$kernels" -eq 0 ] && [ "$status" = PASS ]; then
        echo "   no ptxas output parsed"; status=FAIL
    fi
    if [ -n "$spills" ]; then
        echo "   kernels spilling to local memory:"; echo "$spills" | sed 's/^/     /'
        status=FAIL
    fi
    rm -rf "$log"
    result "a. kernel files compile (nvcc sm_80 + sm_90a), no spills" $status $((SECONDS - t0))
}

# ---- b. full extension against the CUDA build of torch ------------------------------------------
step_b() {
    local t0=$SECONDS
    echo "== b. build + link the extension against CUDA torch in $VENV"
    if [ -n "${VENV_PID:-}" ]; then
        echo "   waiting for the venv started in the background (log: $VENV.log)"
        wait "$VENV_PID" || { tail -20 "$VENV.log"; result "b1. CUDA torch venv" FAIL $((SECONDS - VENV_T0)); return; }
        t0=$VENV_T0
    fi
    if ! venv_ok; then
        create_venv || { tail -20 "$VENV.log"; result "b1. CUDA torch venv" FAIL $((SECONDS - t0)); return; }
    fi
    "$VENV/bin/python" -c "import ninja" 2>/dev/null || "$VENV/bin/pip" install -q ninja setuptools wheel
    result "b1. CUDA torch venv ($("$VENV/bin/python" -c 'import torch; print(torch.__version__)'))" PASS $((SECONDS - t0))

    t0=$SECONDS
    mkdir -p "$BUILD/src"
    # a copy of the tree (tracked and untracked-but-not-ignored files), so the CPU build in the
    # working tree is untouched; unchanged files keep their time stamps -> ninja rebuilds little
    git ls-files -co --exclude-standard -z | python3 -c '
import os, shutil, sys
src, dst = os.getcwd(), sys.argv[1]
keep = set()
for rel in sys.stdin.read().split("\0"):
    if not rel or not os.path.isfile(rel):
        continue
    keep.add(rel)
    out = os.path.join(dst, rel)
    if os.path.isfile(out):
        with open(rel, "rb") as a, open(out, "rb") as b:
            if a.read() == b.read():
                continue  # unchanged: keep its time stamp so ninja does not rebuild it
    os.makedirs(os.path.dirname(out), exist_ok=True)
    shutil.copy2(rel, out)
for base, dirs, files in os.walk(dst):  # drop files deleted from the tree (not build outputs)
    dirs[:] = [d for d in dirs if d not in ("build", ".git") and not d.endswith(".egg-info")]
    for f in files:
        rel = os.path.relpath(os.path.join(base, f), dst)
        if rel not in keep and not f.endswith(".so"):
            os.remove(os.path.join(base, f))
' "$BUILD/src"
    local jobs
    jobs=$(nproc 2>/dev/null || echo 2)
    if ! (cd "$BUILD/src" && MAX_JOBS=$jobs MYQ_BUILD_CUDA=1 CUDA_HOME="$CUDA_HOME" \
            "$VENV/bin/pip" install -q --no-build-isolation --no-deps . >"$BUILD/build.log" 2>&1); then
        tail -40 "$BUILD/build.log"
        result "b2. MYQ_BUILD_CUDA=1 pip install . (build + link)" FAIL $((SECONDS - t0))
        return
    fi
    result "b2. MYQ_BUILD_CUDA=1 pip install . (build + link)" PASS $((SECONDS - t0))

    t0=$SECONDS
    if (cd /tmp && "$VENV/bin/python" - <<'PYEOF'
import sys
import torch
import myq_kernels
ops = sys.modules["myq_kernels.ops"]
cpp = myq_kernels.backends()["cpp"]
assert cpp.available, cpp.reason
missing = [op for op in ops.SCHEMAS if not torch._C._dispatch_has_kernel_for_dispatch_key(f"myq::{op}", "CUDA")]
print("   extension:", myq_kernels._C.__file__)
print("   cuda available:", torch.cuda.is_available(), "| CUDA kernels registered for:",
      ", ".join(op for op in ops.SCHEMAS if op not in missing))
for b in myq_kernels.backends().values():
    print("  ", b)
assert not missing, f"no CUDA kernel registered for {missing}"
assert "CUDA kernels built" in cpp.reason or "CUDA kernels" in cpp.reason, cpp.reason
PYEOF
    ); then
        result "b3. import without a GPU; CUDA kernels registered for every op" PASS $((SECONDS - t0))
    else
        result "b3. import without a GPU; CUDA kernels registered for every op" FAIL $((SECONDS - t0))
    fi
}

# ---- c. Triton kernels under the interpreter ---------------------------------------------------
step_c() {
    local t0=$SECONDS
    echo "== c. Triton kernels on CPU tensors (TRITON_INTERPRET=1): python_tests/test_triton.py"
    if TRITON_INTERPRET=1 MYQ_BACKEND=triton "$PY" -m pytest python_tests/test_triton.py -q -p no:cacheprovider; then
        result "c. Triton kernels pass the op tests (TRITON_INTERPRET=1)" PASS $((SECONDS - t0))
    else
        result "c. Triton kernels pass the op tests (TRITON_INTERPRET=1)" FAIL $((SECONDS - t0))
    fi
}

# ---- d. the CUDA kernels in the CPU emulator ----------------------------------------------------
step_d() {
    local t0=$SECONDS
    echo "== d. CUDA kernels in the CPU emulator (csrc/cuda/sim/run_sim.py)"
    if "$PY" csrc/cuda/sim/run_sim.py | grep -v "^PASS "; then
        result "d. CUDA kernels match the reference in the CPU emulator" PASS $((SECONDS - t0))
    else
        result "d. CUDA kernels match the reference in the CPU emulator" FAIL $((SECONDS - t0))
    fi
}

venv_ok() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.version.cuda is None)" 2>/dev/null
}
create_venv() {  # ~1-3 min, ~5 GB: the CUDA build of torch, from the local wheel cache
    echo "   creating $VENV: pip install torch==2.14.1 numpy ninja (CUDA build, ~5 GB)"
    rm -rf "$VENV" && python3 -m venv "$VENV" &&
        "$VENV/bin/pip" install -q torch==2.14.1 numpy ninja setuptools wheel >"$VENV.log" 2>&1
}
# The venv is mostly disk I/O: build it in the background while step a compiles.
case " $STEPS " in
    *" b "*)
        if ! venv_ok; then
            mkdir -p "$(dirname "$VENV")"
            VENV_T0=$SECONDS
            create_venv &
            VENV_PID=$!
        fi ;;
esac

for s in $STEPS; do
    "step_$s"
done
echo "== summary"
printf '%s\n' "${SUMMARY[@]}"
if [ $FAILED -ne 0 ]; then
    echo "cuda_checks: FAIL"
    exit 1
fi
echo "cuda_checks: PASS"
