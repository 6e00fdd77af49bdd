"""What every benchmark shares: timing, the machine's description, the GPU checks, and the JSON record.

Benchmarks run as modules from the repository root, e.g. `python -m benchmarks.bench_model`.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import statistics
import sys
import time

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}  # --dtype names -> torch attribute names


def torch_dtype(name: str):
    """The torch dtype of a --dtype name (bf16, fp16, fp32)."""
    import torch

    return getattr(torch, DTYPES[name])


def card_slug(name: str) -> str:
    """A GPU's name as a file-name part: "NVIDIA H100 80GB HBM3" -> "h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-")


def require_cuda(script: str) -> None:
    """Exit with a clear message, before measuring anything, when there is no GPU or no triton."""
    import torch

    if not torch.cuda.is_available():
        sys.exit(
            f"{script}: needs a CUDA GPU and none is visible, so nothing was measured. "
            "The kernels' correctness is tested on the CPU by `make test` (Triton's interpreter)."
        )
    try:
        import triton  # noqa: F401
    except ImportError:
        sys.exit(f"{script}: needs triton (pip install -e '.[kernels]'), so nothing was measured.")


def machine() -> dict:
    """Where the numbers come from: CPU or GPU model, its vector extensions and its fp32 GEMM rate
    measured now in this process (processors of one model name differ), cores, library versions."""
    import torch

    from roberta_scratch.machine import cpu_isa, cpu_name

    info = {
        "platform": platform.platform(),
        "processor": cpu_name(),
        "isa": cpu_isa(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gemm_gflops_fp32": round(cpu_gemm_flops() / 1e9, 1),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


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
        "command": command(),
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


def command() -> str:
    """The command line as the user typed it: `python -m benchmarks.x ...` for a module."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    program = ["python", "-m", spec.name] if spec is not None and spec.name else ["python", sys.argv[0]]
    return " ".join(program + sys.argv[1:])


def print_table(rows: list, columns: list) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)
