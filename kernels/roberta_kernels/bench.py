"""The kernel lab's benchmark: attention and LayerNorm implementations against every reference, in one run.

    roberta-scratch kernels bench --attention triton [mine my_pkg.attn:flash] [--layer-norm triton] --out DIR
    roberta-scratch kernels bench --attention triton --layer-norm triton --out DIR --dry-run   # CPU, tiny sizes
    python -m roberta_kernels.bench ...                                                               # the same

Attention (on CUDA). Every named implementation, plus the references: sdpa with
each of its backends forced through torch.nn.attention.sdpa_kernel (flash,
mem-efficient, cuDNN; a backend that refuses a case is reported 'not
supported'), FlexAttention and eager. For each shape (B = tokens // T
sequences, right padding: every sequence has round(T * (1 - pad)) real tokens)
it reports forward and forward+backward milliseconds, TFLOP/s counted on real
tokens only (FlashAttention's count: forward 4 * H * D * sum(L_b^2), backward
2.5 times that), the fraction of the measured and of the data-sheet peak, and
the max error of the output and of dQ/dK/dV against a float32 reference on
real rows (padded rows may hold anything finite; `finite` says whether they do).
Shapes: the padding sweep (--pad) at --pad-seq-len first, then the T sweep
(--seq-lens) without padding.

LayerNorm (on CUDA). y = LN(dropout(x) + residual) by every named
implementation and torch's separate kernels: milliseconds, GB/s over the bytes
the fused op must move (forward: read x and r, write y; backward: read dy, x
and r, write dx, plus d_residual when dropout makes it differ), the fraction of
the measured copy bandwidth, and the speed-up over torch.

Peaks. The card's bf16 (the benchmark dtype's) matmul peak and its copy
bandwidth are measured here, in the same process, with a big torch.matmul and a
big copy. Data-sheet peaks are optional, because this package does not know
cards by name (nothing in kernels/ imports roberta_scratch): pass
--peak-tflops / --peak-gbs, or set `args.card_peaks` to a function
name -> (16-bit TFLOP/s, tf32 TFLOP/s, GB/s), as roberta_scratch.flops.card_peaks
is; benchmarks/gpu_suite.py passes the flags.

Timing. Every figure is a median, explicitly: triton.testing.do_bench with
return_mode="median" (its default is the mean), L2 flushed before each call;
CUDA events and a median when triton is missing; time.perf_counter and a
median in a dry run.

Capabilities. A case an implementation does not claim (roberta_kernels.registry's
Implementation.unsupported: dtype, head dim, dropout, device) is skipped and
reported, never failed.

Output. DIR/results.json (card, versions, date, command, peaks, every row),
DIR/attention.png (TFLOP/s against T, one line per implementation; speed-up
against the padding fraction) and, with --layer-norm, DIR/layernorm.png.

--dry-run runs the whole pipeline on the CPU at tiny sizes (float32, every
size scaled down, one warmup and one perf_counter timing per figure), the
Triton implementations through Triton's interpreter, so CI proves the script
works; its numbers mean nothing. The exit status is 1 when a named implementation errored on a case it
claims, else 0 (2 for bad arguments).

This module does not import triton (or roberta_scratch) at import time.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Callable, Optional

import torch

from . import interpreter_requested, registry, triton_available
from .reference import attention_reference, layer_norm_reference

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# the references every attention run includes: sdpa forced to each backend, then the registry's own
SDPA_BACKENDS = {
    "sdpa-flash": "FLASH_ATTENTION",
    "sdpa-mem-efficient": "EFFICIENT_ATTENTION",
    "sdpa-cudnn": "CUDNN_ATTENTION",
}
ATTENTION_REFERENCES = (*SDPA_BACKENDS, "flex", "eager")
LAYER_NORM_REFERENCE = "torch"
FLOP_COUNT = "FlashAttention's, on real tokens: forward 4*H*D*sum(L_b^2), backward 2.5x forward (fwd+bwd 3.5x)"
LN_BYTES = "forward 3*M*N (read x, r; write y); backward 4*M*N (read dy, x, r; write dx), 5 with dropout (+ d_residual)"
BWD_FLOP_FACTOR = 2.5
EPS = 1e-5

# --dry-run: every size scaled down so the CPU (and Triton's interpreter) gets through in seconds
DRY = dict(tokens=64, heads=2, head_dim=32, max_seq_len=32, hidden=48, matmul_n=256, copy_numel=1 << 20, repeats=1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `roberta-scratch kernels bench` (and `python -m roberta_kernels.bench`)."""
    parser.add_argument(
        "--attention",
        nargs="+",
        default=None,
        metavar="NAME",
        help="attention implementations to bench: registered names (see roberta_kernels.registry) or "
        "MODULE:FUNCTION; the references are always added (default: triton, unless "
        "--layer-norm is given)",
    )
    parser.add_argument(
        "--layer-norm",
        nargs="+",
        default=None,
        metavar="NAME",
        help="LayerNorm implementations to bench against torch's kernels (default: none)",
    )
    parser.add_argument("--out", required=True, help="directory for results.json, attention.png, layernorm.png")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="the whole pipeline on the CPU at tiny sizes (Triton through its interpreter): proves "
        "the script works, measures nothing",
    )
    parser.add_argument(
        "--skip",
        nargs="+",
        default=[],
        metavar="REFERENCE",
        choices=ATTENTION_REFERENCES,
        help=f"attention references to leave out ({', '.join(ATTENTION_REFERENCES)})",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="input dtype (default bf16)")
    parser.add_argument(
        "--tokens", type=int, default=16384, help="B * T per attention shape, rows M of LayerNorm (default 16384)"
    )
    parser.add_argument(
        "--seq-lens",
        type=int,
        nargs="+",
        default=[128, 256, 512, 1024, 2048],
        help="sequence lengths T swept without padding (default 128 256 512 1024 2048)",
    )
    parser.add_argument(
        "--pad",
        type=float,
        nargs="+",
        default=[0.0, 0.25, 0.5, 0.75],
        help="padding fractions swept at --pad-seq-len (default 0 0.25 0.5 0.75; 0 is always run)",
    )
    parser.add_argument("--pad-seq-len", type=int, default=512, help="T of the padding sweep (default 512)")
    parser.add_argument("--heads", type=int, default=12, help="attention heads H (default 12)")
    parser.add_argument("--head-dim", type=int, default=64, help="head dim D (default 64)")
    parser.add_argument(
        "--dropout",
        type=float,
        default=0.0,
        help="attention dropout_p while timing (errors are measured without; default 0)",
    )
    parser.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=[768, 1024, 4096],
        help="LayerNorm hidden sizes N (default 768 1024 4096)",
    )
    parser.add_argument(
        "--ln-dropout",
        type=float,
        nargs="+",
        default=[0.0, 0.1],
        help="LayerNorm dropout rates before the residual add (default 0 0.1)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the card's data-sheet dense TFLOP/s in --dtype, reported beside the measured peak",
    )
    parser.add_argument(
        "--peak-gbs",
        type=float,
        default=None,
        help="the card's data-sheet memory bandwidth in GB/s, beside the measured one",
    )
    parser.add_argument("--warmup-ms", type=float, default=25, help="do_bench warmup per figure (default 25)")
    parser.add_argument("--rep-ms", type=float, default=100, help="do_bench measuring time per figure (default 100)")
    parser.add_argument(
        "--time-limit-s",
        type=float,
        default=None,
        help="stop starting shapes that would end (judged by the slowest so far) past this many "
        "seconds; the rest are reported as skipped (default: no limit)",
    )


# ----------------------------------------------------------------------------- timing and peaks


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


# ----------------------------------------------------------------------------- what runs


def _sdpa_backend(name: str, backend: str) -> registry.Implementation:
    """torch's sdpa forced to one backend (the key-padding mask becomes a boolean attn_mask)."""

    def fn(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if not hasattr(SDPBackend, backend):
            raise NotImplementedError(f"this torch has no SDPBackend.{backend}")
        with sdpa_kernel(getattr(SDPBackend, backend)):
            return registry.sdpa_attention(q, k, v, key_padding_mask, dropout_p, softmax_scale)

    return registry.Implementation(
        "attention", name, fn, description=f"F.scaled_dot_product_attention, SDPBackend.{backend} only"
    )


def attention_implementations(named: list, skip=()) -> list[tuple[registry.Implementation, str]]:
    """(implementation, role) for each named one, then each reference not named or skipped."""
    impls = [(registry.get("attention", spec), "named") for spec in named]
    taken = {impl.name for impl, _ in impls} | set(skip)
    for name in ATTENTION_REFERENCES:
        if name in taken:
            continue
        if name in SDPA_BACKENDS:
            impls.append((_sdpa_backend(name, SDPA_BACKENDS[name]), "reference"))
        elif name == "flex" and not registry.flex_available():
            impls.append(
                (registry.Implementation("attention", "flex", _missing("this torch has no FlexAttention")), "reference")
            )
        else:
            impls.append((registry.get("attention", name), "reference"))
    return impls


def layer_norm_implementations(named: list) -> list[tuple[registry.Implementation, str]]:
    impls = [(registry.get("layer_norm", spec), "named") for spec in named]
    if LAYER_NORM_REFERENCE not in {impl.name for impl, _ in impls}:
        impls.append((registry.get("layer_norm", LAYER_NORM_REFERENCE), "reference"))
    return impls


def _missing(why: str):
    def fn(*args, **kwargs):
        raise NotImplementedError(why)

    return fn


def runs_as(impl: registry.Implementation, device: torch.device) -> str:
    """What actually executes for this implementation here: the dry run's Triton is the interpreter."""
    if impl.triton:
        if device.type == "cuda":
            return "triton interpreter (TRITON_INTERPRET is set!)" if interpreter_requested() else "triton, compiled"
        if not triton_available():
            return "torch reference (triton is not installed)"
        return "triton interpreter" if interpreter_requested() else "torch reference (no GPU)"
    if impl.name == "flex":
        return "torch.compile" if device.type == "cuda" else "eager (unfused)"
    return "torch"


@contextmanager
def _captured_warnings():
    """Warnings raised inside, kept (sdpa explains a refused backend only through warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def _why(exc: BaseException, caught=()) -> str:
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    reason = f"{type(exc).__name__}: {lines[0][:200]}"
    hints = [str(w.message).strip().splitlines()[0][:160] for w in caught if str(w.message).strip()]
    return reason + (f" ({'; '.join(dict.fromkeys(hints))})" if hints else "")


def _refused(impl: registry.Implementation, exc: BaseException) -> bool:
    """A backend declining the case (not a bug): NotImplementedError, or sdpa finding no kernel for it."""
    if isinstance(exc, NotImplementedError):
        return True
    text = str(exc)
    return (
        impl.name in SDPA_BACKENDS
        and isinstance(exc, RuntimeError)
        and ("No available kernel" in text or "No viable backend" in text)
    )


def _free(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- attention


def attention_flops(lengths: torch.Tensor, heads: int, head_dim: int) -> float:
    """FlashAttention's forward FLOP count on real tokens: two L x L x D matmuls per head."""
    return 4.0 * heads * head_dim * float((lengths.double() ** 2).sum())


def _masked_max_err(a: torch.Tensor, ref: torch.Tensor, keep: torch.Tensor) -> float:
    """max |a - ref| where keep (broadcast) is True; masked_fill, not a product, so NaN elsewhere is ignored."""
    return float((a.float() - ref).abs().masked_fill(~keep, 0).max())


def bench_attention_shape(impls, T: int, pad: float, s: dict, device, peaks: dict) -> list[dict]:
    """One row per implementation for one (T, pad) shape; see the module docstring."""
    dtype, H, D, p = s["dtype"], s["heads"], s["head_dim"], s["dropout"]
    B = max(1, s["tokens"] // T)
    real = max(1, round(T * (1.0 - pad)))
    lengths = torch.full((B,), real)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(device) if real < T else None
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v, do = (torch.randn(B, H, T, D, device=device, dtype=dtype, generator=g) for _ in range(4))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    qd, kd, vd = (t.detach() for t in (q, k, v))
    flops = attention_flops(lengths, H, D)
    keep = (torch.ones(B, T, dtype=torch.bool, device=device) if mask is None else mask)[:, None, :, None]
    # subtle: no gradient arrives at padded query rows (the model's loss never reads them). With a
    # random one there, implementations whose padded rows attend to real keys would add it to those
    # keys' dK and dV, and differ from the reference (whose padded rows are zero) by design, not by bug.
    do = do.masked_fill(~keep, 0)

    ref_in = [t.detach().float().requires_grad_() for t in (q, k, v)]  # float32 reference, dropout off
    ref = attention_reference(*ref_in, key_padding_mask=mask)
    ref.backward(do.float())
    ref = ref.detach()

    rows = []
    for impl, role in impls:
        row = {
            "op": "attention",
            "impl": impl.name,
            "role": role,
            "T": T,
            "pad": pad,
            "B": B,
            "H": H,
            "D": D,
            "real_tokens": int(lengths.sum()),
            "dtype": s["dtype_name"],
            "dropout": p,
            "runs_as": runs_as(impl, device),
        }
        rows.append(row)
        why = impl.unsupported(dtype=dtype, head_dim=D, dropout_p=p, device=device)
        if why:
            row.update(status="skipped", reason=why)
            continue
        fn = impl.fn
        try:  # the forward: error on real rows, then the time
            with torch.no_grad(), _captured_warnings() as caught:
                out = fn(qd, kd, vd, key_padding_mask=mask, dropout_p=0.0)
            row["max_err_out"] = _masked_max_err(out, ref, keep)
            row["finite"] = bool(torch.isfinite(out).all())
            del out

            def fwd():
                with torch.no_grad():
                    fn(qd, kd, vd, key_padding_mask=mask, dropout_p=p)

            ms = median_ms(fwd, device, **s["timing"])
            row.update(fwd_ms=ms, fwd_tflops=flops / ms * 1e-9)
        except Exception as exc:  # noqa: BLE001 (any implementation's failure is a result, reported)
            row.update(status="not supported" if _refused(impl, exc) else "error", reason=_why(exc, caught))
            _free(device)
            continue
        try:  # forward + backward
            for t in (q, k, v):
                t.grad = None
            with _captured_warnings() as caught:
                fn(q, k, v, key_padding_mask=mask, dropout_p=0.0).backward(do)
            row["max_err_grad"] = max(_masked_max_err(t.grad, r.grad, keep) for t, r in zip((q, k, v), ref_in))

            def fwd_bwd():
                fn(q, k, v, key_padding_mask=mask, dropout_p=p).backward(do)

            ms = median_ms(fwd_bwd, device, grad_to_none=[q, k, v], **s["timing"])
            row.update(fwd_bwd_ms=ms, fwd_bwd_tflops=(1 + BWD_FLOP_FACTOR) * flops / ms * 1e-9, status="ok")
        except Exception as exc:  # noqa: BLE001
            row.update(
                status="forward only",
                reason="backward " + ("not supported: " if _refused(impl, exc) else "failed: ") + _why(exc, caught),
            )
        for t in (q, k, v):
            t.grad = None
        for phase in ("fwd", "fwd_bwd"):
            if f"{phase}_tflops" in row:
                if peaks.get("matmul_tflops_measured"):
                    row[f"{phase}_frac_measured_peak"] = row[f"{phase}_tflops"] / peaks["matmul_tflops_measured"]
                if peaks.get("datasheet_tflops"):
                    row[f"{phase}_frac_datasheet_peak"] = row[f"{phase}_tflops"] / peaks["datasheet_tflops"]
        _free(device)
    return rows


def add_padding_speedups(rows: list, pad_seq_len: int) -> None:
    """time(pad = 0) / time(pad) per implementation at the padding sweep's T: the win from skipping padding."""
    base = {r["impl"]: r for r in rows if r["T"] == pad_seq_len and r["pad"] == 0}
    for r in rows:
        b = base.get(r["impl"])
        if r["T"] != pad_seq_len or r["pad"] == 0 or b is None:
            continue
        for phase in ("fwd", "fwd_bwd"):
            if f"{phase}_ms" in r and f"{phase}_ms" in b:
                r[f"{phase}_speedup_vs_no_pad"] = b[f"{phase}_ms"] / r[f"{phase}_ms"]


# ----------------------------------------------------------------------------- layer norm


def bench_layer_norm_shape(impls, M: int, N: int, p: float, s: dict, device, peaks: dict) -> list[dict]:
    """One row per implementation for y = LN(dropout(x) + r) on (M, N); see the module docstring."""
    dtype = s["dtype"]
    g = torch.Generator(device=device).manual_seed(0)
    x, r, dy = (torch.randn(M, N, device=device, dtype=dtype, generator=g) for _ in range(3))
    w = (1.0 + 0.1 * torch.randn(N, device=device, generator=g)).to(dtype)
    b = (0.1 * torch.randn(N, device=device, generator=g)).to(dtype)
    leaves = [t.requires_grad_() for t in (x, r, w, b)]
    detached = [t.detach() for t in leaves]
    size = x.element_size()
    bytes_fwd = 3 * M * N * size
    bytes_bwd = (5 if p > 0 else 4) * M * N * size

    ref_in = [t.detach().float().requires_grad_() for t in leaves]
    ref = layer_norm_reference(ref_in[0], ref_in[2], ref_in[3], EPS, residual=ref_in[1])
    ref.backward(dy.float())
    ref = ref.detach()

    rows = []
    for impl, role in impls:
        row = {
            "op": "layer_norm",
            "impl": impl.name,
            "role": role,
            "M": M,
            "N": N,
            "dropout": p,
            "dtype": s["dtype_name"],
            "runs_as": runs_as(impl, device),
        }
        rows.append(row)
        why = impl.unsupported(dtype=dtype, dropout_p=p, device=device)
        if why:
            row.update(status="skipped", reason=why)
            continue
        fn = impl.fn
        xd, rd, wd, bd = detached
        try:
            with torch.no_grad():
                y = fn(xd, wd, bd, EPS, residual=rd, dropout_p=0.0)  # errors without dropout: one function
            row["max_err_out"] = float((y.float() - ref).abs().max())
            del y

            def fwd():
                with torch.no_grad():
                    fn(xd, wd, bd, EPS, residual=rd, dropout_p=p)

            ms = median_ms(fwd, device, **s["timing"])
            row.update(fwd_ms=ms, fwd_gbs=bytes_fwd / ms * 1e-6)
            for t in leaves:
                t.grad = None
            fn(x, w, b, EPS, residual=r, dropout_p=0.0).backward(dy)
            row["max_err_grad"] = max(float((t.grad.float() - u.grad).abs().max()) for t, u in zip(leaves, ref_in))

            def fwd_bwd():
                fn(x, w, b, EPS, residual=r, dropout_p=p).backward(dy)

            ms = median_ms(fwd_bwd, device, grad_to_none=leaves, **s["timing"])
            row.update(fwd_bwd_ms=ms, fwd_bwd_gbs=(bytes_fwd + bytes_bwd) / ms * 1e-6, status="ok")
        except Exception as exc:  # noqa: BLE001
            row.update(status="not supported" if _refused(impl, exc) else "error", reason=_why(exc))
        for t in leaves:
            t.grad = None
        for phase in ("fwd", "fwd_bwd"):
            if f"{phase}_gbs" in row and peaks.get("copy_gbs_measured"):
                row[f"{phase}_frac_measured_bandwidth"] = row[f"{phase}_gbs"] / peaks["copy_gbs_measured"]
            if f"{phase}_gbs" in row and peaks.get("datasheet_gbs"):
                row[f"{phase}_frac_datasheet_bandwidth"] = row[f"{phase}_gbs"] / peaks["datasheet_gbs"]
        _free(device)
    torch_row = next((r for r in rows if r["impl"] == LAYER_NORM_REFERENCE), None)
    for row in rows:
        for phase in ("fwd", "fwd_bwd"):
            if row is not torch_row and torch_row and f"{phase}_ms" in row and f"{phase}_ms" in torch_row:
                row[f"{phase}_speedup_vs_torch"] = torch_row[f"{phase}_ms"] / row[f"{phase}_ms"]
    return rows


# ----------------------------------------------------------------------------- plots


def plot_attention(rows: list, path: str, title: str, pad_seq_len: int) -> None:
    """TFLOP/s against T without padding (left); speed-up against the padding fraction (right)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5))
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state
    left, right = fig.subplots(1, 2)
    colors = {}
    for impl in dict.fromkeys(r["impl"] for r in rows):
        color = colors.setdefault(impl, f"C{len(colors) % 10}")
        sweep = sorted((r for r in rows if r["impl"] == impl and r["pad"] == 0), key=lambda r: r["T"])
        for phase, style in (("fwd", "o-"), ("fwd_bwd", "s--")):
            pts = [(r["T"], r[f"{phase}_tflops"]) for r in sweep if f"{phase}_tflops" in r]
            if pts:
                left.plot(*zip(*pts), style, color=color, label=f"{impl} {phase.replace('_', '+')}")
        pads = sorted((r for r in rows if r["impl"] == impl and r["T"] == pad_seq_len), key=lambda r: r["pad"])
        for phase, style in (("fwd", "o-"), ("fwd_bwd", "s--")):
            pts = [
                (r["pad"], 1.0 if r["pad"] == 0 else r[f"{phase}_speedup_vs_no_pad"])
                for r in pads
                if f"{phase}_ms" in r and (r["pad"] == 0 or f"{phase}_speedup_vs_no_pad" in r)
            ]
            if len(pts) > 1:
                right.plot(*zip(*pts), style, color=color, label=f"{impl} {phase.replace('_', '+')}")
    fractions = sorted({r["pad"] for r in rows if r["T"] == pad_seq_len})
    if len(fractions) > 1:
        ideal = [(f, 1.0 / max(1.0 - f, 1e-3) ** 2) for f in fractions]
        right.plot(*zip(*ideal), ":", color="gray", label="ideal: work on real tokens, (1 - pad)^-2")
        measured = [y for line in right.get_lines()[:-1] for y in line.get_ydata()]
        right.set_ylim(0, max(4.5, 1.25 * max(measured, default=1.0)))  # the ideal line runs off at high padding
    left.set(
        xscale="log",
        xlabel="sequence length T (no padding)",
        ylabel="TFLOP/s on real tokens",
        title="throughput against T",
    )
    xs = sorted({r["T"] for r in rows if r["pad"] == 0})
    if xs:
        left.minorticks_off()
        left.set_xticks(xs, [str(x) for x in xs])
    right.set(
        xlabel=f"padding fraction at T = {pad_seq_len}",
        ylabel="speed-up over no padding (time ratio)",
        title="skipping padding",
    )
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_layer_norm(rows: list, path: str, title: str, bandwidth: Optional[float]) -> None:
    """GB/s against the hidden size, forward (left) and forward+backward (right); dashed with dropout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    colors = {}
    for impl in dict.fromkeys(r["impl"] for r in rows):
        color = colors.setdefault(impl, f"C{len(colors) % 10}")
        for p in sorted({r["dropout"] for r in rows}):
            sel = sorted((r for r in rows if r["impl"] == impl and r["dropout"] == p), key=lambda r: r["N"])
            for ax, phase in zip(axes, ("fwd", "fwd_bwd")):
                pts = [(r["N"], r[f"{phase}_gbs"]) for r in sel if f"{phase}_gbs" in r]
                if pts:
                    ax.plot(*zip(*pts), "o-" if p == 0 else "s--", color=color, label=f"{impl}, dropout {p:g}")
    ns = sorted({r["N"] for r in rows})
    for ax, phase in zip(axes, ("forward", "forward+backward")):
        if bandwidth:
            ax.axhline(bandwidth, ls=":", color="gray", label=f"measured copy {bandwidth:,.0f} GB/s")
        ax.set(xscale="log", xlabel="hidden size N", ylabel="GB/s over the fused op's bytes", title=phase)
        if ns:
            ax.minorticks_off()
            ax.set_xticks(ns, [str(n) for n in ns])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ----------------------------------------------------------------------------- the run


def settings(args, device) -> dict:
    """The sizes actually run: the arguments', or the dry run's tiny ones."""
    dry = args.dry_run
    dtype_name = "fp32" if dry else args.dtype  # the CPU and the interpreter: float32, exact enough to compare
    seq_lens = (
        sorted({min(DRY["max_seq_len"], max(8, T // 16)) for T in args.seq_lens}) if dry else sorted(set(args.seq_lens))
    )
    pad_seq_len = min(DRY["max_seq_len"], max(8, args.pad_seq_len // 16)) if dry else args.pad_seq_len
    timing = dict(repeats=DRY["repeats"]) if dry else dict(warmup_ms=args.warmup_ms, rep_ms=args.rep_ms)
    return {
        "dtype_name": dtype_name,
        "dtype": DTYPES[dtype_name],
        "device": str(device),
        "tokens": DRY["tokens"] if dry else args.tokens,
        "seq_lens": seq_lens,
        "pad_seq_len": pad_seq_len,
        "pads": sorted({0.0, *args.pad}),
        "heads": DRY["heads"] if dry else args.heads,
        "head_dim": DRY["head_dim"] if dry else args.head_dim,
        "dropout": args.dropout,
        "hidden": sorted({max(16, N // 16) for N in args.hidden}) if dry else sorted(set(args.hidden)),
        "ln_dropout": sorted(set(args.ln_dropout)),
        "timing": timing,
    }


def versions() -> dict:
    """torch, triton, numpy and python versions; triton's and numpy's without importing them."""
    found = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("triton", "numpy"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def card_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def command_line() -> str:
    """The command as typed: `roberta-scratch ...`, `python -m roberta_scratch ...` or
    `python -m roberta_kernels.bench ...`."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        program = "python -m " + spec.name.removesuffix(".__main__")
    return " ".join([program, *sys.argv[1:]])


def datasheet_peaks(args, card: str, dtype) -> dict:
    """The data-sheet peaks: the flags win, else args.card_peaks(card) when a caller set that hook."""
    tflops, gbs, source = args.peak_tflops, args.peak_gbs, "--peak-tflops/--peak-gbs"
    hook = getattr(args, "card_peaks", None)
    if (tflops is None or gbs is None) and callable(hook) and not args.dry_run:
        found = hook(card)
        if found is not None:
            tflops = tflops if tflops is not None else (found[1] if dtype == torch.float32 else found[0])
            gbs = gbs if gbs is not None else found[2]
            source = "card_peaks(name)"
    if tflops is None and gbs is None:
        source = None
    return {"datasheet_tflops": tflops, "datasheet_gbs": gbs, "datasheet_source": source}


def benchmark(args) -> dict:
    """Run everything the arguments ask for and return the record that results.json holds."""
    device = torch.device("cpu" if args.dry_run else "cuda")
    s = settings(args, device)
    named_attention = args.attention if args.attention is not None else ([] if args.layer_norm else ["triton"])
    attention_impls = attention_implementations(named_attention, args.skip) if named_attention else []
    ln_impls = layer_norm_implementations(args.layer_norm) if args.layer_norm else []
    card = card_name(device)
    dtype = s["dtype"]
    started = time.monotonic()

    peaks = datasheet_peaks(args, card, dtype)
    n, numel = (DRY["matmul_n"], DRY["copy_numel"]) if args.dry_run else (8192, 1 << 28)
    if attention_impls:
        peaks["matmul_tflops_measured"] = measure_matmul_tflops(device, dtype, n, **s["timing"])
        peaks["matmul_measured_how"] = f"{n}x{n}x{n} torch.matmul in {s['dtype_name']}, median"
    if ln_impls:
        peaks["copy_gbs_measured"] = measure_copy_gbs(device, numel, **s["timing"])
        peaks["copy_measured_how"] = f"copy_ of {numel * 4 / 2**20:,.0f} MiB fp32, read + write counted, median"
    print(
        f"{card}: measured {peaks.get('matmul_tflops_measured') or 0:,.1f} TFLOP/s ({s['dtype_name']} matmul), "
        f"{peaks.get('copy_gbs_measured') or 0:,.0f} GB/s (copy); "
        + (
            f"data sheet {peaks['datasheet_tflops']} TFLOP/s, {peaks['datasheet_gbs']} GB/s"
            if peaks.get("datasheet_tflops") is not None
            else "no data sheet for this device"
        ),
        flush=True,
    )

    durations: list[float] = []

    def out_of_time() -> bool:
        if args.time_limit_s is None:
            return False
        return time.monotonic() - started + max(durations, default=0.0) > args.time_limit_s

    def timed(run_shape, skipped_rows):
        if out_of_time():
            for row in skipped_rows:
                row.update(status="skipped", reason=f"--time-limit-s {args.time_limit_s:g} would be passed")
            return skipped_rows
        t = time.monotonic()
        rows = run_shape()
        durations.append(time.monotonic() - t)
        return rows

    attention_rows = []
    shapes = [(s["pad_seq_len"], pad) for pad in s["pads"]]
    shapes += [(T, 0.0) for T in s["seq_lens"] if T != s["pad_seq_len"]]
    for T, pad in shapes if attention_impls else ():
        stub = [
            {"op": "attention", "impl": impl.name, "role": role, "T": T, "pad": pad} for impl, role in attention_impls
        ]
        rows = timed(lambda: bench_attention_shape(attention_impls, T, pad, s, device, peaks), stub)
        attention_rows += rows
        _progress(rows, f"attention T={T} pad={pad:g}", "fwd_tflops", "fwd_bwd_tflops", "TFLOP/s")
    add_padding_speedups(attention_rows, s["pad_seq_len"])

    ln_rows = []
    for N in s["hidden"] if ln_impls else ():
        for p in s["ln_dropout"]:
            stub = [
                {"op": "layer_norm", "impl": impl.name, "role": role, "N": N, "dropout": p} for impl, role in ln_impls
            ]
            rows = timed(lambda: bench_layer_norm_shape(ln_impls, s["tokens"], N, p, s, device, peaks), stub)
            ln_rows += rows
            _progress(rows, f"layer_norm N={N} dropout={p:g}", "fwd_gbs", "fwd_bwd_gbs", "GB/s")

    timing = (
        "median of time.perf_counter timings (dry run: the numbers mean nothing)"
        if args.dry_run
        else "median: triton.testing.do_bench(return_mode='median'), L2 flushed before each call"
    )
    return {
        "benchmark": "kernels bench",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": getattr(args, "command_line", None) or command_line(),
        "dry_run": bool(args.dry_run),
        "card": card,
        "versions": versions(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET"),
        "peaks": peaks,
        "settings": {k: v for k, v in s.items() if k != "dtype"},
        "timing": timing,
        "flop_count": FLOP_COUNT,
        "layer_norm_bytes": LN_BYTES,
        "seconds": time.monotonic() - started,
        "attention": attention_rows,
        "layer_norm": ln_rows,
    }


def _progress(rows, what, fwd_key, all_key, unit) -> None:
    parts = []
    for r in rows:
        if fwd_key in r:
            parts.append(f"{r['impl']} {r[fwd_key]:.3g}/{r.get(all_key, float('nan')):.3g}")
        else:
            parts.append(f"{r['impl']} {r.get('status')}")
    print(f"{what}: {unit} fwd/fwd+bwd: " + ", ".join(parts), flush=True)


def _jsonable(value):
    """NaN and infinities as strings (json.dump would write bare NaN, which is not JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_outputs(record: dict, out: str) -> list[str]:
    """DIR/results.json, DIR/attention.png and DIR/layernorm.png (when there are rows); the paths written."""
    os.makedirs(out, exist_ok=True)
    s = record["settings"]
    what = f"{record['card']}, {s['dtype_name']}, {s['tokens']} tokens" + (" (DRY RUN)" if record["dry_run"] else "")
    written, plots = [], {}
    try:
        if record["attention"]:
            path = os.path.join(out, "attention.png")
            plot_attention(
                record["attention"], path, f"attention: {what}, H={s['heads']}, D={s['head_dim']}", s["pad_seq_len"]
            )
            plots["attention"] = path
        if record["layer_norm"]:
            path = os.path.join(out, "layernorm.png")
            plot_layer_norm(
                record["layer_norm"],
                path,
                f"LN(dropout(x) + residual): {what} rows",
                record["peaks"].get("copy_gbs_measured"),
            )
            plots["layer_norm"] = path
    except ImportError as exc:  # matplotlib is optional: the numbers still land in results.json
        plots["skipped"] = f"no plots: {exc}"
    record["plots"] = plots
    path = os.path.join(out, "results.json")
    with open(path, "w") as f:
        json.dump(_jsonable(record), f, indent=2, default=str)
    written.append(path)
    written += [p for k, p in plots.items() if k != "skipped"]
    return written


@contextmanager
def _interpreter_for_dry_run(dry_run: bool):
    """The dry run asks for Triton's interpreter (before triton is first imported, if it can) and restores
    TRITON_INTERPRET afterwards; a real run leaves the environment alone."""
    saved = os.environ.get("TRITON_INTERPRET")
    if dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if dry_run:
            if saved is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = saved


def run(args) -> int:
    """`roberta-scratch kernels bench`: benchmark, write DIR/results.json and the plots, print a summary."""
    if not args.dry_run and not torch.cuda.is_available():
        print(
            "kernels bench: needs a CUDA GPU and none is visible, so nothing was measured; --dry-run runs the "
            "pipeline on the CPU",
            file=sys.stderr,
        )
        return 2
    try:
        registry.import_modules(list(args.attention or ()) + list(args.layer_norm or ()))
        for spec in args.attention or ():
            registry.get("attention", spec)
        for spec in args.layer_norm or ():
            registry.get("layer_norm", spec)
    except (ValueError, TypeError) as exc:
        print(f"kernels bench: {exc}", file=sys.stderr)
        return 2
    with _interpreter_for_dry_run(args.dry_run):
        record = benchmark(args)
    for path in write_outputs(record, args.out):
        print(f"wrote {path}")
    broken = [
        r
        for r in record["attention"] + record["layer_norm"]
        if r["role"] == "named"
        and r.get("status") in ("error", "forward only")
        and "not supported" not in r.get("reason", "")
    ]
    for r in broken:
        print(f"kernels bench: {r['op']} {r['impl']} failed on a case it claims: {r.get('reason')}", file=sys.stderr)
    return 1 if broken else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m roberta_kernels.bench", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
