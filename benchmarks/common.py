"""What every CPU benchmark shares: interleaved timing, the machine's description and the JSON record.

Benchmarks run as modules from the repository root, e.g. `python -m benchmarks.bench_model`.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import time

from roberta_kernels.bench import command_line  # the one command recorder, the kernel lab's

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def machine() -> dict:
    """Where the numbers come from: the kernel lab's environment record (card, platform, versions)
    and the processor's model, vector extensions and fp32 GEMM rate measured now in this process
    (processors of one model name differ)."""
    from roberta_kernels.bench import environment
    from roberta_scratch.machine import describe

    return {**environment(), **describe(), "gemm_gflops_fp32": round(cpu_gemm_flops() / 1e9, 1)}


def time_interleaved(fns: dict, repeats: int, warmup: int = 1, sync=lambda: None) -> dict:
    """Median seconds per call of each function, run round-robin so drift hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            sync()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def cpu_gemm_flops(sizes=(1024, 2048), repeats: int = 3) -> float:
    """This machine's fp32 matmul rate in FLOP/s, now, in this process, with torch's current
    threads: the best of `repeats` square GEMMs of each size. It is the ceiling a CPU training
    step is compared with (a step is mostly GEMMs; everything else only lowers the fraction)."""
    import torch

    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm: threads started, pages touched
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def write_result(name: str, rows: list, extra: dict | None = None) -> str:
    """benchmarks/results/<name>_<date>.json with the machine, the date and the command."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    record = {
        "benchmark": name,
        "date": now.isoformat(timespec="seconds"),
        "command": command_line(),
        "machine": machine(),
        **(extra or {}),
        "results": rows,
    }
    path = os.path.join(RESULTS_DIR, f"{name}_{now:%Y-%m-%d}.json")
    n = 1
    while os.path.exists(path):  # a second run the same day gets its own file: results are never overwritten
        n += 1
        path = os.path.join(RESULTS_DIR, f"{name}_{now:%Y-%m-%d}-{n}.json")
    with open(path, "x") as f:
        json.dump(record, f, indent=2)
    return path


def print_table(rows: list, columns: list) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths, strict=True)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)
