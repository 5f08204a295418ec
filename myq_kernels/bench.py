"""The CPU benchmark report: each op next to F.linear and torch's own quantized ops.

    myq bench            (or: python benchmarks/report.py)

Every row is timed in the same run as its baselines, in turns with them, and reported as
time, achieved GB/s (weight bytes streamed, for small M: memory-bound) or GOP/s (for
large M: compute-bound), the fraction of this machine's limit measured in the same run,
and the speed-up over each baseline. "Cold" weights cycle through enough copies (> L3)
that each call streams its weight from memory, as in a real model; "hot" reuses one copy.
The table is printed, written as JSON, and drawn as a PNG of speed-up against M.
"""
import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from . import ops, primitives
from .backends import backends

M_VALUES = (1, 2, 4, 8, 16, 32, 128, 512, 2048)
SQUARE = (4096, 4096)
OTHER_SHAPES = ((11008, 4096), (4096, 11008), (3072, 768), (1536, 576))  # (N, K)
OTHER_M = (1, 8, 128, 512)
MEMORY_BOUND_MAX_M = 16
GROUP = 128


def parse_shapes(text):
    """"4096x4096,1536x576" -> [(4096, 4096), (1536, 576)] (N x K, K even for int4)."""
    shapes = []
    for item in text.split(","):
        n, _, k = item.strip().partition("x")
        if not (n.isdigit() and k.isdigit() and int(n) > 0 and int(k) > 0 and int(k) % 2 == 0):
            raise argparse.ArgumentTypeError(f"{item!r} is not N x K with positive N and even K, e.g. 1536x576")
        shapes.append((int(n), int(k)))
    return shapes


DTYPE_NAMES = {"fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16",
               "fp16": "fp16", "float16": "fp16"}


def parse_dtypes(text):
    """"fp32,bfloat16" -> ("fp32", "bf16"): the keys of DTYPES, torch's names accepted too."""
    names = []
    for item in text.split(","):
        name = DTYPE_NAMES.get(item.strip().lower())
        if name is None:
            raise argparse.ArgumentTypeError(
                f"{item.strip()!r} is not an activation dtype; use fp32, bf16 or fp16 "
                "(or float32, bfloat16, float16)")
        names.append(name)
    return tuple(names)


def group_size(k):
    """GROUP, or the largest of 64 / 32 that divides K (e.g. K = 576)."""
    return next(g for g in (GROUP, 64, 32, k) if k % g == 0)


@dataclass
class Limits:
    read_gb_s: float        # streaming read bandwidth, GB/s
    fp32_gflop_s: float     # F.linear fp32 4096^3
    bf16_gflop_s: float     # F.linear bf16 4096^3
    int8_gop_s: float       # torch._int_mm 4096^3


@dataclass
class Row:
    op: str
    dtype: str
    m: int
    n: int
    k: int
    weights: str            # hot | cold
    us: float
    rate: float             # GB/s of weights when memory-bound, else GOP/s
    unit: str
    of_limit: float         # rate / machine limit
    vs: dict = field(default_factory=dict)  # baseline name -> speed-up (baseline time / ours)


# Turns per case. With 3, a 0.1 s call (M = 512) ran 3 times in all and one slow spell of the
# VM could hold all of one case's calls: the same code measured 1.00x and 1.37x F.linear fp32
# in two quick reports. 7 turns of one call each spread such a spell over more of the cases
# (two quick reports with 7 still differed by up to 1.2x in a ratio on that VM).
ROUNDS = 7


def _time_together(cases, min_seconds, min_calls=ROUNDS, max_seconds=3.0, setups=None,
                   optional=()):
    """Median seconds per call of each case {name: (fn, copies)}, the cases timed in turns.

    The run is split into ROUNDS rounds, and in each one every case gets min_seconds / ROUNDS,
    cycling through its `copies` (argument tuples) call by call. On a machine whose speed
    drifts from one second to the next (a shared VM's clock and memory bandwidth do), the drift
    then falls on ours and the baselines alike, so their ratio holds even when the times move.
    A case that reuses one copy (hot weights) makes an untimed call at the start of a turn
    that follows another case's, which evicted its weights. Each case makes at least `min_calls`
    timed calls and stops after `max_seconds`, so that a very slow baseline does not dominate.
    setups: {name: callable} run before each of that case's turns (e.g. set the thread count).
    An `optional` case whose first call raises RuntimeError or NotImplementedError (a torch
    baseline with no kernel for that dtype) is left out of the result.
    """
    times, spent, position, live = {}, {}, {}, []
    for name, (fn, copies) in cases.items():
        if setups and name in setups:
            setups[name]()
        try:
            fn(*copies[0])  # warm-up, and the check that torch can run it
        except (RuntimeError, NotImplementedError):
            if name not in optional:
                raise
            continue
        times[name], spent[name], position[name] = [], 0.0, 0
        live.append(name)
    per_round_calls = -(-min_calls // ROUNDS)
    last = live[-1] if live else None
    for _ in range(ROUNDS):
        for name in live:
            fn, copies = cases[name]
            if times[name] and spent[name] > max_seconds:
                continue
            if setups and name in setups:
                setups[name]()
            start, calls = time.perf_counter(), 0
            if len(copies) == 1 and last != name:
                fn(*copies[0])
            last = name
            while calls < per_round_calls or time.perf_counter() - start < min_seconds / ROUNDS:
                if times[name] and spent[name] + time.perf_counter() - start > max_seconds:
                    break
                args = copies[position[name] % len(copies)]
                position[name] += 1
                t0 = time.perf_counter()
                fn(*args)
                times[name].append(time.perf_counter() - t0)
                calls += 1
            spent[name] += time.perf_counter() - start
    return {name: statistics.median(times[name]) for name in live if times[name]}


def _timeit(fn, copies, min_seconds):
    """Median seconds per call of one function (see _time_together)."""
    return _time_together({"fn": (fn, copies)}, min_seconds)["fn"]


def _copies_needed(bytes_per_copy, cold, cold_bytes):
    return max(2, -(-cold_bytes // bytes_per_copy)) if cold else 1


def measure_limits(min_seconds=0.3) -> Limits:
    """Streaming-read bandwidth and GEMM peaks of this machine, measured now."""
    big = torch.randint(-100, 100, (1 << 30,), dtype=torch.int8)
    read = max(big.numel() / _timeit(lambda t: t.amax(), [(big,)], min_seconds),
               big.numel() / _timeit(lambda t: t.view(torch.float32).sum(), [(big,)], min_seconds))
    del big
    n = 4096
    a, b = torch.randn(n, n), torch.randn(n, n)
    fp32 = 2 * n ** 3 / _timeit(F.linear, [(a, b)], min_seconds)
    bf16 = 2 * n ** 3 / _timeit(F.linear, [(a.bfloat16(), b.bfloat16())], min_seconds)
    ai = torch.randint(-127, 128, (n, n), dtype=torch.int8)
    int8 = 2 * n ** 3 / _timeit(torch._int_mm, [(ai, ai.T)], min_seconds)
    return Limits(read / 1e9, fp32 / 1e9, bf16 / 1e9, int8 / 1e9)


class Weights:
    """Quantized and float copies of one random [N, K] weight, made once per shape."""

    def __init__(self, n, k, cold_bytes):
        self.n, self.k, self.cold_bytes = n, k, cold_bytes
        self.w = torch.randn(n, k) / k ** 0.5
        self._cache = {}

    def get(self, kind, cold):
        key = (kind, cold)
        if key not in self._cache:
            one = self._make(kind)
            size = sum(t.numel() * t.element_size() for t in one if isinstance(t, torch.Tensor))
            # enough copies that cycling through them streams every call's weight from memory
            count = _copies_needed(size, cold, self.cold_bytes)
            self._cache[key] = [one] + [tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in one)
                                        for _ in range(count - 1)]
        return self._cache[key]

    def _make(self, kind):
        w = self.w
        if kind in ("fp32", "bf16", "fp16"):
            return (w.to(DTYPES[kind]),)
        if kind == "int8":
            return primitives.absmax_quantize(w, 8, "channel")
        if kind == "int4":
            return primitives.quantize_int4_weight(w, group_size(self.k), symmetric=False)
        if kind == "torch_int8pack":  # torch._weight_int8pack_mm: int8 [N, K], bf16 scales
            q, s = primitives.absmax_quantize(w, 8, "channel")
            return q, s.bfloat16()
        if kind == "torch_int4pack":  # torch._weight_int4pack_mm_for_cpu, group 128
            q, s, z = primitives.zeropoint_quantize(w, 4, group_size(self.k))
            packed = torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
            # torch's int4 format: w = (q - 8) * scale + zero_term, per [group, N]
            zero_term = (8 - z) * s
            return packed, torch.stack([s.T, zero_term.T], dim=-1).contiguous().bfloat16()
        raise ValueError(kind)

    def bytes(self, kind):
        return sum(t.numel() * t.element_size() for t in self.get(kind, cold=False)[0]
                   if isinstance(t, torch.Tensor))


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _torch_w8a8(x, w, s):
    """torch's composite W8A8: per-row quant, torch._int_mm, rescale (the baseline)."""
    xf = x.float()
    xs = xf.abs().amax(-1, keepdim=True).clamp(min=1e-12) / 127
    q = torch.round(xf / xs).to(torch.int8)
    return (torch._int_mm(q, w.T).float() * xs * s).to(x.dtype)


# op name -> (weight kind, function(x, *weights))
OURS = {
    "int8_linear": ("int8", lambda x, q, s: ops.int8_linear(x, q, s)),
    "int4_linear": ("int4", lambda x, p, s, z: ops.int4_linear(x, p, s, z, group_size(x.shape[-1]))),
    "int8_linear_dynamic": ("int8", lambda x, q, s: ops.int8_linear_dynamic(x, q, s)),
}
TORCH_QUANTIZED = {
    "int8_linear": ("torch_int8pack", "torch._weight_int8pack_mm",
                    lambda x, q, s: torch._weight_int8pack_mm(x, q, s.to(x.dtype))),
    "int4_linear": ("torch_int4pack", "torch._weight_int4pack_mm",
                    lambda x, p, sz: torch._weight_int4pack_mm_for_cpu(x, p, group_size(x.shape[-1]), sz.to(x.dtype))),
    "int8_linear_dynamic": ("int8", "torch W8A8 (_int_mm)", _torch_w8a8),
}


def bench_case(weights, op, dtype, m, cold, limits, min_seconds):
    n, k = weights.n, weights.k
    x = torch.randn(m, k).to(DTYPES[dtype])
    kind, fn = OURS[op]
    cases = {"ours": (lambda *a: fn(x, *a), weights.get(kind, cold)),
             "F.linear fp32": (lambda w: F.linear(x.float(), w), weights.get("fp32", cold))}
    if dtype != "fp32":
        cases[f"F.linear {dtype}"] = (lambda w: F.linear(x, w), weights.get(dtype, cold))
    tkind, tname, tfn = TORCH_QUANTIZED[op]
    if op != "int8_linear_dynamic" or m > 16:  # torch._int_mm on CPU wants M > 16
        cases[tname] = (lambda *a: tfn(x, *a), weights.get(tkind, cold))
    seconds = _time_together(cases, min_seconds, optional=[name for name in cases if name != "ours"])
    mine = seconds.pop("ours")
    vs = {name: t / mine for name, t in seconds.items()}

    weight_bytes = weights.bytes(kind)
    if m <= MEMORY_BOUND_MAX_M:
        rate, unit, limit = weight_bytes / mine / 1e9, "GB/s", limits.read_gb_s
    else:
        rate, unit = 2 * m * n * k / mine / 1e9, "GOP/s"
        limit = (limits.int8_gop_s if op == "int8_linear_dynamic"
                 else limits.fp32_gflop_s if dtype == "fp32" else limits.bf16_gflop_s)
    return Row(op, dtype, m, n, k, "cold" if cold else "hot", mine * 1e6, rate, unit, rate / limit, vs)


def thread_scaling(weights, op, dtype, m, min_seconds):
    """Speed-up of 2 threads over 1 on one case (compute-bound cases should give ~2x),
    the two timed in turns."""
    x = torch.randn(m, weights.k).to(DTYPES[dtype])
    kind, fn = OURS[op]
    call = (lambda *a: fn(x, *a), weights.get(kind, False))
    before = torch.get_num_threads()
    try:
        seconds = _time_together({1: call, 2: call}, min_seconds,
                                 setups={1: lambda: torch.set_num_threads(1), 2: lambda: torch.set_num_threads(2)})
    finally:
        torch.set_num_threads(before)
    return seconds[1] / seconds[2]


def format_table(rows, limits):
    baselines = list(dict.fromkeys(b for r in rows for b in r.vs))  # first-seen order
    head = ["op", "x", "M", "N x K", "weights", "time us", "rate", "% limit"] + [f"vs {b}" for b in baselines]
    lines = [[r.op, r.dtype, str(r.m), f"{r.n}x{r.k}", r.weights, f"{r.us:.0f}", f"{r.rate:.1f} {r.unit}",
              f"{100 * r.of_limit:.0f}%"] + [f"{r.vs[b]:.2f}x" if b in r.vs else "-" for b in baselines]
             for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = [f"limits measured in this run: read {limits.read_gb_s:.1f} GB/s, fp32 GEMM "
           f"{limits.fp32_gflop_s:.0f} GFLOP/s, bf16 GEMM {limits.bf16_gflop_s:.0f} GFLOP/s, "
           f"int8 torch._int_mm {limits.int8_gop_s:.0f} GOP/s; {torch.get_num_threads()} threads",
           "rate: GB/s of weight bytes for M <= 16 (memory-bound), else GOP/s; % limit is of the matching limit",
           fmt(head), fmt(["-" * w for w in widths])]
    return "\n".join(out + [fmt(line) for line in lines])


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    shape = SQUARE if any((r.n, r.k) == SQUARE for r in rows) else (rows[0].n, rows[0].k)
    square = [r for r in rows if (r.n, r.k) == shape and r.weights == "cold"]
    for op, dtype in sorted({(r.op, r.dtype) for r in square}):
        pts = sorted((r.m, r.vs.get("F.linear fp32")) for r in square if (r.op, r.dtype) == (op, dtype))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{op} ({dtype} x)")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("M (tokens per call)")
    ax.set_ylabel("speed-up over F.linear fp32")
    ax.set_title(f"myq_kernels on CPU, N x K = {shape[0]} x {shape[1]}, cold weights, "
                 f"{torch.get_num_threads()} threads")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args):
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    smoke = args.smoke
    min_seconds = 0.02 if smoke else args.min_seconds
    cold_bytes = (64 << 20) if smoke else args.cold_mib << 20
    print("backends:", "; ".join(str(b) for b in backends().values() if b.available))
    print("measuring machine limits ...", flush=True)
    limits = Limits(1, 1, 1, 1) if smoke else measure_limits()
    if smoke:
        shapes = [((256, 512), (1, 32))]
    elif args.quick:
        shapes = [(SQUARE, (1, 8, 128, 512))]
    else:
        shapes = [(SQUARE, M_VALUES)] + [(s, OTHER_M) for s in OTHER_SHAPES]
    if args.shapes:
        # the listed shapes at their usual M values; any other N x K at OTHER_M
        usual = dict([(SQUARE, M_VALUES)] + [(s, OTHER_M) for s in OTHER_SHAPES])
        shapes = [(s, usual.get(s, OTHER_M)) for s in args.shapes]
    dtypes = ("fp32", "bf16") if args.quick or smoke else args.dtypes
    rows, scaling = [], []
    for (n, k), m_values in shapes:
        weights = Weights(n, k, cold_bytes)
        for m in m_values:
            for op in OURS:
                for dtype in dtypes:
                    for cold in ((True, False) if m <= MEMORY_BOUND_MAX_M and not smoke else (True,)):
                        row = bench_case(weights, op, dtype, m, cold, limits, min_seconds)
                        rows.append(row)
                        print(f"  {op:20s} {dtype} M={m:<5d} {n}x{k} {row.weights}: {row.us:9.0f} us  "
                              + "  ".join(f"{b} {v:.2f}x" for b, v in row.vs.items()), flush=True)
        if (n, k) == SQUARE and not smoke:
            for op, dtype in (("int8_linear_dynamic", "fp32"), ("int8_linear", "bf16"), ("int4_linear", "bf16")):
                scaling.append({"op": op, "dtype": dtype, "m": 512, "n": n, "k": k,
                                "speedup_2_vs_1_thread": thread_scaling(weights, op, dtype, 512, min_seconds)})
        del weights
    table = format_table(rows, limits)
    print()
    print(table)
    for s in scaling:
        print(f"threads 1 -> 2: {s['op']} {s['dtype']} M={s['m']} {s['n']}x{s['k']}: {s['speedup_2_vs_1_thread']:.2f}x")
    os.makedirs(args.out, exist_ok=True)
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "backends": {b.name: b.reason for b in backends().values()}},
              "limits": asdict(limits), "rows": [asdict(r) for r in rows], "thread_scaling": scaling}
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "bench.txt"), "w") as f:
        f.write(table + "\n")
    if not smoke:
        plot(rows, os.path.join(args.out, "bench.png"))
    print(f"wrote {args.out}/bench.json, bench.txt" + ("" if smoke else ", bench.png"))
    return report


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--out", default="bench_out", help="folder for bench.json / bench.txt / bench.png")
    parser.add_argument("--quick", action="store_true", help="4096x4096 only, M in 1/8/128/512, fp32/bf16")
    parser.add_argument("--smoke", action="store_true", help="one small shape, seconds (CI)")
    parser.add_argument("--shapes", type=parse_shapes, default=None,
                        help="only these N x K shapes, e.g. 4096x4096,1536x576 (a shape outside the "
                             "default set runs at M = " + "/".join(map(str, OTHER_M)) + ")")
    parser.add_argument("--dtypes", type=parse_dtypes, default=("fp32", "bf16", "fp16"),
                        help="activation dtypes, comma-separated: fp32, bf16, fp16")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--min-seconds", type=float, default=0.25, help="time spent per measurement")
    parser.add_argument("--cold-mib", type=int, default=1024, help="weight copies cycled for cold runs (MiB)")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="myq bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
