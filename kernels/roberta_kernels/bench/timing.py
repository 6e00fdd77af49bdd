"""Medians of GPU timings, and the card's peaks measured in the same process."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_ms(
    fn: Callable,
    device: torch.device,
    *,
    grad_to_none=None,
    warmup_ms: float = 25,
    rep_ms: float = 100,
    repeats: int = 3,
) -> float:
    """The median milliseconds per call of fn.

    CUDA: triton.testing.do_bench(..., return_mode="median") (L2 flushed before each call;
    subtle: its default return_mode is the mean), or CUDA events and a median without triton.
    CPU (the dry run): one warmup call, then the median of `repeats` time.perf_counter timings.
    """
    if device.type == "cuda":
        try:
            from triton.testing import do_bench
        except ImportError:
            return _cuda_events_median_ms(fn, grad_to_none, warmup_ms, rep_ms)
        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none, return_mode="median"))
    times = []
    for i in range(1 + repeats):
        for t in grad_to_none or ():
            t.grad = None
        start = time.perf_counter()
        fn()
        if i:  # the first call is the warmup
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _cuda_events_median_ms(fn, grad_to_none, warmup_ms, rep_ms) -> float:
    """do_bench's method without triton: estimate, warm up, then time each call with events; the median."""
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")  # bigger than any L2
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    estimate_ms = max((time.perf_counter() - start) * 1e3 / 3, 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate_ms))):
        fn()
    events = []
    for _ in range(max(3, int(rep_ms / estimate_ms))):
        for t in grad_to_none or ():
            t.grad = None
        flush.zero_()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        events.append((begin, end))
    torch.cuda.synchronize()
    return statistics.median(b.elapsed_time(e) for b, e in events)


def measure_matmul_tflops(device, dtype, n: int, **timing) -> float:
    """The card's dense matmul throughput, measured: an n x n x n torch.matmul in `dtype`, median."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2.0 * n**3 / median_ms(lambda: torch.matmul(a, b), device, **timing) * 1e-9


def measure_copy_gbs(device, numel: int, **timing) -> float:
    """The card's memory bandwidth, measured: copying numel fp32 (read + write both counted), median."""
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    return 2.0 * numel * 4 / median_ms(lambda: dst.copy_(src), device, **timing) * 1e-6
