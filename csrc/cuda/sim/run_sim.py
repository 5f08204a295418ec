"""Runs the myq CUDA kernels in the CPU emulator (cuda_sim.h) against the reference.

    python csrc/cuda/sim/run_sim.py [--build-dir DIR] [-k SUBSTRING]

Builds csrc/cuda/*.cu as C++ with -DMYQ_CUDA_SIM (g++, cached by a hash of the sources),
loads the result with ctypes and runs each launcher on CPU tensors, with outputs poisoned
(NaN / 0xAB) so an unwritten element fails. Shapes are chosen to take every code path:
the GEMV kernels (vector and scalar), the three tensor-core tile configurations of W8A16 /
W4A16 and of the W8A8 int8 GEMM (K tails, N and M edges, several column blocks), odd group
sizes, zero points or none, scales and bias in each float dtype, the bit-exact per-token
quantization, and pack/unpack. Exit status 0 when every case passes.

The emulator is slow (every CUDA thread a fiber): the shapes are small but cover the tiles.
"""
import argparse
import ctypes
import glob
import hashlib
import os
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
CUDA_DIR = os.path.dirname(HERE)
ROOT = os.path.dirname(os.path.dirname(CUDA_DIR))
sys.path.insert(0, ROOT)

from myq_kernels import primitives, reference  # noqa: E402

F32, F16, BF16 = 0, 1, 2
CODE = {torch.float32: F32, torch.float16: F16, torch.bfloat16: BF16}
UNIT = {torch.float32: 2e-6, torch.bfloat16: 2 ** -8, torch.float16: 2 ** -10}


def build(build_dir):
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    sources = sorted(glob.glob(os.path.join(CUDA_DIR, "*.cu"))) + [os.path.join(HERE, "sim_api.cpp")]
    headers = sorted(glob.glob(os.path.join(CUDA_DIR, "*.h*")) + glob.glob(os.path.join(HERE, "*.h")))
    digest = hashlib.sha256()
    for path in sources + headers:
        digest.update(path.encode())
        with open(path, "rb") as f:
            digest.update(f.read())
    lib = os.path.join(build_dir, f"libmyq_sim_{digest.hexdigest()[:16]}.so")
    if os.path.exists(lib):
        return lib
    os.makedirs(build_dir, exist_ok=True)
    flags = ["-x", "c++", "-std=c++17", "-O1", "-fPIC", "-ffp-contract=off", "-DMYQ_CUDA_SIM",
             f"-I{CUDA_DIR}", f"-I{os.path.join(cuda_home, 'include')}"]
    procs, objects = [], []
    for src in sources:
        obj = os.path.join(build_dir, os.path.basename(src) + ".o")
        objects.append(obj)
        procs.append((src, subprocess.Popen(["g++", *flags, "-c", src, "-o", obj],
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    for src, p in procs:
        out, _ = p.communicate()
        if p.returncode:
            sys.exit(f"emulator build failed for {src}:\n{out}")
    subprocess.run(["g++", "-shared", "-o", lib, *objects], check=True)
    return lib


class Kernels:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        for name in ("quantize_per_token", "int8_gemm", "w8a16", "w4a16", "pack_int4", "unpack_int4"):
            getattr(self.lib, f"myq_sim_{name}").restype = ctypes.c_int

    @staticmethod
    def p(t):
        return ctypes.c_void_p(0 if t is None else t.data_ptr())

    def call(self, name, *args):
        conv = [a if isinstance(a, ctypes.c_void_p) else ctypes.c_int64(a) if isinstance(a, int) and abs(a) > 2 ** 31
                else a for a in args]
        rc = getattr(self.lib, f"myq_sim_{name}")(*conv)
        assert rc == 0, f"{name} returned CUDA error {rc}"

    def w8a16(self, x, w, scale, bias):
        m, k = x.shape
        n = w.shape[0]
        out = torch.full((m, n), float("nan"), dtype=x.dtype)
        self.lib.myq_sim_w8a16(self.p(x), CODE[x.dtype], self.p(w), self.p(scale), CODE[scale.dtype], self.p(bias),
                               CODE[bias.dtype] if bias is not None else F32, self.p(out),
                               ctypes.c_int64(m), ctypes.c_int64(n), ctypes.c_int64(k))
        return out

    def w4a16(self, x, packed, scales, zeros, group_size, bias):
        m, k = x.shape
        n = packed.shape[0]
        out = torch.full((m, n), float("nan"), dtype=x.dtype)
        self.lib.myq_sim_w4a16(self.p(x), CODE[x.dtype], self.p(packed), self.p(scales), CODE[scales.dtype],
                               self.p(zeros), CODE[zeros.dtype] if zeros is not None else F32,
                               ctypes.c_int64(group_size), self.p(bias), CODE[bias.dtype] if bias is not None else F32,
                               self.p(out), ctypes.c_int64(m), ctypes.c_int64(n), ctypes.c_int64(k))
        return out

    def quantize(self, x, ldq):
        m, k = x.shape
        q = torch.full((m, ldq), 0x55, dtype=torch.int8)
        s = torch.full((m,), float("nan"))
        self.lib.myq_sim_quantize_per_token(self.p(x), CODE[x.dtype], ctypes.c_int64(m), ctypes.c_int64(k),
                                            self.p(q), ctypes.c_int64(ldq), self.p(s))
        return q, s

    def w8a8(self, x, w, scale, bias):
        """What the binding does: quantize into a K padded to 16, pad the weight, int8 GEMM."""
        m, k = x.shape
        n = w.shape[0]
        kp = (k + 15) // 16 * 16
        q, rs = self.quantize(x, kp)
        wp = torch.nn.functional.pad(w, (0, kp - k)).contiguous()
        out = torch.full((m, n), float("nan"), dtype=x.dtype)
        self.lib.myq_sim_int8_gemm(self.p(q), self.p(wp), ctypes.c_int64(m), ctypes.c_int64(n), ctypes.c_int64(kp),
                                   self.p(rs), self.p(scale), CODE[scale.dtype], self.p(bias),
                                   CODE[bias.dtype] if bias is not None else F32, self.p(out), CODE[out.dtype])
        return out, q[:, :k], rs, q[:, k:]

    def pack(self, q):
        out = torch.full((q.numel() // 2,), 0xAB, dtype=torch.uint8)
        self.lib.myq_sim_pack_int4(self.p(q), self.p(out), ctypes.c_int64(out.numel()))
        return out

    def unpack(self, p):
        out = torch.full((p.numel() * 2,), 0xAB, dtype=torch.uint8)
        self.lib.myq_sim_unpack_int4(self.p(p), self.p(out), ctypes.c_int64(p.numel()))
        return out


def close(y, expected, magnitude, dtype):
    if y.dtype != dtype or y.shape != expected.shape:
        return False, f"dtype/shape {y.dtype} {tuple(y.shape)}"
    if not torch.isfinite(y).all():
        bad = (~torch.isfinite(y)).nonzero()[:4].tolist()
        return False, f"non-finite (unwritten?) elements at {bad}"
    err = (y.double() - expected).abs()
    worst = (err / (UNIT[dtype] * magnitude + 1e-6)).max().item() if err.numel() else 0.0
    return worst <= 1.0, f"error {worst:.2f}x the bound"


# (M, N, K): GEMV (M <= 4: vector path when K % 32 == 0, else scalar), tensor-core tiles
# 16x64 (BK 256), 64x128 and 128x128 (BK 64) with K tails, several N blocks, M edges.
LINEAR = [(1, 37, 64), (3, 20, 96), (2, 9, 30), (5, 70, 256), (16, 64, 544), (11, 65, 96),
          (40, 130, 96), (65, 24, 64), (130, 136, 128)]
INT4 = [(1, 37, 64, 32), (4, 9, 128, 64), (3, 7, 80, 40), (5, 70, 256, 128), (16, 64, 544, 32),
        (9, 65, 192, 192), (40, 130, 128, 64), (40, 12, 120, 40), (130, 136, 128, 128)]
DYNAMIC = [(1, 9, 48), (5, 70, 100), (16, 64, 256), (17, 130, 64), (40, 136, 200), (65, 20, 32), (130, 136, 128),
           (260, 300, 96)]


def cases(k):
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    for (m, n, kk) in LINEAR:
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            for bias_on in (False, True):
                name = f"w8a16 M={m} N={n} K={kk} {str(dtype)[6:]} bias={bias_on}"

                def run(m=m, n=n, kk=kk, dtype=dtype, bias_on=bias_on):
                    x = randn(m, kk).to(dtype)
                    w, s = primitives.absmax_quantize(randn(n, kk), 8, "channel")
                    b = randn(n).to(dtype) if bias_on else None
                    sd = s.to(dtype) if bias_on else s  # scales in x's dtype half the time
                    y = k.w8a16(x, w, sd, b)
                    exp = reference.int8_linear(x.double(), w, sd.double(), None if b is None else b.double())
                    mag = (x.double().abs() @ w.double().abs().T) * sd.double().abs()
                    if b is not None:
                        mag = mag + b.double().abs()
                    return close(y, exp, mag, dtype)
                yield name, run
    for (m, n, kk, gs) in INT4:
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            for sym in (False, True):
                name = f"w4a16 M={m} N={n} K={kk} group={gs} {str(dtype)[6:]} {'sym' if sym else 'zeros'}"

                def run(m=m, n=n, kk=kk, gs=gs, dtype=dtype, sym=sym):
                    x = randn(m, kk).to(dtype)
                    packed, s, z = primitives.quantize_int4_weight(randn(n, kk), gs, symmetric=sym)
                    if not sym:
                        s, z = s.to(dtype), z.to(dtype)
                    b = randn(n) if sym else None
                    y = k.w4a16(x, packed, s, z, gs, b)
                    wd = reference.dequantize_int4(packed, s, z, gs, torch.float64)
                    exp, mag = x.double() @ wd.T, x.double().abs() @ wd.abs().T
                    if b is not None:
                        exp, mag = exp + b.double(), mag + b.double().abs()
                    return close(y, exp, mag, dtype)
                yield name, run
    for (m, n, kk) in DYNAMIC:
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            name = f"w8a8 M={m} N={n} K={kk} {str(dtype)[6:]}"

            def run(m=m, n=n, kk=kk, dtype=dtype):
                x = randn(m, kk).to(dtype)
                if m > 1:
                    x[0] = 0
                w, s = primitives.absmax_quantize(randn(n, kk), 8, "channel")
                b = randn(n)
                y, q, rs, pad = k.w8a8(x, w, s, b)
                q_ref, rs_ref = reference.quantize_per_token(x)
                if not (torch.equal(q, q_ref) and torch.equal(rs, rs_ref)):
                    return False, "per-token quantization differs from the reference"
                if pad.numel() and pad.abs().max() != 0:
                    return False, "quantization did not zero the K padding"
                exp = reference.int8_linear_dynamic(x.double(), w, s.double(), b.double())
                mag = (q.double().abs() @ w.double().abs().T) * rs.double()[:, None] * s.double() + b.double().abs()
                return close(y, exp, mag, dtype)
            yield name, run

    def ties():
        x = torch.randn(3, 40, generator=g)
        x[1, :8] = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5])
        q, s = k.quantize(x, 48)
        q_ref, s_ref = reference.quantize_per_token(x)
        return torch.equal(q[:, :40], q_ref) and torch.equal(s, s_ref), "round half to even at exact ties"
    yield "quantize_per_token ties", ties

    def pack_unpack():
        for n in (2, 14, 16, 34, 1000, 4098):
            q = torch.randint(0, 16, (n,), dtype=torch.uint8, generator=g)
            if not torch.equal(k.pack(q), reference.pack_int4(q)):
                return False, f"pack n={n}"
            p = reference.pack_int4(q)
            if not torch.equal(k.unpack(p), q):
                return False, f"unpack n={n}"
            qo = torch.randint(0, 16, (n + 2,), dtype=torch.uint8, generator=g)[1:-1]  # misaligned view
            if not torch.equal(k.pack(qo), reference.pack_int4(qo)):
                return False, f"pack misaligned n={n}"
        every = torch.arange(256, dtype=torch.uint8)
        return torch.equal(k.unpack(every), reference.unpack_int4(every)), "every byte"
    yield "pack/unpack", pack_unpack


def main():
    ap = argparse.ArgumentParser(description="myq CUDA kernels in the CPU emulator")
    ap.add_argument("--build-dir", default=os.environ.get("MYQ_SIM_BUILD", "/tmp/myq-cuda-sim"))
    ap.add_argument("-k", default="", help="run only cases whose name contains this")
    args = ap.parse_args()
    t0 = time.time()
    kernels = Kernels(build(args.build_dir))
    print(f"emulator built/loaded in {time.time() - t0:.1f}s")
    failed = total = 0
    for name, run in cases(kernels):
        if args.k not in name:
            continue
        total += 1
        t = time.time()
        try:
            ok, detail = run()
        except AssertionError as error:
            ok, detail = False, str(error)
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'} {name:60s} {time.time() - t:6.2f}s  {'' if ok else detail}", flush=True)
    print(f"{total - failed}/{total} emulated kernel cases passed in {time.time() - t0:.0f}s")
    sys.exit(1 if failed or not total else 0)


if __name__ == "__main__":
    main()
