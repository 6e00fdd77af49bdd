"""What every benchmark shares: timing, the machine's description, and the JSON record."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def machine() -> dict:
    """Where the numbers come from: CPU or GPU model, cores, library versions."""
    import torch

    info = {
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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


def write_result(name: str, rows: list, extra: dict | None = None) -> str:
    """benchmarks/results/<name>_<date>.json with the machine, the date and the command."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    record = {
        "benchmark": name,
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join(["python"] + sys.argv),
        "machine": machine(),
        **(extra or {}),
        "results": rows,
    }
    path = os.path.join(RESULTS_DIR, f"{name}_{now:%Y-%m-%d}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    return path


def print_table(rows: list, columns: list) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)
