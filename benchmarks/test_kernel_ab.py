"""kernel_ab.sh builds and runs: HEAD's kernels against the working tree's, on a tiny shape."""
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("op,k", [("int8", 200), ("int4", 256)])
def test_kernel_ab_runs(op, k):
    if shutil.which("g++") is None or not os.path.isdir(os.path.join(ROOT, ".git")):
        pytest.skip("needs g++ and a git checkout")  # the package build needs g++ anyway
    out = subprocess.run(["bash", "benchmarks/kernel_ab.sh", "HEAD", op, "50", str(k), "3", "2", "10"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert re.fullmatch(rf"{op} 50x{k} M=3, 2 copies, 5 calls each: v0 \d+ us, v1 \d+ us, v0/v1 [\d.]+x", line), line


def test_kernel_ab_rejects_bad_arguments():
    out = subprocess.run(["bash", "benchmarks/kernel_ab.sh", "HEAD", "int5", "50", "256", "3"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2 and "usage: kernel_ab" in out.stderr
