"""The machine a run is on: how many CPU threads torch should use beside other work, and the
processor's name for the records that benchmarks and studies write.

Its own module because the trainer, the study's report and the benchmarks all ask, and none
of them should have to import the training loop to learn the processor's name.
"""

from __future__ import annotations

import os
import platform
import time


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which a container's CPU set narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_threads(requested: int | None = None) -> tuple[int, str]:
    """How many intra-op threads torch should use on the CPU, and why.

    subtle: torch's threads spin while they wait for each other. On a machine where another
    process is busy, as many threads as cores fight it for every core and training slows
    ten-fold; one thread fewer per busy core keeps most of the speed. So: an explicit
    request wins, then OMP_NUM_THREADS, then the usable cores (shared among torchrun's local
    ranks) less the cores other processes keep busy right now (busy_elsewhere), at least one.
    """
    if requested:
        return requested, "--threads"
    if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"])), "OMP_NUM_THREADS"
    cores = usable_cores()
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    share = max(1, cores // local)
    elsewhere = busy_elsewhere()
    busy = min(share - 1, int(elsewhere / local + 0.5)) if elsewhere > 0.5 else 0
    return share - busy, (
        f"{cores} usable cores"
        + (f" over {local} local ranks" if local > 1 else "")
        + (f", {elsewhere:.1f} busy with other work" if busy else "")
    )


# The vector and matrix extensions that decide a CPU's GEMM rate, as /proc/cpuinfo flags them.
ISA_FLAGS = (
    ("amx_tile", "AMX"),
    ("avx512_vnni", "AVX-512 VNNI"),
    ("avx512f", "AVX-512"),
    ("avx_vnni", "AVX-VNNI"),
    ("avx2", "AVX2"),
)


def cpu_isa(cpuinfo: str | None = None) -> list[str]:
    """The extensions of ISA_FLAGS this processor has ("AVX-512", "AVX2", ...), widest first:
    two processors of one model name ("AMD EPYC") can differ in them, and in speed with them.
    `cpuinfo`: the text of /proc/cpuinfo (read when None; [] where there is none)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return []
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return [name for flag, name in ISA_FLAGS if flag in flags]


def cpu_name() -> str:
    """The processor's model name ("AMD EPYC 7B13"), for the records benchmarks and studies write."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def describe() -> dict:
    """The processor a record's numbers come from: its model, its vector extensions, its cores (all,
    and those this process may use), torch's threads and the kernels torch picked for it."""
    import torch

    return {
        "processor": cpu_name(),
        "isa": cpu_isa(),
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def _cpu_ticks() -> tuple[int, int, int]:
    """(all cores' ticks, their idle + iowait + niced ticks, this process's user + system ticks)
    so far. Niced time counts as free: a process run with `nice` yields its core to ours."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()
    nice = ticks[1] if os.nice(0) == 0 else 0  # a niced trainer's own time is in that column too
    return sum(ticks), ticks[3] + ticks[4] + nice, int(own[11]) + int(own[12])


def busy_elsewhere(interval: float = 0.2) -> float:
    """How many cores other processes keep busy now at normal priority: the machine's busy
    time over `interval`, less niced time and this process's own (/proc/stat and
    /proc/self/stat); the 1-minute load average where /proc is missing (which counts this
    process too)."""
    try:
        (total0, idle0, own0), _ = _cpu_ticks(), time.sleep(interval)
        total1, idle1, own1 = _cpu_ticks()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    total = total1 - total0
    if total <= 0:
        return 0.0
    busy = (total - (idle1 - idle0)) - (own1 - own0)
    return max(0.0, busy / total * (os.cpu_count() or 1))
