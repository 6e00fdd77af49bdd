"""`roberta-scratch kernels check`: the standard correctness suite to point at your own kernel.

    roberta-scratch kernels check --attention triton --quick
    roberta-scratch kernels check --attention my_pkg.attn:flash --layer-norm triton --device cuda

    from roberta_kernels.check import check_attention, format_table
    rows = check_attention("triton", device="cpu", quick=True)   # a list of Result rows
    print(format_table(rows))

Each case runs the implementation forward and backward and compares the output and every
gradient (dq, dk, dv; dx, dresidual, dweight, dbias) with a float64 reference computed on
the same dtype-rounded inputs, so the error measured is the implementation's alone. Cases
cross sequence lengths T in (1, 17, 77, 128, 130, 257, 513), which straddle the usual tiles
of 16, 32, 64 and 128, head dims 32, 64 and 128, four padding patterns, and fp32, bf16 and
fp16; --quick runs a cross-section (a handful of tiny cases for Triton code interpreted on
the CPU, see QUICK_INTERPRETED_ATTENTION), and --seq-lens chooses the lengths. Dropout is checked
separately (see "Dropout" below). Long rows of nearly uniform attention over values of wide range
(ACCUMULATION_ATTENTION: T = 2048 in bf16, 4096 in fp16) catch a kernel that accumulates in its
input dtype, which the ordinary cases, up to T = 513, let through.

Each case runs in a child process (spawned: see _CaseProcess), so a kernel that crashes the
process or hangs past --timeout fails that case, and the check goes on to its summary.

Limits. An implementation declares what it claims when it registers: dtypes, head_dims,
dropout, devices, and for attention padding, seq_multiple, min_seq and max_seq. Cases outside
are skipped and listed once per limit; --quick moves its cross-section inside the sequence
limits (T rounded up to the multiple, no padding), and exits 2 when nothing is left.

Inputs follow the model: q, k and v are non-contiguous (B, H, T, D) views into one
(B, T, 3, H, D) projection, the padding mask is (B, T) bool with True for real tokens, and
LayerNorm takes an activation in the case's dtype with fp32 weight and bias (as under
autocast). q, k, v, x and the residual are N(0, 1), weight 1 + N(0, 0.1^2), bias N(0, 0.1^2).

Padding patterns (B = 2 sequences):
    none    no mask at all;
    right   sequence 1 is about two thirds real, then padding (what a tokenizer makes);
    single  sequence 0 is a single real token;
    middle  padding inside a sequence: a run of pads in sequence 0, a single pad and right
            padding in sequence 1 (tile-skipping kernels must mask these, not skip them).

What passes, per compared tensor, with err = got - ref:
    rel err      ||err|| / ||ref|| (all elements) <= rel   (not judged where ref is ~0: dq and
                 dk are exactly zero with a single key)
    max abs err  max |err| <= abs * max(1, max |ref|)       (a tensor's rounding grows with its
                 largest value: dweight and dbias, sums over rows, reach ~30)
and no NaN or Inf anywhere. Tolerances by input dtype ("observed": the worst on the CPU over
the full suite for eager, sdpa and torch's LayerNorm, and over a cross-section up to T = 513
for our Triton kernels in the interpreter):

    dtype  rel     abs     dweight, dbias  why
    fp32   1e-5    5e-5    the same        fp32 math: observed <= 6e-7 rel, 2e-6 abs. A GPU's
                                           tf32x3 dots are fp32-level; plain tf32 (~1e-3) fails.
    bf16   1.6e-2  4e-2    6e-2, 1.2e-1    8 bits: outputs rounded (2^-9), and P, dS (flash
                                           kernels) or the scores (eager) rounded before their
                                           matmuls: observed <= 6.6e-3 rel, 1.7e-2 abs. torch's
                                           CPU LayerNorm sums dweight, dbias through bf16 partials:
                                           2.9e-2 rel, 6.6e-2 abs over 1026 rows.
    fp16   2e-3    5e-3    1e-2, 1.6e-2    11 bits, the same roundings: observed <= 8.3e-4 rel,
                                           1.9e-3 abs; torch's LayerNorm sums 4.2e-3, 6.8e-3.

A softmax scale 1% off, a gradient 1% off or an ignored pad is >= 10^2 times the fp32
tolerance, so the fp32 cases of --quick catch them; bf16 and fp16 catch what only shows at
low precision (overflow, accumulating in the input dtype).

The contract's freedoms are kept: padded query rows of the attention output may hold any
finite value, so only real rows of the output are compared (the whole output must be finite:
a NaN there reaches real rows through the next layer's 0 * NaN). The upstream gradient is
zero on padded query rows, as in the model (no loss reads them), so every gradient is
compared in full: padded keys must get zero gradient, or they would leak into the weights.

Unwritten outputs. Implementations allocate their own outputs, so before every forward and
every backward call the check poisons what they will allocate; a NaN then fails the case:
  - during the call, torch.empty, empty_like, empty_strided and Tensor.new_empty return
    NaN-filled tensors: this catches, on any device, what Python code allocates and never
    writes (Triton launchers, autograd.Functions);
  - before the call, free allocator memory is filled with NaN bytes (0xFF is NaN in fp32,
    bf16 and fp16), for what C++ code allocates. On CUDA the caching allocator is emptied,
    then poisoned blocks are allocated and freed, and allocations made next reuse them (but
    memory freed and reused within the call holds its old values; written for the
    allocator's default settings, not yet run on a GPU). On the CPU, glibc hands freed
    memory back only sometimes (large blocks are fresh zeroed pages), so an element a C++
    kernel leaves unwritten is caught only when its reference is nonzero.

Dropout, for implementations whose capabilities claim it, at p = DROPOUT_P (0.25, so that a
missing 1 / (1 - p) is a factor 0.75, not 0.9). Every call is seeded with torch.manual_seed,
and with seed= as well when the function takes one.
    attention   T = D and v[j] = e_j (one-hot per key), so output element (i, j) is
                P_ij * Z_ij / (1 - p): one forward reveals the keep-mask Z, given the float64
                P. Checked: the same seed repeats the output bit for bit; every element is 0
                or P / (1 - p); the output and every gradient match the float64 reference
                built with that Z (a backward that draws its own mask fails here); over DRAWS
                draws with other seeds, the keep rate is within 5 sigma of 1 - p (binomial),
                two seeds' masks differ in 2p(1 - p) of the elements within 5 sigma, and the
                mean output is unbiased: R = ||mean - P||^2 / E||mean - P||^2 <= 2, where the
                expectation, p / (1 - p) / DRAWS * sum P_ij^2, holds for independent masks.
                R ~ 1 (simulated: below 1.7 in 20000 trials of the smallest case); a bias beta
                in every element adds about beta^2 * DRAWS * (1 - p) / p.
    layer norm  the backward reveals the mask, dx = dresidual * Z / (1 - p), and the forward y
                is compared with the float64 reference built with it (a forward that drew
                another mask fails on y). The statistics are the same, with the mean of
                dropout(x) over the draws against x (y is not linear in x: its mean is not the
                undropped y).

An implementation that raises NotImplementedError declines (the way to refuse what its declared
limits already exclude, should it be called so anyway): if it refuses inputs that require
grad (flex attention has no backward on the CPU), its forward is checked alone and the table
and summary say "forward only"; if it refuses the forward too, the case is skipped. Skips
are not failures, but an implementation with every case skipped fails the run (exit 2).

On the CPU the check runs with TRITON_INTERPRET=1, so Triton code (imported after it is set:
run() sets it before importing MODULE:FUNCTION) runs in Triton's interpreter; on CUDA it
runs compiled.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import faulthandler
import functools
import inspect
import io
import math
import multiprocessing
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import kernel_module, triton_available
from .registry import Implementation, get, import_modules

# ----------------------------------------------------------------------------- cases and tolerances


@dataclass(frozen=True)
class Tolerance:
    rel: float  # ||err|| / ||ref||
    abs: float  # max |err|, scaled by max(1, max |ref|)


TOLERANCES = {  # see the table in the module docstring
    torch.float32: Tolerance(1e-5, 5e-5),
    torch.bfloat16: Tolerance(1.6e-2, 4e-2),
    torch.float16: Tolerance(2e-3, 5e-3),
}
SUM_TOLERANCES = {  # dweight and dbias: sums over every row, in partial sums of the input dtype on torch's CPU
    torch.float32: Tolerance(1e-5, 5e-5),
    torch.bfloat16: Tolerance(6e-2, 1.2e-1),
    torch.float16: Tolerance(1e-2, 1.6e-2),
}

LENGTHS = (1, 17, 77, 128, 130, 257, 513)
HEAD_DIMS = (32, 64, 128)
PADDINGS = ("none", "right", "single", "middle")
HIDDEN_SIZES = (64, 130, 768, 1024)
RESIDUALS = ("residual", "no residual", "fp32 residual")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DROPOUT_P = 0.25  # large enough that a missing 1 / (1 - p) (a factor 0.75) is gross; RoBERTa trains at 0.1
DRAWS = {"full": 64, "quick": 32, "interpreted": 8}  # attention forwards for the keep rate and the mean
CASE_TIMEOUT_S = 300.0  # a case that runs longer is a FAIL row: a hanging kernel must not hang the check
LN_DRAWS = {"full": 8, "quick": 4, "interpreted": 2}  # layer norm forward + backward, for the keep rate
SIGMAS = 5.0  # statistical bounds: a correct implementation fails one with probability ~6e-7


@dataclass(frozen=True)
class AttentionCase:
    T: int
    D: int
    padding: str  # one of PADDINGS
    dtype: torch.dtype
    dropout_p: float = 0.0  # > 0: the dropout check (needs T == D)
    B: int = 2
    H: int = 2
    inputs: str = "normal"  # or "accumulate": see ACCUMULATION_ATTENTION


@dataclass(frozen=True)
class LayerNormCase:
    T: int  # tokens per sequence: x is (B, T, N)
    N: int  # hidden size
    residual: str  # one of RESIDUALS
    dtype: torch.dtype
    dropout_p: float = 0.0
    B: int = 2


F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16

QUICK_ATTENTION = [
    AttentionCase(1, 32, "none", F32),
    AttentionCase(17, 64, "middle", F32),
    AttentionCase(77, 64, "right", F32),  # keys 51..76 of sequence 1 padded: past the first 64-key tile
    AttentionCase(130, 32, "single", F32),
    AttentionCase(130, 128, "middle", BF16),
    AttentionCase(257, 64, "right", BF16),
    AttentionCase(77, 64, "right", F16),
    AttentionCase(64, 64, "right", F32, DROPOUT_P),
]
# Cases a kernel that accumulates in its input dtype fails (a real bf16 bug: the running output
# and row sum kept in bf16, a 16-key tile added at a time): many keys in one row (q scaled by 0.1,
# so attention is nearly uniform and every key counts), values of wide range (each key's v scaled
# by exp(N(0, 1.5^2))) and a long row. Calibrated on the CPU (2026-12-07) with that seeded kernel
# (tests/test_kernel_check.py: low_precision_accumulator_attention) against float64; the worst
# tensor's rel error (tolerance: bf16 1.6e-2, fp16 2e-3):
#     bf16, T = 2048, right padding: seeded 4.2e-2 (dq; out 2.8e-2): fails; eager 2.9e-3, sdpa 3.8e-3
#     fp16, T = 4096:                seeded 1.2e-2 (dq; out 8.4e-3): fails; eager 3.6e-4, sdpa 6.3e-4
# At T = 513 (the longest ordinary case) the seeded kernel's 9e-3 passes bf16's tolerance.
ACCUMULATION_ATTENTION = [
    AttentionCase(2048, 64, "right", BF16, B=1, inputs="accumulate"),
    AttentionCase(4096, 64, "none", F16, B=1, inputs="accumulate"),
]
QUICK_ATTENTION += ACCUMULATION_ATTENTION[:1]

# Triton on the CPU runs in its interpreter, far slower than torch's CPU kernels: a few tiny cases.
QUICK_INTERPRETED_ATTENTION = [
    AttentionCase(1, 32, "none", F32),
    AttentionCase(17, 32, "middle", F32),
    AttentionCase(77, 32, "right", F32),  # the one case past 64 keys
    AttentionCase(17, 64, "single", BF16),
    AttentionCase(17, 32, "right", F16),
    AttentionCase(32, 32, "right", F32, DROPOUT_P),
    ACCUMULATION_ATTENTION[0],  # about 10 s interpreted
]
QUICK_LAYER_NORM = [
    LayerNormCase(1, 64, "residual", F32),
    LayerNormCase(77, 768, "residual", F32),
    LayerNormCase(130, 130, "no residual", F32),
    LayerNormCase(17, 1024, "fp32 residual", BF16),
    LayerNormCase(77, 768, "residual", BF16),
    LayerNormCase(17, 64, "residual", F16),
    LayerNormCase(65, 256, "residual", F32, DROPOUT_P),
]
QUICK_INTERPRETED_LAYER_NORM = [
    LayerNormCase(1, 64, "residual", F32),
    LayerNormCase(17, 130, "no residual", F32),
    LayerNormCase(17, 768, "fp32 residual", BF16),
    LayerNormCase(5, 64, "residual", F16),
    LayerNormCase(17, 64, "residual", F32, DROPOUT_P),
]


def attention_cases(quick: bool = False, interpreted: bool = False, lengths=None) -> list[AttentionCase]:
    """The attention cases: every length x head dim x padding x dtype, then dropout per head dim
    and dtype; or, with quick, a cross-section (tinier when the code runs in Triton's interpreter).
    lengths (--seq-lens) replaces LENGTHS (and the long ACCUMULATION_ATTENTION cases); with quick,
    the cross-section's lengths in turn."""
    if quick:
        cases = list(QUICK_INTERPRETED_ATTENTION if interpreted else QUICK_ATTENTION)
        if lengths:
            cases = [
                dataclasses.replace(c, T=lengths[i % len(lengths)]) if not c.dropout_p else c
                for i, c in enumerate(cases)
            ]
        return cases
    cases = [
        AttentionCase(T, D, padding, dtype)
        for dtype in DTYPES
        for T in lengths or LENGTHS
        for D in HEAD_DIMS
        for padding in PADDINGS
        if T >= 3 or padding == "none"
    ]  # with 1 or 2 tokens the padded patterns degenerate
    cases += [AttentionCase(D, D, "right", dtype, DROPOUT_P) for dtype in DTYPES for D in HEAD_DIMS]
    return cases if lengths else cases + ACCUMULATION_ATTENTION  # chosen lengths: those only


def layer_norm_cases(quick: bool = False, interpreted: bool = False) -> list[LayerNormCase]:
    """The LayerNorm cases: every length x hidden size x residual kind x dtype, then dropout per
    dtype; or, with quick, a cross-section."""
    if quick:
        return list(QUICK_INTERPRETED_LAYER_NORM if interpreted else QUICK_LAYER_NORM)
    cases = [
        LayerNormCase(T, N, residual, dtype)
        for dtype in DTYPES
        for T in LENGTHS
        for N in HIDDEN_SIZES
        for residual in RESIDUALS
        if not (residual == "fp32 residual" and dtype == torch.float32)
    ]
    cases += [LayerNormCase(65, N, "residual", dtype, DROPOUT_P) for dtype in DTYPES for N in (256, 768)]
    return cases


# ----------------------------------------------------------------------------- results


@dataclass
class Result:
    """One row of the table: a case, and what came of it."""

    op: str  # "attention" or "layer_norm"
    impl: str
    dtype: str  # "fp32", "bf16" or "fp16"
    T: int
    D: int  # head dim (attention) or hidden size N (layer norm)
    variant: str  # padding (attention) or residual kind (layer norm)
    dropout: float
    status: str  # "ok", "FAIL" or "skip"
    rel_err: float | None = None  # of the failing tensor, else of the worst one
    max_abs_err: float | None = None
    tensor: str = ""  # the tensors or checks that failed (FAIL), else the worst tensor
    note: str = ""  # why it failed or was skipped, what was measured
    forward_only: bool = False  # the backward raised NotImplementedError: gradients unchecked

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


@dataclass
class Comparison:
    """One tensor against its reference."""

    name: str
    rel: float | None  # None: the reference is ~0, the relative error means nothing
    max_abs: float
    ok: bool
    why: str = ""
    badness: float = math.inf  # the larger error as a fraction of its tolerance (names the worst tensor)


def compare(
    name: str, got: torch.Tensor | None, ref: torch.Tensor, tol: Tolerance, select: torch.Tensor | None = None
) -> Comparison:
    """got against the float64 ref, on the elements `select` picks (a bool mask broadcast to ref)."""
    if got is None:
        return Comparison(name, None, math.inf, False, f"{name}: no gradient (the input was detached)")
    if tuple(got.shape) != tuple(ref.shape):
        return Comparison(name, None, math.inf, False, f"{name}: shape {tuple(got.shape)}, expected {tuple(ref.shape)}")
    got, ref = got.detach().double(), ref.detach().double()
    if select is not None:
        select = select.expand_as(ref)
        got, ref = got[select], ref[select]
    if got.numel() == 0:
        return Comparison(name, 0.0, 0.0, True, badness=0.0)
    if not torch.isfinite(got).all():
        n = int((~torch.isfinite(got)).sum())
        return Comparison(name, math.nan, math.nan, False, f"{name}: {n} NaN/Inf (unwritten or overflowed)")
    err = got - ref
    ref_norm = float(ref.norm())
    # subtle: with a single key, dq and dk are exactly zero and implementations leave ~1e-9 of
    # rounding: judge those by the max abs error alone.
    rel = float(err.norm()) / ref_norm if ref_norm > 1e-6 * math.sqrt(ref.numel()) else None
    max_abs = float(err.abs().max())
    scale = max(1.0, float(ref.abs().max()))
    ok = (rel is None or rel <= tol.rel) and max_abs <= tol.abs * scale
    why = (
        ""
        if ok
        else (f"{name}: rel err {_fmt(rel)} (tol {tol.rel:g}), max abs err {max_abs:.2e} (tol {tol.abs * scale:.2e})")
    )
    return Comparison(name, rel, max_abs, ok, why, max((rel or 0.0) / tol.rel, max_abs / (tol.abs * scale)))


def _summarize_compared(row: Result, compared: list[Comparison]) -> Result:
    """Fill a row from its compared tensors: the failing ones, else the worst one."""
    failed = [c for c in compared if not c.ok]
    worst = max(failed or compared, key=lambda c: c.badness)
    row.rel_err, row.max_abs_err = worst.rel, worst.max_abs
    if failed:
        row.status = "FAIL"
        row.tensor = ",".join(c.name for c in failed)
        row.note = "; ".join(c.why for c in failed)
    else:
        row.status, row.tensor = "ok", worst.name
    return row


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"


# ----------------------------------------------------------------------------- float64 references


def attention_float64(q, k, v, key_padding_mask=None, keep=None, dropout_p=0.0):
    """The attention contract in float64: softmax(q k^T / sqrt(D)) over the real keys, the
    probabilities dropped by `keep` (a (B, H, T, T) bool keep-mask) and scaled by 1 / (1 - p), @ v.

    q, k, v: (B, H, T, D) float64. Padded query rows come out as ordinary rows: the contract
    leaves them free and the check compares real rows only.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, T, T)
    if key_padding_mask is not None:
        real_keys = key_padding_mask[:, None, None, :]  # (B, 1, 1, T)
        scores = scores.masked_fill(~real_keys, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if keep is not None:
        probs = probs * keep.to(probs.dtype) / (1.0 - dropout_p)
    return probs @ v  # (B, H, T, D)


def layer_norm_float64(x, weight, bias, eps=1e-5, residual=None, keep=None, dropout_p=0.0):
    """LN(x * keep / (1 - p) + residual) in float64, written out. x, residual: (..., N)."""
    h = x if keep is None else x * keep.to(x.dtype) / (1.0 - dropout_p)
    if residual is not None:
        h = h + residual
    mean = h.mean(-1, keepdim=True)
    var = ((h - mean) ** 2).mean(-1, keepdim=True)
    return (h - mean) / torch.sqrt(var + eps) * weight + bias


# ----------------------------------------------------------------------------- poisoning


_EMPTIES = ("empty", "empty_like", "empty_strided")


@contextlib.contextmanager
def _nan_empties():
    """torch.empty & co. return NaN-filled float tensors inside: what Python code allocates reads NaN until written.

    subtle: code that did `from torch import empty` keeps the original; launchers call torch.empty.
    """

    def poisoned(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t = fn(*args, **kwargs)
            if t.is_floating_point():
                with torch.no_grad():  # subtle: fill_ on a fresh leaf made with requires_grad=True
                    t.fill_(float("nan"))
            return t

        return wrapper

    saved = {name: getattr(torch, name) for name in _EMPTIES}
    new_empty, own = torch.Tensor.new_empty, "new_empty" in vars(torch.Tensor)  # usually inherited from TensorBase
    try:
        for name, fn in saved.items():
            setattr(torch, name, poisoned(fn))
        torch.Tensor.new_empty = poisoned(new_empty)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch, name, fn)
        if own:
            torch.Tensor.new_empty = new_empty
        else:
            del torch.Tensor.new_empty


def _poison_pool(device: torch.device, nbytes: list[int]) -> None:
    """Leave free allocator memory full of NaN bytes (0xFF is NaN in fp32, bf16 and fp16), so
    that outputs allocated next and never written read NaN."""
    if device.type == "cuda":
        # subtle: cached free blocks hold stale finite data and best-fit would hand them out first:
        # release them, so that the poisoned blocks below are the only free ones. 2 x 1 MiB fill
        # one 2 MiB segment of the small pool (requests <= 1 MiB); one large block serves the rest.
        torch.cuda.empty_cache()
        nbytes = [1 << 20] * 8 + [max(32 << 20, 2 * sum(nbytes))]
    else:
        nbytes = [n for n in nbytes for _ in range(2)]  # glibc's bins hand back a freed block of the same size
    blocks = [torch.full((n,), 255, dtype=torch.uint8, device=device) for n in nbytes]
    del blocks


@contextlib.contextmanager
def _poisoned(device: torch.device, outputs: list[tuple]):
    """Around one call of an implementation: its fresh outputs read NaN until written.
    outputs: the (shape, dtype) of what it will allocate (sizes the pool poisoning)."""
    _poison_pool(device, [math.prod(shape) * dtype.itemsize for shape, dtype in outputs])
    with _nan_empties():
        yield


# ----------------------------------------------------------------------------- Triton mode


def triton_environment(device):
    """TRITON_INTERPRET=1 inside on the CPU (Triton code runs interpreted), unset on CUDA (compiled).

    Enter it before anything imports triton or a module with Triton kernels (run() does,
    before it imports MODULE:FUNCTION): see roberta_kernels.triton_interpreter.
    """
    from . import triton_interpreter

    return triton_interpreter(torch.device(device).type == "cpu")


def _triton_unavailable(impl: Implementation, device: torch.device) -> str | None:
    """Why a Triton implementation cannot run its Triton code here, or None. Raises RuntimeError
    when triton was imported in the other mode (process-wide: the user must start another process)."""
    if not impl.triton:
        return None
    if not triton_available():
        return "triton is not installed (the Triton code would not run)"
    kernel_module({"attention": "flash_attention", "layer_norm": "layernorm"}[impl.op], interpret=device.type == "cpu")
    return None


# ----------------------------------------------------------------------------- calling


def _takes_seed(fn: Callable) -> bool:
    try:
        return "seed" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _call(impl: Implementation, args: tuple, kwargs: dict, seed: int | None):
    """impl.fn(*args, **kwargs), seeded: torch.manual_seed(seed), and seed=seed if it takes one."""
    if seed is not None:
        torch.manual_seed(seed)
        if _takes_seed(impl.fn):
            kwargs = dict(kwargs, seed=seed)
    return impl.fn(*args, **kwargs)


def _error(e: BaseException) -> str:
    """An exception as a short note: its type and its first sentence."""
    text = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:160]
    return f"raised {type(e).__name__}: {text}" if text else f"raised {type(e).__name__}"


class _Declined(Exception):
    """The implementation raised NotImplementedError in the forward."""


def _forward(impl, args, kwargs, seed, device, outputs):
    with _poisoned(device, outputs):
        try:
            return _call(impl, args, kwargs, seed)
        except NotImplementedError as e:
            raise _Declined(_error(e)) from None


def _backward(out, grad, device, outputs) -> str | None:
    """out.backward(grad), poisoned; returns the NotImplementedError's text if it raised one."""
    with _poisoned(device, outputs):
        try:
            out.backward(grad)
        except NotImplementedError as e:
            return _error(e)
    return None


# ----------------------------------------------------------------------------- attention


def padding_mask(kind: str, B: int, T: int) -> torch.Tensor | None:
    """(B, T) bool key-padding mask, True for real tokens, or None (see the module docstring)."""
    if kind == "none":
        return None
    mask = torch.ones(B, T, dtype=torch.bool)
    if kind == "right":
        mask[-1, max(1, (2 * T) // 3) :] = False
    elif kind == "single":
        mask[0, 1:] = False
    elif kind == "middle":
        mask[0, T // 3 : T // 3 + max(1, T // 4)] = False
        mask[-1, T // 2] = False
        mask[-1, max(T // 2 + 2, (3 * T) // 4) :] = False
    else:
        raise ValueError(f"unknown padding {kind!r}; one of {PADDINGS}")
    return mask


def _attention_inputs(case: AttentionCase, device):
    """(qkv, do, mask): qkv (B, T, 3, H, D) in the case's dtype, do (B, H, T, D), mask (B, T) or None.

    q, k, v are views of qkv, as the model splits its one projection; with dropout, v is one-hot
    per key (T == D), so the output reveals the keep-mask.
    """
    B, H, T, D = case.B, case.H, case.T, case.D
    g = torch.Generator().manual_seed(T * 7919 + D * 31 + PADDINGS.index(case.padding))
    qkv = torch.randn(B, T, 3, H, D, generator=g)  # (B, T, 3, H, D)
    if case.dropout_p > 0:
        qkv[:, :, 2] = torch.eye(T)[None, :, None, :]  # v[b, h, j] = e_j
    if case.inputs == "accumulate":  # see ACCUMULATION_ATTENTION
        qkv[:, :, 0] *= 0.1
        qkv[:, :, 2] *= torch.exp(1.5 * torch.randn(B, T, H, 1, generator=g))
    do = torch.randn(B, H, T, D, generator=g)  # (B, H, T, D)
    mask = padding_mask(case.padding, B, T)
    if mask is not None:
        do = do * mask[:, None, :, None]  # subtle: nothing reads padded query rows: no gradient flows back
        mask = mask.to(device)
    return qkv.to(device=device, dtype=case.dtype), do.to(device=device, dtype=case.dtype), mask


def _split(qkv):
    """q, k, v: (B, H, T, D) views of a (B, T, 3, H, D) tensor (non-contiguous, as in the model)."""
    return tuple(qkv[:, :, i].transpose(1, 2) for i in range(3))


def _attention_row(impl, case, status="ok", note=""):
    variant = case.padding if case.inputs == "normal" else f"{case.padding}, {case.inputs}"
    return Result(
        "attention", impl.name, _dtype_name(case.dtype), case.T, case.D, variant, case.dropout_p, status, note=note
    )


def _run_attention(impl, case, device, qkv, do, mask, seed=None):
    """One forward and backward: (out, (dq, dk, dv) or None, backward's NotImplementedError text)."""
    B, H, T, D = case.B, case.H, case.T, case.D
    leaf = qkv.detach().clone().requires_grad_()
    kwargs = dict(key_padding_mask=mask, dropout_p=case.dropout_p)
    outputs = [((B, H, T, D), case.dtype)]
    try:
        out = _forward(impl, _split(leaf), kwargs, seed, device, outputs)
    except _Declined as e:  # no backward here (flex on the CPU refuses inputs that require grad): the forward alone
        return _forward(impl, _split(qkv.detach()), kwargs, seed, device, outputs).detach(), None, str(e)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"returned {type(out).__name__}, not a tensor")
    declined = _backward(out, do, device, [((B, H, T, D), case.dtype)] * 3)
    if not torch.equal(leaf.detach(), qkv):
        raise ValueError("q, k or v was modified in place")
    grads = None if declined or leaf.grad is None else _split(leaf.grad)
    return out.detach(), grads, declined


def _attention_reference(qkv, do, mask, keep=None, dropout_p=0.0):
    """The float64 (out, (dq, dk, dv)) for the same inputs."""
    leaf = qkv.detach().double().requires_grad_()
    out = attention_float64(*_split(leaf), mask, keep, dropout_p)
    out.backward(do.double())
    return out.detach(), _split(leaf.grad)


def _compare_attention(case, out, grads, ref_out, ref_grads, mask) -> list[Comparison]:
    """The output on real query rows (finite everywhere) and every gradient in full, against float64."""
    tol, shape = TOLERANCES[case.dtype], (case.B, case.H, case.T, case.D)
    if out.dtype != case.dtype or tuple(out.shape) != shape:
        return [
            Comparison(
                "out", None, math.inf, False, f"out: {tuple(out.shape)} {out.dtype}, expected {shape} {case.dtype}"
            )
        ]
    real_rows = None if mask is None else mask[:, None, :, None]  # (B, 1, T, 1)
    if torch.isfinite(out).all():
        compared = [compare("out", out, ref_out, tol, real_rows)]
    else:  # subtle: padded rows may hold any finite value, but a NaN there reaches real rows in the next layer
        where = "real" if real_rows is None or not torch.isfinite(out[real_rows.expand_as(out)]).all() else "padded"
        compared = [Comparison("out", math.nan, math.nan, False, f"out: NaN/Inf in {where} rows")]
    if grads is not None:
        compared += [
            compare(name, got, ref, tol) for name, got, ref in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True)
        ]
    return compared


def _check_attention_case(impl, case, device) -> Result:
    row = _attention_row(impl, case)
    qkv, do, mask = _attention_inputs(case, device)
    try:
        out, grads, declined = _run_attention(impl, case, device, qkv, do, mask)
    except _Declined as e:
        return _attention_row(impl, case, "skip", f"declined: {e}")
    except (Exception, SystemExit) as e:  # noqa: BLE001 (a failing implementation is a FAIL row, not a crash)
        row.status, row.tensor, row.note = "FAIL", "call", _error(e)
        return row
    ref_out, ref_grads = _attention_reference(qkv, do, mask)
    compared = _compare_attention(case, out, grads, ref_out, ref_grads, mask)
    row = _summarize_compared(row, compared)
    if declined:
        row.forward_only = True
        row.note = f"forward only: the backward {declined}" + (f"; {row.note}" if row.note else "")
    return row


def _binomial_bound(rate: float, expected: float, n: int) -> str | None:
    """None when rate is within SIGMAS standard errors of a binomial(n, expected)'s mean, else why."""
    bound = SIGMAS * math.sqrt(expected * (1 - expected) / max(n, 1))
    if abs(rate - expected) > bound:
        return f"{rate:.4f}, expected {expected:.4f} +- {bound:.4f} ({n} samples)"
    return None


def _read_keep(dropped: torch.Tensor, undropped: torch.Tensor, readable: torch.Tensor, p: float):
    """The keep-mask Z read from dropped = undropped * Z / (1 - p), and how many readable elements
    are neither 0 nor undropped / (1 - p) (a wrong scale, or not a dropout at all)."""
    ratio = dropped.double() * (1 - p) / torch.where(undropped == 0, 1.0, undropped.double())  # ~0 or ~1
    binary = (ratio.abs() < 0.05) | ((ratio - 1).abs() < 0.05)
    return ratio > 0.5, int((readable & ~binary).sum())


def _statistics(
    masks: list, dropped: list, undropped: torch.Tensor, real: torch.Tensor, p: float, rounding: float
) -> tuple[list, float, float]:
    """The failed checks (name, why) among keep rate, independence and bias; the keep rate; R.

    masks: the keep-masks of draws with different seeds; dropped: what each draw made of
    `undropped` (P for attention, x for layer norm); real: the elements that count; rounding:
    the relative error the dropped values may carry (the dtype's tolerance).
    """
    failed = []
    n, draws = int(real.sum()), len(masks)
    rate = sum(int(m[real].sum()) for m in masks) / (n * draws)
    off = _binomial_bound(rate, 1 - p, n * draws)
    if off:
        failed.append(("keep rate", f"keep rate {off}"))
    off = _binomial_bound(float((masks[0] ^ masks[1])[real].double().mean()), 2 * p * (1 - p), n)
    if off:
        failed.append(("seeds", f"two seeds' masks differ in {off}: not independent draws"))
    u = undropped.double()[real]
    mean = torch.stack([d.double()[real] for d in dropped]).mean(0)
    # E||mean - u||^2 for independent keep-masks, plus the dropped values' own rounding
    expected = p / (1 - p) / draws * float((u**2).sum()) + (rounding * float(u.norm())) ** 2
    r = float(((mean - u) ** 2).sum()) / expected
    if r > 2.0:
        failed.append(
            ("mean", f"the mean of {draws} draws is off the undropped value by R = {r:.2f} (bound 2): biased")
        )
    return failed, rate, r


def _dropout_row(
    row: Result, compared: list[Comparison], failed: list[tuple], rate: float, r: float, p: float, draws: int
) -> Result:
    """A dropout row: the tensors against the float64 reference built with the read mask, and the statistics."""
    row = _summarize_compared(row, compared)
    stats = f"keep rate {rate:.4f} (1 - p = {1 - p:g}), {draws} draws, mean R = {r:.2f}"
    if failed:
        row.status = "FAIL"
        row.tensor = ",".join([name for name, _ in failed] + ([row.tensor] if row.note else []))
        row.note = "; ".join([why for _, why in failed] + ([row.note] if row.note else []))
    row.note = f"{row.note}; {stats}" if row.note else stats
    return row


def _check_attention_dropout(impl, case, device, draws: int) -> Result:
    """The dropout check (see the module docstring): with v one-hot, the output is P * Z / (1 - p)."""
    row, p = _attention_row(impl, case), case.dropout_p
    qkv, do, mask = _attention_inputs(case, device)
    B, H, T = case.B, case.H, case.T
    real_tokens = torch.ones(B, T, dtype=torch.bool, device=device) if mask is None else mask
    real = (real_tokens[:, None, :, None] & real_tokens[:, None, None, :]).expand(B, H, T, T)  # real query and key
    probs = attention_float64(*_split(qkv.double()), mask)  # (B, H, T, T): P itself, as v is one-hot
    readable = real & (probs >= 1e-4)  # subtle: a smaller P_ij / (1 - p) is too coarse to read in fp16
    seed0 = 1000 + T
    try:
        out, grads, declined = _run_attention(impl, case, device, qkv, do, mask, seed=seed0)
        again = _run_attention(impl, case, device, qkv, do, mask, seed=seed0)[0]
        with torch.no_grad():  # many draws, forward only
            outs = [
                _forward(
                    impl,
                    _split(qkv),
                    dict(key_padding_mask=mask, dropout_p=p),
                    seed0 + 1 + n,
                    device,
                    [(tuple(out.shape), case.dtype)],
                )
                for n in range(draws)
            ]
    except _Declined as e:
        return _attention_row(impl, case, "skip", f"declined: {e}")
    except (Exception, SystemExit) as e:  # noqa: BLE001 (SystemExit too: no exit without a verdict)
        row.status, row.tensor, row.note = "FAIL", "call", _error(e)
        return row

    failed = []
    if torch.isfinite(out).all() and not torch.equal(out, again):
        failed.append(("repeat", "the same seed gave a different output"))
    keep, nonbinary = _read_keep(out, probs, readable, p)
    if nonbinary:
        failed.append(
            (
                "mask",
                f"{nonbinary} output elements are neither 0 nor P / (1 - p): not the probabilities "
                "dropped and scaled by 1 / (1 - p)",
            )
        )
    ref_out, ref_grads = _attention_reference(qkv, do, mask, keep, p)  # with the mask the forward used
    compared = _compare_attention(case, out, grads, ref_out, ref_grads, mask)
    masks = [_read_keep(o, probs, readable, p)[0] for o in outs]
    stats, rate, r = _statistics(masks, outs, probs, readable, p, TOLERANCES[case.dtype].rel)
    row = _dropout_row(row, compared, failed + stats, rate, r, p, draws)
    if declined:
        row.forward_only, row.note = True, f"forward only: the backward {declined}; {row.note}"
    return row


def check_attention(
    spec,
    device="cpu",
    quick: bool = False,
    cases: list | None = None,
    progress: Callable[[Result], None] | None = None,
    timeout: float | None = CASE_TIMEOUT_S,
    isolate: bool = True,
    lengths: list[int] | None = None,
) -> list[Result]:
    """Check an attention implementation (a registered name, MODULE:FUNCTION, an Implementation
    or a callable) on `device`; returns one Result per case. progress, if given, sees each as it is done.
    isolate: run the cases in a child process, so that a crash or a hang fails its case (see _CaseProcess).
    lengths: the sequence lengths to check (--seq-lens) instead of LENGTHS.
    Raises NothingClaimed when quick finds no case the implementation claims."""
    return _check("attention", spec, device, quick, cases, progress, timeout, isolate, lengths)


# ----------------------------------------------------------------------------- layer norm


def _layer_norm_inputs(case: LayerNormCase, device):
    """(x, residual or None, weight, bias, dy): x, residual (B, T, N); weight, bias (N,) fp32."""
    B, T, N = case.B, case.T, case.N
    g = torch.Generator().manual_seed(T * 7919 + N * 31 + RESIDUALS.index(case.residual))
    x = torch.randn(B, T, N, generator=g).to(device=device, dtype=case.dtype)  # (B, T, N)
    residual = None
    if case.residual != "no residual":
        r_dtype = torch.float32 if case.residual == "fp32 residual" else case.dtype
        residual = torch.randn(B, T, N, generator=g).to(device=device, dtype=r_dtype)  # (B, T, N)
    weight = (1.0 + 0.1 * torch.randn(N, generator=g)).to(device)  # (N,)
    bias = (0.1 * torch.randn(N, generator=g)).to(device)  # (N,)
    out_dtype = case.dtype if residual is None else torch.promote_types(case.dtype, residual.dtype)
    dy = torch.randn(B, T, N, generator=g).to(device=device, dtype=out_dtype)  # (B, T, N)
    return x, residual, weight, bias, dy


def _layer_norm_row(impl, case, status="ok", note=""):
    return Result(
        "layer_norm",
        impl.name,
        _dtype_name(case.dtype),
        case.T,
        case.N,
        case.residual,
        case.dropout_p,
        status,
        note=note,
    )


def _run_layer_norm(impl, case, device, inputs, seed=None):
    """One forward and backward: (y, (dx, dresidual, dweight, dbias) or None, NotImplementedError text)."""
    x, residual, weight, bias, dy = inputs
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, residual, weight, bias)]
    lx, lr, lw, lb = leaves
    out_dtype = dy.dtype
    shapes = [(tuple(x.shape), out_dtype)]
    kwargs = dict(eps=1e-5, residual=lr, dropout_p=case.dropout_p)
    try:
        y = _forward(impl, (lx, lw, lb), kwargs, seed, device, shapes)
    except _Declined as e:  # no backward here: the forward alone
        kwargs["residual"] = residual
        return _forward(impl, (x, weight, bias), kwargs, seed, device, shapes).detach(), None, str(e)
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"returned {type(y).__name__}, not a tensor")
    declined = _backward(y, dy, device, shapes * 2 + [((case.N,), torch.float32)] * 2)
    if not all(
        torch.equal(a.detach(), b) for a, b in zip(leaves, (x, residual, weight, bias), strict=True) if a is not None
    ):
        raise ValueError("an input was modified in place")
    grads = None if declined else tuple(t.grad if t is not None else None for t in leaves)
    return y.detach(), grads, declined


def _layer_norm_reference(inputs, keep=None, dropout_p=0.0):
    x, residual, weight, bias, dy = inputs
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, residual, weight, bias)]
    y = layer_norm_float64(leaves[0], leaves[2], leaves[3], 1e-5, leaves[1], keep, dropout_p)
    y.backward(dy.double())
    return y.detach(), tuple(t.grad if t is not None else None for t in leaves)


LN_GRADS = ("dx", "dresidual", "dweight", "dbias")


def _compare_layer_norm(case, y, grads, ref_y, ref_grads, out_dtype) -> list[Comparison]:
    tol = TOLERANCES[case.dtype]
    if y.dtype != out_dtype or y.shape != ref_y.shape:
        return [
            Comparison(
                "y", None, math.inf, False, f"y: {tuple(y.shape)} {y.dtype}, expected {tuple(ref_y.shape)} {out_dtype}"
            )
        ]
    compared = [compare("y", y, ref_y, tol)]
    if grads is not None:
        compared += [
            compare(n, g, r, SUM_TOLERANCES[case.dtype] if n in ("dweight", "dbias") else tol)
            for n, g, r in zip(LN_GRADS, grads, ref_grads, strict=True)
            if r is not None
        ]
    return compared


def _check_layer_norm_case(impl, case, device) -> Result:
    row = _layer_norm_row(impl, case)
    inputs = _layer_norm_inputs(case, device)
    try:
        y, grads, declined = _run_layer_norm(impl, case, device, inputs)
    except _Declined as e:
        return _layer_norm_row(impl, case, "skip", f"declined: {e}")
    except (Exception, SystemExit) as e:  # noqa: BLE001 (SystemExit too: no exit without a verdict)
        row.status, row.tensor, row.note = "FAIL", "call", _error(e)
        return row
    ref_y, ref_grads = _layer_norm_reference(inputs)
    compared = _compare_layer_norm(case, y, grads, ref_y, ref_grads, inputs[-1].dtype)
    row = _summarize_compared(row, compared)
    if declined:
        row.forward_only, row.note = True, f"forward only: the backward {declined}"
    return row


def _check_layer_norm_dropout(impl, case, device, draws: int) -> Result:
    """The dropout check for layer norm: the backward reveals the mask, dx = dresidual * Z / (1 - p)."""
    row, p = _layer_norm_row(impl, case), case.dropout_p
    inputs = _layer_norm_inputs(case, device)
    seed0 = 2000 + case.T
    try:
        # run 0 and run 1 share a seed (the repeat); runs 1.. have different seeds (the statistics)
        runs = [_run_layer_norm(impl, case, device, inputs, seed=seed0 + max(n - 1, 0)) for n in range(draws + 1)]
    except _Declined as e:
        return _layer_norm_row(impl, case, "skip", f"declined: {e}")
    except (Exception, SystemExit) as e:  # noqa: BLE001 (SystemExit too: no exit without a verdict)
        row.status, row.tensor, row.note = "FAIL", "call", _error(e)
        return row
    y, grads, declined = runs[0]
    if declined or grads[0] is None or grads[1] is None:
        why = f"the backward {declined}" if declined else "no gradient for x or the residual"
        status = "skip" if declined else "FAIL"
        return _layer_norm_row(impl, case, status, f"{why}: the mask is read from dx and dresidual")

    everywhere = torch.ones_like(y, dtype=torch.bool)

    def keep_of(g):  # subtle: where dresidual is ~0 the ratio is noise; those elements are not judged
        return _read_keep(g[0], g[1], g[1].abs() > 1e-3 * float(g[1].abs().mean()), p)

    failed = []
    if not torch.equal(y, runs[1][0]):
        failed.append(("repeat", "the same seed gave a different output"))
    keep, nonbinary = keep_of(grads)
    if nonbinary:
        failed.append(
            (
                "mask",
                f"{nonbinary} elements of dx are neither 0 nor dresidual / (1 - p): not x dropped "
                "and scaled by 1 / (1 - p)",
            )
        )
    ref_y, ref_grads = _layer_norm_reference(inputs, keep, p)  # with the mask the backward used
    compared = _compare_layer_norm(case, y, grads, ref_y, ref_grads, inputs[-1].dtype)
    x = inputs[0].double()
    masks = [keep_of(g)[0] for _, g, _ in runs[1:]]
    stats, rate, r = _statistics(masks, [x * m / (1 - p) for m in masks], x, everywhere, p, 0.0)
    return _dropout_row(row, compared, failed + stats, rate, r, p, draws)


def check_layer_norm(
    spec,
    device="cpu",
    quick: bool = False,
    cases: list | None = None,
    progress: Callable[[Result], None] | None = None,
    timeout: float | None = CASE_TIMEOUT_S,
    isolate: bool = True,
) -> list[Result]:
    """Check a LayerNorm implementation (a registered name, MODULE:FUNCTION, an Implementation or
    a callable) on `device`; returns one Result per case (isolate: see check_attention)."""
    return _check("layer_norm", spec, device, quick, cases, progress, timeout, isolate)


# ----------------------------------------------------------------------------- the driver


def _unsupported(impl: Implementation, case, device) -> str | None:
    if impl.op == "attention":
        return impl.unsupported(
            dtype=case.dtype,
            head_dim=case.D,
            dropout_p=case.dropout_p,
            device=device,
            seq_len=case.T,
            padded=case.padding != "none",
        )
    why = impl.unsupported(dtype=case.dtype, dropout_p=case.dropout_p, device=device)
    if why is None and case.residual == "fp32 residual":
        why = impl.unsupported(dtype=torch.float32)
    return why


class _CaseTimeout(BaseException):
    """Raised in the main thread when a case runs past its time (a BaseException, so that the
    case runners' `except Exception` cannot take it for an ordinary failure)."""


def _hard_stop(seconds: float) -> None:
    """faulthandler's timer: print where the process is and exit 1 after `seconds`, to a stream
    with a file descriptor (a captured sys.stderr has none: then the process's own stderr)."""
    for stream in (sys.stderr, sys.__stderr__):
        try:
            faulthandler.dump_traceback_later(seconds, exit=True, file=stream)
            return
        except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
            continue


@contextlib.contextmanager
def _time_limit(seconds: float | None):
    """Raise _CaseTimeout after `seconds` (SIGALRM, main thread only), so a kernel that loops in
    Python code, or returns to it, ends as a FAIL row. A hang that never returns to the
    interpreter (a GPU kernel that never finishes) is ended a minute later by faulthandler,
    which prints where it was and exits 1: never a run that hangs forever, never exit 0."""
    usable = seconds and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise _CaseTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    _hard_stop(seconds + 60)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)


def _case_functions(op: str):
    """(all cases, check one case, check one dropout case, row of, draws) for an op."""
    if op == "attention":
        return attention_cases, _check_attention_case, _check_attention_dropout, _attention_row, DRAWS
    return layer_norm_cases, _check_layer_norm_case, _check_layer_norm_dropout, _layer_norm_row, LN_DRAWS


def _run_case(impl: Implementation, case, device: torch.device, draws: int) -> Result:
    """One case, its failures as a FAIL row (a bug in the implementation is a result, not a crash)."""
    _, check_case, check_dropout, row_of, _ = _case_functions(impl.op)
    try:
        return check_dropout(impl, case, device, draws) if case.dropout_p > 0 else check_case(impl, case, device)
    except Exception as e:  # noqa: BLE001
        return row_of(impl, case, "FAIL", _error(e))


class NothingClaimed(ValueError):
    """--quick found no case the implementation claims (its declared limits rule them all out)."""


def _within_limits(impl: Implementation, cases: list) -> list:
    """--quick's cross-section moved inside an attention implementation's declared sequence
    limits: T rounded up to a multiple of seq_multiple within [min_seq, max_seq], padding dropped
    where it is not claimed. A dropout case (T = D) that cannot keep T = D is left as it is
    (and is skipped). Duplicates go."""
    if impl.op != "attention":
        return cases
    moved = []
    for c in cases:
        if impl.unsupported_shape(c.T, c.padding != "none") is None:
            moved.append(c)
            continue
        T = max(c.T, impl.min_seq)
        T = -(-T // impl.seq_multiple) * impl.seq_multiple
        if impl.max_seq is not None and T > impl.max_seq:
            T = impl.max_seq // impl.seq_multiple * impl.seq_multiple
        padding = c.padding if impl.padding else "none"
        if c.dropout_p and T != c.D:
            moved.append(c)
            continue
        moved.append(dataclasses.replace(c, T=T, padding=padding))
    return list(dict.fromkeys(moved))


def _blame_the_forward(row: Result, earlier: list[Result]) -> None:
    """A dropout case failing where a case without dropout already failed is the forward's fault,
    not the keep rate's: say so first, so the author looks in the right place."""
    plain_failures = [r for r in earlier if r.failed and not r.dropout]
    if row.failed and row.dropout and plain_failures:
        first = plain_failures[0]
        row.note = (
            f"forward already fails without dropout (first: {first.dtype} T={first.T} {first.variant}); " + row.note
        )


def _check(
    op, spec, device, quick, cases, progress, timeout: float | None = CASE_TIMEOUT_S, isolate=True, lengths=None
):
    impl = get(op, spec)
    device = torch.device(device)
    interpreted = impl.triton and device.type == "cpu"
    all_cases, _, _, row_of, draws = _case_functions(op)
    if cases is None:
        cases = all_cases(quick, interpreted, lengths) if op == "attention" else all_cases(quick, interpreted)
        if quick:
            cases = _within_limits(impl, cases)
            shape = [impl.unsupported_shape(c.T, c.padding != "none") for c in cases] if op == "attention" else []
            if shape and all(shape):  # its declared sequence limits rule out every case
                raise NothingClaimed(
                    f"--quick: {impl.name} claims none of the quick cases ({shape[0]}); name lengths it "
                    "takes with --seq-lens, or run without --quick"
                )
    draws = draws["full" if not quick else "interpreted" if interpreted else "quick"]
    results = []
    # subtle: the dropout checks reseed torch's generators; fork_rng gives the caller's state back
    # (in-process only: a case process has generators of its own)
    with triton_environment(device), contextlib.ExitStack() as stack:
        no_triton = _triton_unavailable(impl, device)
        runner = stack.enter_context(_CaseProcess(impl, device, timeout)) if isolate else None
        if runner is None:
            stack.enter_context(torch.random.fork_rng(devices=[device] if device.type == "cuda" else []))
            stack.enter_context(torch.enable_grad())
        for case in cases:
            why = no_triton or _unsupported(impl, case, device)
            if why:
                row = row_of(impl, case, "skip", why)
            elif runner is not None:
                row = runner.run(case, draws)
            else:
                row = _run_in_process(impl, case, device, draws, timeout)
            _blame_the_forward(row, results)
            results.append(row)
            if progress is not None:
                progress(row)
    return results


def _run_in_process(impl, case, device, draws, timeout) -> Result:
    try:
        with _time_limit(timeout):
            return _run_case(impl, case, device, draws)
    except _CaseTimeout:
        return _case_functions(impl.op)[3](impl, case, "FAIL", f"timed out after {timeout:g} s (--timeout)")


# ----------------------------------------------------------------------------- a process for the cases


def _serve(conn, impl: Implementation, device: torch.device) -> None:
    """The case process: run each case it is sent, send back its row; None ends it."""
    with torch.enable_grad():
        while True:
            message = conn.recv()
            if message is None:
                return
            case, draws = message
            conn.send(_run_case(impl, case, device, draws))


class _CaseProcess:
    """Cases run in a child process, one at a time, so that an implementation that crashes the
    process (a segfault in Triton's interpreter, an abort in a C++ extension) or hangs fails its
    case, and the check goes on to the next one and its summary. The child keeps Triton's caches
    from case to case; a crash or a timeout ends it, and the next case starts a new one.

    subtle: the child is spawned, not forked. A fork copies the locks other threads hold (torch's
    thread pools, the allocator), and a forked child that needs one waits forever: it happened
    here after ten minutes of tests. A spawned child imports afresh and receives the
    Implementation pickled: a function defined at a module's top level (or MODULE:FUNCTION) is
    found again by name, and sys.path and TRITON_INTERPRET come with it. A function that cannot
    be pickled (one defined inside another) runs in this process instead, with the SIGALRM time
    limit, and the check says so once."""

    def __init__(self, impl: Implementation, device: torch.device, timeout: float | None):
        self.impl, self.device, self.timeout = impl, device, timeout
        self.process = self.conn = None
        self.in_process = _why_not_picklable(impl)
        if self.in_process:
            print(
                f"note: {impl.name} cannot be sent to a child process ({self.in_process}); its cases run "
                "in this process, where a crash ends the check",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stop(kill=exc[0] is not None)

    def run(self, case, draws: int) -> Result:
        if self.in_process:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                with torch.enable_grad():
                    return _run_in_process(self.impl, case, self.device, draws, self.timeout)
        if self.process is None:
            self._start()
        row_of = _case_functions(self.impl.op)[3]
        try:
            self.conn.send((case, draws))
            ready = self.conn.poll(self.timeout)
        except (EOFError, OSError):
            ready = True  # the child is gone; recv says so
        if not ready:
            self._stop(kill=True)
            return row_of(self.impl, case, "FAIL", f"timed out after {self.timeout:g} s (--timeout)")
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            self.process.join(5)
            why = _death(self.process.exitcode)
            self._stop(kill=True)
            return row_of(self.impl, case, "FAIL", f"the process running the case died: {why}")

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, self.impl, self.device), daemon=True)
        self.process.start()
        child.close()

    def _stop(self, kill: bool) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            with contextlib.suppress(OSError, BrokenPipeError):
                self.conn.send(None)
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()
        self.process = self.conn = None


def _why_not_picklable(impl: Implementation) -> str | None:
    """None when `impl` pickles (so a spawned child can have it), else why not."""
    try:
        pickle.dumps(impl)
    except Exception as e:  # noqa: BLE001 (pickling a function raises several kinds)
        return f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
    return None


def _death(exitcode: int | None) -> str:
    """How a process ended, in words: "killed by SIGSEGV (a crash)", "exit code 3"."""
    if exitcode is None:
        return "it did not exit"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        crash = " (a crash)" if name in ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT") else ""
        return f"killed by {name}{crash}"
    return f"exit code {exitcode}"


# ----------------------------------------------------------------------------- the table


_COLUMNS = [
    ("impl", 10),
    ("dtype", 5),
    ("T", 4),
    ("D", 4),
    ("padding", 13),
    ("dropout", 7),
    ("status", 6),
    ("rel err", 8),
    ("max abs", 8),
    ("tensor", 10),
]


def table_header(op: str = "attention", impl_width: int = 10) -> str:
    """The column names; for layer norm, D is the hidden size N and padding the residual kind."""
    renamed = {"D": "N", "padding": "residual"} if op == "layer_norm" else {}
    widths = [max(w, impl_width) if n == "impl" else w for n, w in _COLUMNS]
    return "  ".join(f"{renamed.get(n, n):<{w}}" for (n, _), w in zip(_COLUMNS, widths, strict=True)) + "  note"


def format_row(r: Result, impl_width: int = 10) -> str:
    """One Result as a line of the table."""
    measured = r.status != "skip"
    cells = [
        r.impl,
        r.dtype,
        r.T,
        r.D,
        r.variant,
        f"{r.dropout:g}" if r.dropout else "-",
        r.status,
        _fmt(r.rel_err) if measured else "",
        _fmt(r.max_abs_err) if measured else "",
        r.tensor,
    ]
    widths = [max(w, impl_width) if n == "impl" else w for n, w in _COLUMNS]
    return "  ".join(f"{str(c):<{w}}" for c, w in zip(cells, widths, strict=True)) + "  " + r.note


def format_table(results: list[Result]) -> str:
    """The results as a table, with a header wherever the op changes."""
    lines, op = [], None
    width = max([10] + [len(r.impl) for r in results])
    for r in results:
        if r.op != op:
            op = r.op
            lines.append(table_header(op, width))
        lines.append(format_row(r, width))
    return "\n".join(lines)


def _skip_reasons(skipped: list[Result]) -> list[str]:
    """Each distinct reason cases were skipped for, with how many: one line per limit, not per case."""
    counts: dict[str, int] = {}
    for r in skipped:
        counts[r.note] = counts.get(r.note, 0) + 1
    return [f"{n} case{'s' if n > 1 else ''}: {note}" for note, n in counts.items()]


def summarize(results: list[Result]) -> tuple[str, int]:
    """(summary text, exit code): 0 when every implementation passed what it claims, 1 on any
    failure, 2 when an implementation had every case skipped (nothing was checked)."""
    lines, code = [], 0
    groups: dict[tuple, list[Result]] = {}
    for r in results:
        groups.setdefault((r.op, r.impl), []).append(r)
    for (op, impl), rows in groups.items():
        ok = [r for r in rows if r.status == "ok"]
        failed = [r for r in rows if r.failed]
        skipped = [r for r in rows if r.status == "skip"]
        fwd_only = [r for r in ok if r.forward_only]
        text = f"{op} {impl}: {len(ok)} ok, {len(failed)} FAIL, {len(skipped)} skipped"
        if fwd_only:
            text += f" ({len(fwd_only)} checked forward only: the backward raised NotImplementedError)"
        reasons = _skip_reasons(skipped)
        if reasons:
            text += "\n  skipped, one line per limit: " + "\n  skipped, one line per limit: ".join(reasons)
        if failed:
            code = 1
            worst = failed[0]
            text += (
                f"; first failure: {worst.dtype} T={worst.T} {'D' if op == 'attention' else 'N'}={worst.D} "
                f"{worst.variant}: {worst.tensor}"
            )
        elif not ok:
            code = max(code, 2)
            text += " -- NOTHING WAS CHECKED: every case was skipped"
        lines.append(text)
    verdict = {0: "PASS", 1: "FAIL", 2: "NOTHING CHECKED"}[code]
    return "\n".join(lines + [verdict]), code


# ----------------------------------------------------------------------------- the command


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `roberta-scratch kernels check`."""
    p.add_argument(
        "--attention",
        nargs="+",
        action="extend",
        default=[],
        metavar="IMPL",
        help="attention implementations to check: registered names (eager, sdpa, triton, flex, yours) "
        "or MODULE:FUNCTION",
    )
    p.add_argument(
        "--layer-norm",
        nargs="+",
        action="extend",
        default=[],
        metavar="IMPL",
        help="LayerNorm implementations to check: torch, triton, yours, or MODULE:FUNCTION",
    )
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        metavar="cpu|cuda",
        help="default: cuda when available (on the CPU, Triton code runs in Triton's interpreter)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a cross-section for CI: seconds on the CPU (a handful of tiny cases for interpreted Triton)",
    )
    p.add_argument(
        "--seq-lens",
        type=int,
        nargs="+",
        default=None,
        metavar="T",
        help=f"attention sequence lengths to check (default {' '.join(map(str, LENGTHS))}, then the long "
        "accumulation cases; with --quick, the cross-section's lengths)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=CASE_TIMEOUT_S,
        metavar="S",
        help=f"seconds a case may run before it is a FAIL row (default {CASE_TIMEOUT_S:g}; 0: no limit)",
    )


def run(args: argparse.Namespace) -> int:
    """Check every implementation named, print a table per implementation and a summary; the exit
    code is 0 when all passed, 1 on a failure, 2 when all of an implementation's cases were skipped."""
    if not args.attention and not args.layer_norm:
        raise ValueError(
            "name at least one implementation: --attention NAME|MODULE:FUNCTION and/or "
            "--layer-norm NAME|MODULE:FUNCTION"
        )
    device = torch.device(args.device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here")
    results = []
    # subtle: set TRITON_INTERPRET before MODULE:FUNCTION is imported, so its kernels decorate to match
    with triton_environment(device):
        import_modules(args.attention + args.layer_norm)  # the names they register, wherever they stand
        impls = [get("attention", s) for s in args.attention] + [get("layer_norm", s) for s in args.layer_norm]
        for impl in impls:
            interpreted = impl.triton and device.type == "cpu"
            how = "quick" if args.quick else "full"
            print(
                f"\n{impl.op} {impl.name} on {device.type}{' (Triton interpreter)' if interpreted else ''}, {how}"
                f"{': ' + impl.description if impl.description else ''}",
                flush=True,
            )
            width = max(10, len(impl.name))
            print(table_header(impl.op, width), flush=True)
            start = time.perf_counter()
            check = check_attention if impl.op == "attention" else check_layer_norm
            extra = {"lengths": args.seq_lens} if impl.op == "attention" and args.seq_lens else {}
            try:
                rows = check(
                    impl,
                    device,
                    quick=args.quick,
                    progress=lambda r, width=width: r.status == "skip" or print(format_row(r, width), flush=True),
                    timeout=args.timeout or None,
                    **extra,
                )
            except NothingClaimed as e:
                print(f"kernels check: {e}", file=sys.stderr, flush=True)
                return 2
            for reason in _skip_reasons([r for r in rows if r.status == "skip"]):
                print(f"skipped {reason}", flush=True)
            results += rows
            print(f"({time.perf_counter() - start:.1f} s)", flush=True)
    text, code = summarize(results)
    print("\n" + text, flush=True)
    return code
