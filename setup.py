"""Builds myq_kernels._C: the C++ CPU kernels always, the CUDA kernels when possible.

    pip install torch numpy ninja
    pip install --no-build-isolation -e .

MYQ_BUILD_CUDA=0/1 forces the CUDA part off/on; by default it is built when the
installed torch is a CUDA build and nvcc is found.
"""
import glob
import os
import sys

from setuptools import setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:
    sys.exit(
        "myq_kernels: building needs PyTorch installed first, and no build isolation:\n"
        "    pip install torch numpy ninja\n"
        "    pip install --no-build-isolation -e ."
    )

HERE = os.path.dirname(os.path.abspath(__file__))


def _fix_cuda_home():
    """torch guesses CUDA_HOME from the nvcc on PATH; a wrapper script there (e.g.
    /usr/local/bin/nvcc) gives a wrong guess (/usr/local). Keep the guess only if it holds a
    CUDA toolkit, else try $CUDA_HOME, $CUDA_PATH and /usr/local/cuda."""
    def is_toolkit(d):
        return d and os.path.isfile(os.path.join(d, "bin", "nvcc")) and \
            os.path.isfile(os.path.join(d, "include", "cuda_runtime_api.h"))
    if is_toolkit(cpp_extension.CUDA_HOME):
        return
    for d in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if is_toolkit(d):
            cpp_extension.CUDA_HOME = d
            os.environ["CUDA_HOME"] = d
            return
    cpp_extension.CUDA_HOME = None


def want_cuda() -> bool:
    forced = os.environ.get("MYQ_BUILD_CUDA")
    if forced is not None and forced not in ("0", "1"):
        sys.exit(f"myq_kernels: MYQ_BUILD_CUDA must be 0 or 1, got {forced!r}")
    if forced == "0" or torch.version.cuda is None:
        if forced == "1":
            sys.exit("myq_kernels: MYQ_BUILD_CUDA=1 but this torch is a CPU-only build")
        return False
    _fix_cuda_home()
    cuda_sources = glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu"))
    if forced == "1" and cpp_extension.CUDA_HOME is None:
        sys.exit("myq_kernels: MYQ_BUILD_CUDA=1 but no CUDA toolkit (nvcc) was found: set CUDA_HOME")
    return cpp_extension.CUDA_HOME is not None and bool(cuda_sources)


def cuda_include_dirs() -> list[str]:
    """pip's CUDA torch ships the CUDA headers (nvidia/cu13/include: cusparse.h, cublas.h, ...)
    that ATen/cuda headers need and a bare nvcc install may lack. Returned only when the
    toolkit lacks them; they go *after* the toolkit's own headers (-idirafter), so nvcc's
    cuda_runtime / cuda_fp16 headers always win."""
    if os.path.isfile(os.path.join(cpp_extension.CUDA_HOME or "", "include", "cusparse.h")):
        return []
    dirs = []
    for site in sys.path:
        dirs += glob.glob(os.path.join(site or ".", "nvidia", "cu[0-9]*", "include"))
    return sorted(set(os.path.abspath(d) for d in dirs if os.path.isdir(d)))


def extension():
    cpu_sources = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # No -mavx512*: the AVX-512 code is compiled per function with target attributes
    # and chosen at run time, so the binary runs on any x86-64.
    cxx = ["-O3", "-fopenmp", "-DMYQ_WITH_OPENMP"]
    link = ["-fopenmp"]
    if want_cuda():
        sources = cpu_sources + sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        after = [f for d in cuda_include_dirs() for f in ("-idirafter", d)]
        nvcc = ["-O3", "-lineinfo",
                "-gencode=arch=compute_80,code=sm_80",
                "-gencode=arch=compute_90a,code=sm_90a"]
        return cpp_extension.CUDAExtension(
            "myq_kernels._C", sources,
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": cxx + ["-DMYQ_WITH_CUDA"] + after, "nvcc": nvcc},
            extra_link_args=link,
        )
    return cpp_extension.CppExtension(
        "myq_kernels._C", cpu_sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=link,
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
