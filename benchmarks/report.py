"""The CPU benchmark report (same as `myq bench`): table, JSON and PNG.

    python benchmarks/report.py --out benchmarks/out          # full run (~20 min on 2 cores)
    python benchmarks/report.py --quick                        # 4096x4096 only
"""
from myq_kernels.bench import main

if __name__ == "__main__":
    main()
