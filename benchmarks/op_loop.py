"""One op against its float baseline in a plain loop, hot weights (one copy), 4096^2 by default:
the quick check behind the kernel changes in RESULTS.md, where the full report is too slow.

    python benchmarks/op_loop.py int8_linear_dynamic 128 512
    python benchmarks/op_loop.py int8_linear 33 128 --n 4096 --k 4096
    python benchmarks/op_loop.py int4_linear 128 --group 128

int8_linear_dynamic is compared with torch._int_mm on int8 inputs (the GEMM alone, no
quantization), int8_linear and int4_linear (symmetric, group-wise scales) with F.linear on
the dequantized weight in each activation dtype.
Ours and its baseline are timed in turns (median per call, as `myq bench` times them).
"""
import argparse

import torch
import torch.nn.functional as F

import myq_kernels
from myq_kernels.bench import _time_together


def in_turns(ours, base, seconds):
    """(ours, baseline) median seconds per call, the two timed in turns on one weight."""
    times = _time_together({"ours": (ours, [()]), "base": (base, [()])}, seconds)
    return times["ours"], times["base"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("op", choices=["int8_linear", "int8_linear_dynamic", "int4_linear"])
    parser.add_argument("m", type=int, nargs="+", help="rows of x")
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--group", type=int, default=128, help="int4_linear's group size")
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    n, k = args.n, args.k
    if args.op == "int4_linear":
        codes = torch.randint(0, 16, (n, k), dtype=torch.uint8)
        packed = myq_kernels.pack_int4(codes)
        scales = torch.rand(n, k // args.group) / 10
        dequantized = (codes.float() - 8) * scales.repeat_interleave(args.group, dim=1)
        run = lambda xd: myq_kernels.int4_linear(xd, packed, scales, None, args.group)
    else:
        weight = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        scale = torch.rand(n) / 100
        dequantized = weight.float() * scale[:, None]
        run = lambda xd: myq_kernels.int8_linear(xd, weight, scale)
    for m in args.m:
        x = torch.randn(m, k)
        cells = [f"M={m}"]
        xq = torch.randint(-127, 128, (m, k), dtype=torch.int8)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            xd = x.to(dtype)
            if args.op == "int8_linear_dynamic":
                ours, base = in_turns(lambda: myq_kernels.int8_linear_dynamic(xd, weight, scale),
                                      lambda: torch._int_mm(xq, weight.T), args.seconds)
                cells.append(f"{dtype}: ours {ours * 1e3:.2f} ms, torch._int_mm {base * 1e3:.2f} ms "
                             f"({base / ours:.0%} of its speed)")
            else:
                wd = dequantized.to(dtype)
                ours, base = in_turns(lambda: run(xd), lambda: F.linear(xd, wd), args.seconds)
                cells.append(f"{dtype}: F.linear {base * 1e3:.2f} ms, ours {ours * 1e3:.2f} ms ({base / ours:.2f}x)")
        print("; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
