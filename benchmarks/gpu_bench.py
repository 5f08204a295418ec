"""GPU benchmark of the quantized linear ops: checks each op against the reference, then
times it against the dense baselines.

    python benchmarks/gpu_bench.py [--out benchmarks/gpu_bench_results.json] [--quick]

For M in {1, 16, 128, 1024, 4096} and (N, K) in {(4096, 4096), (14336, 4096), (4096, 14336)}:
  * W8A16 int8_linear, W4A16 int4_linear (group 128), W8A8 int8_linear_dynamic, on both GPU
    backends (cpp = compiled CUDA kernels, triton), x in float16;
  * baselines: F.linear in float16 and bfloat16 (cuBLAS), torch._int_mm (int8 cuBLAS, only
    the int8 product: no quantization, no dequant).
Timing: CUDA events around each call, L2 flushed (a 256 MB write) before every call so the
weights come from HBM as they do in a real model, warm-up, median of the repetitions.
Prints a table (microseconds, speed-up over fp16 F.linear = t_fp16 / t_op, effective GB/s of
the weight read) and the targets on an H100 (W4A16 M <= 16 >= 3x, W8A16 M = 1 >= 1.8x,
W8A8 M >= 1024 >= 1.5x fp16 cuBLAS), and writes everything as JSON.
Without a GPU it exits with status 2 and says so.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

M_VALUES = (1, 16, 128, 1024, 4096)
NK_VALUES = ((4096, 4096), (14336, 4096), (4096, 14336))
GROUP = 128
TARGETS = {  # (op, predicate on M, minimum speed-up over fp16 F.linear)
    "w4a16 M<=16 >= 3x fp16": ("int4_linear", lambda m: m <= 16, 3.0),
    "w8a16 M=1 >= 1.8x fp16": ("int8_linear", lambda m: m == 1, 1.8),
    "w8a8 M>=1024 >= 1.5x fp16": ("int8_linear_dynamic", lambda m: m >= 1024, 1.5),
}


def bench(fn, reps, warmup, flush):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        flush.zero_()  # evict the weights from L2
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)  # us
    return statistics.median(times)


def check(name, y, expected, magnitude, unit=2 ** -10):
    err = (y.double() - expected).abs()
    bound = unit * magnitude + 1e-6
    worst = (err / bound).max().item()
    ok = bool(torch.isfinite(y).all()) and worst <= 1.0
    return ok, worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "gpu_bench_results.json"))
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, first (N, K) only")
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args()

    if not torch.cuda.is_available():
        print("gpu_bench: no CUDA GPU visible (torch.cuda.is_available() is False); "
              "nothing to benchmark. Run it on a machine with an NVIDIA GPU.", file=sys.stderr)
        sys.exit(2)

    import myq_kernels
    from myq_kernels import primitives, reference

    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    backends = myq_kernels.backends()
    gpu_backends = [b for b in ("cpp", "triton") if backends[b].available and "cuda" in backends[b].devices]
    print(f"device: {props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, "
          f"backends: {', '.join(gpu_backends) or 'none'}")
    for b in backends.values():
        print("  ", b)
    reps = args.reps or (10 if args.quick else 50)
    warmup = 3 if args.quick else 10
    nk_values = NK_VALUES[:1] if args.quick else NK_VALUES
    flush = torch.empty(256 * 2**20, dtype=torch.uint8, device=dev)

    rows, failures = [], []
    torch.manual_seed(0)
    for n, k in nk_values:
        w = torch.randn(n, k, device=dev) / k ** 0.5
        q8, s8 = primitives.absmax_quantize(w, bits=8, granularity="channel")
        packed, s4, z4 = primitives.quantize_int4_weight(w, GROUP, symmetric=False)
        w16, wb16 = w.half(), w.bfloat16()
        q8t = q8.t()  # [K, N] column-major view for torch._int_mm
        bytes_w = {"fp16": n * k * 2, "int8": n * k, "int4": n * k // 2}
        for m in M_VALUES:
            x = torch.randn(m, k, device=dev).half()
            xb = x.bfloat16()
            base = {
                "F.linear fp16": bench(lambda: F.linear(x, w16), reps, warmup, flush),
                "F.linear bf16": bench(lambda: F.linear(xb, wb16), reps, warmup, flush),
            }
            if m > 16 and k % 8 == 0 and n % 8 == 0:
                xq = torch.randint(-127, 128, (m, k), device=dev, dtype=torch.int8)
                base["torch._int_mm"] = bench(lambda: torch._int_mm(xq, q8t), reps, warmup, flush)
            for name, t in base.items():
                rows.append(dict(op=name, backend="torch", M=m, N=n, K=k, us=t,
                                 speedup_vs_fp16=base["F.linear fp16"] / t, ok=True,
                                 weight_GBps=bytes_w["int8" if "int_mm" in name else "fp16"] / t / 1e3))
            # references for the checks (float32 compute on the GPU, float64 comparison)
            xd = x.double()
            exp8 = (xd @ q8.double().T) * s8.double()
            mag8 = (xd.abs() @ q8.double().abs().T) * s8.double()
            wd4 = reference.dequantize_int4(packed, s4, z4, GROUP, torch.float64)
            exp4, mag4 = xd @ wd4.T, xd.abs() @ wd4.abs().T
            qx, rs = reference.quantize_per_token(x)
            expd = (qx.double() @ q8.double().T) * rs.double()[:, None] * s8.double()
            magd = (qx.double().abs() @ q8.double().abs().T) * rs.double()[:, None] * s8.double()
            for backend in gpu_backends:
                os.environ["MYQ_BACKEND"] = backend
                cases = {
                    "int8_linear": (lambda: myq_kernels.int8_linear(x, q8, s8), exp8, mag8, "int8"),
                    "int4_linear": (lambda: myq_kernels.int4_linear(x, packed, s4, z4, GROUP), exp4, mag4, "int4"),
                    "int8_linear_dynamic": (lambda: myq_kernels.int8_linear_dynamic(x, q8, s8), expd, magd, "int8"),
                }
                for op, (fn, expected, magnitude, wkind) in cases.items():
                    try:
                        ok, worst = check(op, fn(), expected, magnitude)
                        t = bench(fn, reps, warmup, flush)
                    except Exception as error:  # keep benchmarking the rest; report it
                        ok, worst, t = False, float("nan"), float("nan")
                        print(f"  {op} {backend} M={m} N={n} K={k}: {type(error).__name__}: {error}")
                    if not ok:
                        failures.append(f"{op} [{backend}] M={m} N={n} K={k}: error {worst:.2f}x the bound")
                    rows.append(dict(op=op, backend=backend, M=m, N=n, K=k, us=t, ok=ok, error_vs_bound=worst,
                                     speedup_vs_fp16=base["F.linear fp16"] / t,
                                     speedup_vs_bf16=base["F.linear bf16"] / t,
                                     speedup_vs_int_mm=(base["torch._int_mm"] / t) if "torch._int_mm" in base else None,
                                     weight_GBps=bytes_w[wkind] / t / 1e3))
                os.environ.pop("MYQ_BACKEND", None)
            del x, xb

    print()
    print(f"{'op':22s} {'backend':8s} {'M':>5s} {'N':>6s} {'K':>6s} {'time us':>9s} {'x fp16':>7s} "
          f"{'x bf16':>7s} {'x int_mm':>8s} {'W GB/s':>7s}  check")
    for r in rows:
        vs_bf16 = r.get("speedup_vs_bf16")
        vs_mm = r.get("speedup_vs_int_mm")
        print(f"{r['op']:22s} {r['backend']:8s} {r['M']:5d} {r['N']:6d} {r['K']:6d} {r['us']:9.1f} "
              f"{r['speedup_vs_fp16']:7.2f} {'' if vs_bf16 is None else f'{vs_bf16:7.2f}':>7s} "
              f"{'' if vs_mm is None else f'{vs_mm:8.2f}':>8s} {r['weight_GBps']:7.0f}  "
              f"{'ok' if r['ok'] else 'FAIL'}")

    print("\ntargets (speed-up over fp16 F.linear, H100):")
    target_results = {}
    for label, (op, pred, need) in TARGETS.items():
        for backend in gpu_backends:
            got = [r["speedup_vs_fp16"] for r in rows if r["op"] == op and r["backend"] == backend and pred(r["M"])]
            worst = min(got) if got else float("nan")
            met = bool(got) and worst >= need
            target_results[f"{label} [{backend}]"] = dict(worst_speedup=worst, met=met)
            print(f"  {label:28s} [{backend:6s}] worst {worst:5.2f}x  {'met' if met else 'NOT met'}")

    result = dict(device=props.name, torch=torch.__version__, time=time.strftime("%Y-%m-%d %H:%M:%S"),
                  reps=reps, warmup=warmup, group_size=GROUP, rows=rows, targets=target_results,
                  failures=failures)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {args.out}")
    if failures:
        print("correctness FAILURES:\n  " + "\n  ".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
