"""One op against its float baseline in a plain loop, hot weights (one copy), 4096^2 by default:
the quick check behind the kernel changes in RESULTS.md, where the full report is too slow.

    python benchmarks/op_loop.py int8_linear_dynamic 128 512
    python benchmarks/op_loop.py int8_linear 33 128 --n 4096 --k 4096

int8_linear_dynamic is compared with torch._int_mm on int8 inputs (the GEMM alone, no
quantization), int8_linear with F.linear on the dequantized weight in each activation dtype.
Times are the mean over --seconds of back-to-back calls, taken in turns per row of x.
"""
import argparse
import time

import torch
import torch.nn.functional as F

import myq_kernels


def mean_seconds(fn, seconds):
    fn()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("op", choices=["int8_linear", "int8_linear_dynamic"])
    parser.add_argument("m", type=int, nargs="+", help="rows of x")
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    n, k = args.n, args.k
    weight = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    scale = torch.rand(n) / 100
    dequantized = weight.float() * scale[:, None]
    for m in args.m:
        x = torch.randn(m, k)
        cells = [f"M={m}"]
        if args.op == "int8_linear_dynamic":
            xq = torch.randint(-127, 128, (m, k), dtype=torch.int8)
            base = mean_seconds(lambda: torch._int_mm(xq, weight.T), args.seconds)
            cells.append(f"torch._int_mm {base * 1e3:.2f} ms ({2 * m * n * k / base / 1e9:.0f} GOP/s)")
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            xd = x.to(dtype)
            if args.op == "int8_linear_dynamic":
                ours = mean_seconds(lambda: myq_kernels.int8_linear_dynamic(xd, weight, scale), args.seconds)
                cells.append(f"{dtype}: ours {ours * 1e3:.2f} ms ({base / ours:.0%} of _int_mm's speed)")
            else:
                wd = dequantized.to(dtype)
                base = mean_seconds(lambda: F.linear(xd, wd), args.seconds)
                ours = mean_seconds(lambda: myq_kernels.int8_linear(xd, weight, scale), args.seconds)
                cells.append(f"{dtype}: F.linear {base * 1e3:.2f} ms, ours {ours * 1e3:.2f} ms ({base / ours:.2f}x)")
        print("; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
