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


def want_cuda() -> bool:
    forced = os.environ.get("MYQ_BUILD_CUDA")
    if forced is not None and forced not in ("0", "1"):
        sys.exit(f"myq_kernels: MYQ_BUILD_CUDA must be 0 or 1, got {forced!r}")
    cuda_sources = glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu"))
    possible = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if forced == "1":
        if not possible:
            sys.exit(
                "myq_kernels: MYQ_BUILD_CUDA=1 but "
                + ("this torch is a CPU-only build" if torch.version.cuda is None
                   else "nvcc was not found (set CUDA_HOME)")
            )
        return bool(cuda_sources)
    if forced == "0":
        return False
    return possible and bool(cuda_sources)


def cuda_include_dirs() -> list[str]:
    # pip's CUDA torch ships CUDA headers (cusparse.h, ...) that ATen/cuda needs but a
    # bare nvcc install may lack.
    dirs = []
    for site in sys.path:
        dirs += glob.glob(os.path.join(site, "nvidia", "cu*", "include"))
        dirs += glob.glob(os.path.join(site, "nvidia", "*", "include"))
    return sorted(set(d for d in dirs if os.path.isdir(d)))


def extension():
    cpu_sources = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # No -mavx512*: the AVX-512 code is compiled per function with target attributes
    # and chosen at run time, so the binary runs on any x86-64.
    cxx = ["-O3", "-fopenmp", "-DMYQ_WITH_OPENMP"]
    link = ["-fopenmp"]
    if want_cuda():
        sources = cpu_sources + sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        nvcc = ["-O3", "-lineinfo",
                "-gencode=arch=compute_80,code=sm_80",
                "-gencode=arch=compute_90a,code=sm_90a"]
        return cpp_extension.CUDAExtension(
            "myq_kernels._C", sources,
            include_dirs=[os.path.join(HERE, "csrc")] + cuda_include_dirs(),
            extra_compile_args={"cxx": cxx + ["-DMYQ_WITH_CUDA"], "nvcc": nvcc},
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
