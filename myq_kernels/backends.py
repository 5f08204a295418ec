"""Which kernel backends this machine can run, and why not when it can't.

Three backends implement every op:
  cpp     the compiled extension myq_kernels._C (C++ on CPU, CUDA on NVIDIA GPUs)
  triton  Triton kernels (CUDA tensors; CPU tensors only under TRITON_INTERPRET=1)
  torch   the pure-PyTorch reference, always available
`MYQ_BACKEND=cpp|triton|torch` forces one; otherwise each call takes the first
available in that order for the device of its input.
"""
import importlib.util
import os
from dataclasses import dataclass

import torch

NAMES = ("cpp", "triton", "torch")

try:
    from . import _C  # noqa: F401  (loading it registers the C++/CUDA kernels)
    _EXTENSION_ERROR = None
except ImportError as error:  # not built, or built against another torch
    _EXTENSION_ERROR = str(error)


@dataclass(frozen=True)
class Backend:
    name: str
    available: bool
    devices: tuple
    reason: str  # why it is unavailable, or what it runs on

    def __str__(self):
        state = "yes" if self.available else "no "
        return f"{self.name:7s} {state} {self.reason}"


# Filled on first look-up (ops.py looks up every op at import, before it registers Triton
# for CUDA), so that traced code (torch.compile) only reads a dict.
_EXTENSION_KERNELS = {}


def extension_has_kernel(op: str, device_type: str) -> bool:
    """True when the compiled extension registered `myq::op` for that device."""
    found = _EXTENSION_KERNELS.get((op, device_type))
    if found is None:
        key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
        found = (_EXTENSION_ERROR is None and key is not None
                 and torch._C._dispatch_has_kernel_for_dispatch_key(f"myq::{op}", key))
        _EXTENSION_KERNELS[(op, device_type)] = found
    return found


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _cpp() -> Backend:
    if _EXTENSION_ERROR is not None:
        return Backend("cpp", False, (), f"extension not loaded: {_EXTENSION_ERROR}")
    devices = ("cpu",)
    note = "C++ CPU kernels (" + _C.cpu_isa() + ")"
    if extension_has_kernel("int8_linear", "cuda"):
        if torch.cuda.is_available():
            devices += ("cuda",)
            note += "; CUDA kernels"
        else:
            note += "; CUDA kernels built, but no GPU visible"
    else:
        note += "; CUDA kernels not built"
    return Backend("cpp", True, devices, note)


def _triton() -> Backend:
    if importlib.util.find_spec("triton") is None:
        return Backend("triton", False, (), "triton is not installed")
    if torch.cuda.is_available():
        return Backend("triton", True, ("cuda",), "Triton kernels on CUDA")
    if triton_interpreted():
        return Backend("triton", True, ("cpu",), "Triton interpreter on CPU tensors (TRITON_INTERPRET=1)")
    return Backend("triton", False, (), "no GPU (set TRITON_INTERPRET=1 to run the kernels on CPU tensors)")


def _torch() -> Backend:
    return Backend("torch", True, ("cpu", "cuda", "mps", "xpu"), "pure-PyTorch reference")


def backends() -> dict:
    """{name: Backend} for cpp, triton and torch, saying what each can run here."""
    return {b.name: b for b in (_cpp(), _triton(), _torch())}


def forced_backend():
    name = os.environ.get("MYQ_BACKEND", "").strip().lower()
    if not name:
        return None
    if name not in NAMES:
        raise ValueError(f"MYQ_BACKEND must be one of {', '.join(NAMES)}; got {name!r}")
    return name
