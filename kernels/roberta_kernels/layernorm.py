"""Fused residual-add + dropout + LayerNorm: RoBERTa's post-LN step, forward and backward.

Per row of N features, with Z the dropout keep-mask:

    forward    h = x * Z / (1 - p) + residual
               y = (h - mean(h)) * rstd * weight + bias,   rstd = 1 / sqrt(var(h) + eps)
    backward   xhat = (h - mean) * rstd,  g = weight * dy
               dh = rstd * (g - mean(g * xhat) * xhat - mean(g)) (+ the gradient of h if it was returned)
               d_residual = dh,  dx = dh * Z / (1 - p)
               dweight = sum over rows of dy * xhat,  dbias = sum over rows of dy

The file has the four layers of every kernel in this package:
  1. @triton.jit kernels, fp32 math (`_layer_norm_*_kernel`);
  2. launchers that validate inputs and pick tiles and warps per architecture;
  3. a thin torch.autograd.Function;
  4. the public `layer_norm()`, plus `layer_norm_dropout_mask()` for tests.

Design notes, against the Triton tutorial (05-layer-norm) and Liger-Kernel,
whose backward is slower than torch at hidden sizes 768-1024:
  - every program works on a (BLOCK_M, BLOCK_N) tile of several rows, so a
    narrow hidden size still keeps enough loads in flight;
  - dweight and dbias are summed in registers over all the tiles a program
    visits, written once per program as a (programs, N) partial, and reduced
    by one small torch sum: no locks, no atomics, deterministic;
  - the forward stores only y, mean and rstd. The backward recomputes h from
    x, the residual and the dropout seed, so the forward writes one tensor
    instead of two, and x and the residual are tensors autograd keeps anyway;
  - without dropout, dx equals d_residual and one tensor serves both;
  - dropout draws eight keep-decisions of 16 bits per Philox call
    (_dropout_keep), not one Philox per element (except above hidden 2048);
  - on CUDA, triton.autotune picks each kernel's config from a small table
    (layer_norm_candidates); everywhere else the first entry.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from .utils import TileConfig, check_dropout_p, check_float_dtypes, check_same_device, kernel_seed, launch, tile_meta
from .utils import tuned_configs as utils_tuned_configs

MAX_HIDDEN = 4096  # a whole row lives in registers; wider rows would spill (see layer_norm_configs)


# ---------------------------------------------------------------------------
# 1. Kernels
# ---------------------------------------------------------------------------


@triton.jit
def _dropout_keep(seed, rows, start_col, N, dropout_p, BLOCK_N: tl.constexpr, PER_ELEMENT: tl.constexpr):
    """(BLOCK_M, BLOCK_N) bool keep-mask of the (M, N) input's rows `rows` (BLOCK_M,) by
    columns start_col + arange(BLOCK_N), with start_col and BLOCK_N multiples of 8.

    As in flash_attention._dropout_keep: one Philox call draws the eight
    decisions of columns 8g .. 8g + 7 of a row, with counter
    (row * cdiv(N, 8) + g, 0); column 8g + 2k takes the low 16 bits of output
    k, column 8g + 2k + 1 the high 16. An element is kept when its 16 bits are
    >= floor(p * 2**16), so p is rounded down to a multiple of 2**-16. The
    counter depends on the element alone, so forward, backward and the debug
    helper draw the same bits. int32 counters: M * N < 2**34.
    """
    threshold = tl.cast(dropout_p * 65536.0, tl.uint32)
    if PER_ELEMENT:
        # subtle: the rows of 16-warp programs (hidden > 2048) draw one Philox per element, as
        # tl.rand: joined from eight, the decisions spilled there (36 B, sm_80, triton 3.6, sliced
        # rows with residual and dropout). It is a different stream, so a launch picks one scheme
        # by its hidden size alone (_per_element_dropout) and the debug helper follows it.
        cols = start_col + tl.arange(0, BLOCK_N)
        return tl.rand(seed, rows.to(tl.int64)[:, None] * N + cols[None, :]) >= dropout_p
    groups = start_col // 8 + tl.arange(0, BLOCK_N // 8)
    counter = rows[:, None] * ((N + 7) // 8) + groups[None, :]  # (BLOCK_M, BLOCK_N // 8)
    r0, r1, r2, r3 = tl.philox(seed, counter, counter * 0, 0, 0)
    # subtle: tl.join appends the new axis last, so join(join(x0, x2), join(x1, x3)) holds
    # x_(2a + b) at [.., a, b]; joining the halves last puts them innermost: column 8g + 2k + half.
    # Compared before joining: bools hold fewer registers than 32-bit words through the joins.
    low = tl.join(
        tl.join((r0 & 0xFFFF) >= threshold, (r2 & 0xFFFF) >= threshold),
        tl.join((r1 & 0xFFFF) >= threshold, (r3 & 0xFFFF) >= threshold),
    )
    high = tl.join(
        tl.join((r0 >> 16) >= threshold, (r2 >> 16) >= threshold),
        tl.join((r1 >> 16) >= threshold, (r3 >> 16) >= threshold),
    )
    return tl.reshape(tl.join(low, high), (rows.shape[0], BLOCK_N))


@triton.jit
def _prenorm(
    X,
    Residual,
    rows,
    cols,
    mask,
    stride_x,
    stride_r,
    N,
    dropout_p,
    seed,
    HAS_RESIDUAL: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
):
    """(h, keep), each (BLOCK_M, BLOCK_N): h = dropout(x) + residual in fp32 for rows x cols, 0 outside `mask`.

    keep is the dropout keep-mask (without dropout, `mask`: every element is
    kept). The forward and the backward both call this, so the backward's
    recomputed h is the forward's, bit for bit.
    """
    rows64 = rows.to(tl.int64)[:, None]
    h = tl.load(X + rows64 * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    keep = mask
    if HAS_DROPOUT:  # cols is arange(BLOCK_N): the whole row
        keep = _dropout_keep(seed, rows, 0, N, dropout_p, cols.shape[0], cols.shape[0] > 2048)
        h = tl.where(keep, h / (1.0 - dropout_p), 0.0)
    if HAS_RESIDUAL:
        h += tl.load(Residual + rows64 * stride_r + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    return h, keep


@triton.jit(do_not_specialize=["seed"])
def _layer_norm_fwd_kernel(
    X,  # (M, N) branch output, dropped out before the add; unit column stride
    Residual,  # (M, N) residual stream (read when HAS_RESIDUAL); unit column stride
    W,  # (N,) weight
    B,  # (N,) bias
    Y,  # (M, N) out, unit column stride
    PreNorm,  # (M, N) out: dropout(X) + Residual (written when STORE_PRENORM); unit column stride
    Mean,  # (M,) fp32 out
    Rstd,  # (M,) fp32 out: 1 / sqrt(var + eps)
    stride_x,
    stride_r,
    stride_y,
    stride_h,  # row strides
    M,
    N,
    eps,
    dropout_p,
    seed,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    STORE_PRENORM: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    mask = (rows < M)[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)[:, None]

    h, _ = _prenorm(X, Residual, rows, cols, mask, stride_x, stride_r, N, dropout_p, seed, HAS_RESIDUAL, HAS_DROPOUT)
    if STORE_PRENORM:
        tl.store(PreNorm + rows64 * stride_h + cols[None, :], h.to(PreNorm.dtype.element_ty), mask=mask)

    mean = tl.sum(h, 1) / N
    centered = tl.where(mask, h - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, 1) / N + eps)
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = centered * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(Y + rows64 * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Mean + rows, mean, mask=rows < M)
    tl.store(Rstd + rows, rstd, mask=rows < M)


@triton.jit(do_not_specialize=["seed"])
def _layer_norm_bwd_kernel(
    DY,  # (M, N) upstream gradient of y; unit column stride
    DPreNorm,  # (M, N) upstream gradient of the returned pre-norm sum (read when HAS_DPRENORM)
    X,  # (M, N) forward input x; unit column stride
    Residual,  # (M, N) forward residual (read when HAS_RESIDUAL); unit column stride
    W,  # (N,) weight
    Mean,  # (M,) fp32 from the forward
    Rstd,  # (M,) fp32 from the forward
    DX,  # (M, N) out, contiguous
    DResidual,  # (M, N) out, contiguous (written when STORE_DRESIDUAL, else DX serves both)
    DWPartial,  # (programs, N) fp32 out: this program's share of dweight
    DBPartial,  # (programs, N) fp32 out: this program's share of dbias
    stride_dy,
    stride_dh,
    stride_x,
    stride_r,  # row strides of the inputs
    M,
    N,
    dropout_p,
    seed,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    HAS_DPRENORM: tl.constexpr,
    STORE_DRESIDUAL: tl.constexpr,
    LOOP_STAGES: tl.constexpr,  # row tiles in flight: loads run this many - 1 tiles ahead of the math
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    # Column sums stay two-dimensional until the end: one cross-row reduction per program.
    dw_acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    db_acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)

    # subtle: tl.range with num_stages, not range: only then does Triton pipeline loads that feed no
    # tl.dot, copying the next tiles' rows to shared memory (cp.async) while this one is computed.
    for tile in tl.range(pid, tl.cdiv(M, BLOCK_M), tl.num_programs(0), num_stages=LOOP_STAGES):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        mask = row_ok[:, None] & col_ok[None, :]
        rows64 = rows.to(tl.int64)[:, None]

        h, keep = _prenorm(
            X, Residual, rows, cols, mask, stride_x, stride_r, N, dropout_p, seed, HAS_RESIDUAL, HAS_DROPOUT
        )
        mean = tl.load(Mean + rows, mask=row_ok, other=0.0)
        rstd = tl.load(Rstd + rows, mask=row_ok, other=0.0)
        xhat = tl.where(mask, (h - mean[:, None]) * rstd[:, None], 0.0)
        dy = tl.load(DY + rows64 * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)

        g = dy * w[None, :]
        mean_gx = tl.sum(g * xhat, 1) / N
        mean_g = tl.sum(g, 1) / N
        dh = (g - xhat * mean_gx[:, None] - mean_g[:, None]) * rstd[:, None]
        if HAS_DPRENORM:
            dh += tl.load(DPreNorm + rows64 * stride_dh + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if STORE_DRESIDUAL:
            tl.store(DResidual + rows64 * N + cols[None, :], dh.to(DResidual.dtype.element_ty), mask=mask)
        dx = dh
        if HAS_DROPOUT:
            dx = tl.where(keep, dh / (1.0 - dropout_p), 0.0)
        tl.store(DX + rows64 * N + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        dw_acc += dy * xhat
        db_acc += dy

    tl.store(DWPartial + pid * N + cols, tl.sum(dw_acc, 0), mask=col_ok)
    tl.store(DBPartial + pid * N + cols, tl.sum(db_acc, 0), mask=col_ok)


@triton.jit(do_not_specialize=["seed"])
def _layer_norm_dropout_mask_kernel(
    Keep,  # (M, N) bool out, contiguous: the keep-mask the kernels above draw
    M,
    N,
    dropout_p,
    seed,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PER_ELEMENT: tl.constexpr,  # the kernels' scheme for this hidden size: _per_element_dropout(N)
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = _dropout_keep(seed, rows, tl.program_id(1) * BLOCK_N, N, dropout_p, BLOCK_N, PER_ELEMENT)
    tl.store(
        Keep + rows.to(tl.int64)[:, None] * N + cols[None, :], keep, mask=(rows < M)[:, None] & (cols < N)[None, :]
    )


# True when the kernels above were decorated under TRITON_INTERPRET=1
# (kernels/roberta_kernels/__init__.py reloads this module when that setting changes).
INTERPRETED = not isinstance(_layer_norm_fwd_kernel, triton.runtime.JITFunction)


# ---------------------------------------------------------------------------
# 2. Launchers
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RowTileConfig(TileConfig):
    """A TileConfig over rows: BLOCK_M rows of BLOCK_N columns, the hidden size rounded up to a power of two."""

    num_stages: int = 3  # the kernel's num_stages option
    loop_stages: int = 1  # the backward's row loop: tiles in flight (1: not pipelined; see layer_norm_configs)


def layer_norm_configs(hidden: int, aligned: bool = True) -> dict[str, RowTileConfig]:
    """Tiles and warps of the forward and backward for a hidden size.

    Registers, not bandwidth, bound the tile. The forward keeps 16 elements
    per thread. The backward recomputes h and the dropout mask and carries two
    column-sum accumulators; it keeps 4. From hidden 1024 up that is one row
    per step, on 4 warps up to 1024 (ptxas caps 8-warp programs near 128
    registers a thread, and the heaviest variant spills there). Up to hidden
    512 the backward runs 8 warps: with 4 warps, ptxas spilled the residual +
    dropout variant on sm_90 under one triton or the other (16 B at 2 rows under
    3.6, 12 B at 1 row under 3.9); 8 warps on 2 rows spill under neither.
    These limits are the same on sm_80 and sm_90, so one table serves both;
    the architecture enters through the backward's program count (two per SM).
    At hidden 768-1024 the forward runs 8 warps on 4 rows, the backward 4 warps
    on 1 row per step.
    roberta_kernels.compile_check compiles every entry for sm_80 and sm_90 and fails
    on any spill.

    aligned: whether the backward's rows are 16-byte aligned (_rows_aligned: hidden,
    row strides and pointers multiples of 16), as the runtime specialises the kernel.
    Then its row loop is pipelined: the loads of the next two row tiles are copied to
    shared memory (cp.async) while one is computed (loop_stages 3), and at hidden 513-1024
    a step takes 2 rows, not 1. At hidden 768 with residual and dropout that is 2 rows x
    768 x 2 B x 4 tensors (x, residual, dy, d_prenorm) = 12 KB a tile, two tiles ahead:
    24 KB in flight per program, 48 KB per SM at two programs per SM, where one
    unpipelined row had 6 KB per program in flight, 12 KB per SM (HBM3 wants ~25-30 KB).
    Unaligned rows load 2 bytes at a time, which cp.async cannot copy; they keep the
    unpipelined loop of one row a step (at 2 rows, they spilled 24 B on sm_80).
    """
    block_n = max(16, triton.next_power_of_2(hidden))
    fwd_warps = 4 if block_n <= 512 else 8 if block_n <= 2048 else 16
    bwd_warps = 8 if block_n <= 512 else 4 if block_n <= 1024 else 8 if block_n <= 2048 else 16

    def rows(elements_per_thread, num_warps):
        return min(16, max(1, elements_per_thread * 32 * num_warps // block_n))

    bwd_rows = rows(4, bwd_warps) * (2 if aligned and 512 < block_n <= 1024 else 1)
    return {
        "fwd": RowTileConfig(rows(16, fwd_warps), block_n, fwd_warps),
        "bwd": RowTileConfig(bwd_rows, block_n, bwd_warps, loop_stages=3 if aligned else 1),
    }


def layer_norm_candidates(hidden: int, aligned: bool = True) -> dict[str, list[RowTileConfig]]:
    """Each kernel's tuning table, layer_norm_configs' pick first: what triton.autotune times on CUDA.

    The first is the one used where nothing is timed: under the interpreter and on the CPU the
    launchers always take it. The forward's second takes half the rows a program (half the
    registers a thread, twice the programs: it wins when M / BLOCK_M programs leave SMs idle,
    short batches on a big card). The pipelined backward's second keeps one row tile in flight
    instead of two (a third less shared memory a program, for a card or a hidden size where two
    programs a SM do not fit with two tiles ahead). Neither adds registers, so neither can spill
    where the first does not; roberta_kernels.compile_check compiles every entry, for sm_80 and sm_90.
    """
    base = layer_norm_configs(hidden, aligned)
    tables = {name: [cfg] for name, cfg in base.items()}
    if base["fwd"].BLOCK_M > 1:
        tables["fwd"].append(replace(base["fwd"], BLOCK_M=base["fwd"].BLOCK_M // 2))
    if base["bwd"].loop_stages > 2:
        tables["bwd"].append(replace(base["bwd"], loop_stages=2))
    return tables


def _bwd_meta(cfg: RowTileConfig) -> dict:
    """The constexprs a config sets on the backward: the tile and the row loop's depth."""
    return {**tile_meta(cfg), "LOOP_STAGES": cfg.loop_stages}


# triton.autotune wrappers, one per kernel and tuning table (layer_norm_candidates), made on first use.
_AUTOTUNED: dict = {}


def _launch(kernel, grid, args: tuple, constexprs: dict, candidates: list[RowTileConfig], device: torch.device):
    """utils.launch keyed on the hidden size and the variant's flags, not on M, so that batches of
    other lengths reuse the pick. Autotune's repeated runs are safe: both kernels only overwrite
    their outputs (the backward's partial sums included: its grid, one row of partials a program,
    is the same for every candidate) and read their inputs, dropout's seed included, unchanged."""
    backward = kernel is _layer_norm_bwd_kernel
    flags = ["HAS_DPRENORM", "STORE_DRESIDUAL"] if backward else ["STORE_PRENORM"]
    launch(
        kernel,
        grid,
        args,
        constexprs,
        candidates,
        device,
        _AUTOTUNED,
        ["N", "HAS_RESIDUAL", "HAS_DROPOUT", *flags],
        _bwd_meta if backward else tile_meta,
    )


def tuned_configs() -> dict[str, str]:
    """What autotune picked so far in this process: "kernel [candidates]" -> the best config."""
    return utils_tuned_configs(_AUTOTUNED)


def _rows_aligned(*tensors) -> bool:
    """Whether every (M, N) tensor given has 16-byte aligned rows: start, row stride and N (see layer_norm_configs)."""
    return all(t.data_ptr() % 16 == 0 and t.stride(0) % 16 == 0 and t.shape[1] % 16 == 0 for t in tensors)


def _backward_programs(device: torch.device, tiles: int) -> int:
    """Programs of the backward: two per SM on CUDA, each looping over tiles; 4 under the interpreter."""
    if device.type != "cuda":
        return min(tiles, 4)
    return min(tiles, 2 * torch.cuda.get_device_properties(device).multi_processor_count)


def _validate(x, weight, bias, residual, dropout_p):
    N = x.shape[-1] if x.dim() else 0
    if x.dim() == 0 or N == 0:
        raise ValueError(f"layer_norm needs x of shape (..., N) with N > 0; got {tuple(x.shape)}")
    if N > MAX_HIDDEN:
        raise ValueError(f"the Triton layer_norm supports hidden sizes up to {MAX_HIDDEN}; got {N}")
    if weight is None or bias is None or weight.shape != (N,) or bias.shape != (N,):
        raise ValueError(f"weight and bias must both be ({N},)")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual must match x's shape {tuple(x.shape)}; got {tuple(residual.shape)}")
    check_float_dtypes(
        x, weight, bias, residual, message="layer_norm supports float16, bfloat16 and float32; got {dtype}"
    )
    check_same_device(x, weight, bias, residual, message="x, weight, bias and residual must be on one device")
    check_dropout_p(dropout_p)


def _rows(t, N):
    """View as (M, N) with unit column stride (copying only when it must)."""
    t = t.reshape(-1, N)
    return t if t.stride(-1) == 1 else t.contiguous()


def layer_norm_forward(x2, weight, bias, eps, r2, dropout_p, seed, out_dtype, store_prenorm):
    """Launch the forward on (M, N) rows. Returns (y, prenorm or None, mean, rstd)."""
    M, N = x2.shape
    candidates = layer_norm_candidates(N)["fwd"]
    y = torch.empty(M, N, dtype=out_dtype, device=x2.device)
    prenorm = torch.empty(M, N, dtype=out_dtype, device=x2.device) if store_prenorm else None
    mean = torch.empty(M, dtype=torch.float32, device=x2.device)
    rstd = torch.empty(M, dtype=torch.float32, device=x2.device)
    r_arg = r2 if r2 is not None else x2  # never read without HAS_RESIDUAL
    h_arg = prenorm if store_prenorm else y  # never written without STORE_PRENORM
    _launch(
        _layer_norm_fwd_kernel,
        lambda meta: (triton.cdiv(M, meta["BLOCK_M"]),),
        (
            x2,
            r_arg,
            weight,
            bias,
            y,
            h_arg,
            mean,
            rstd,
            x2.stride(0),
            r_arg.stride(0),
            y.stride(0),
            h_arg.stride(0),
            M,
            N,
            eps,
            dropout_p,
            seed,
        ),
        dict(HAS_RESIDUAL=r2 is not None, HAS_DROPOUT=dropout_p > 0.0, STORE_PRENORM=store_prenorm),
        candidates,
        x2.device,
    )
    return y, prenorm, mean, rstd


def layer_norm_backward(dy2, dh2, x2, r2, weight, bias, mean, rstd, dropout_p, seed):
    """Launch the backward on (M, N) rows with unit column stride.

    Returns (dx, d_residual or None, dweight, dbias).
    """
    M, N = x2.shape
    has_residual, has_dropout = r2 is not None, dropout_p > 0.0
    candidates = layer_norm_candidates(N, _rows_aligned(*(t for t in (dy2, dh2, x2, r2) if t is not None)))["bwd"]
    cfg = candidates[0]  # every candidate has its tile, so the grid and the partial sums are the same
    # Without dropout dx == d_residual; a second copy is needed only to round it to another dtype.
    store_dres = has_residual and (has_dropout or r2.dtype != x2.dtype)
    dx = torch.empty(M, N, dtype=x2.dtype, device=x2.device)
    dres = torch.empty(M, N, dtype=r2.dtype, device=x2.device) if store_dres else dx
    programs = _backward_programs(x2.device, triton.cdiv(M, cfg.BLOCK_M))
    dw_partial = torch.empty(programs, N, dtype=torch.float32, device=x2.device)
    db_partial = torch.empty(programs, N, dtype=torch.float32, device=x2.device)
    r_arg = r2 if has_residual else x2
    dh_arg = dh2 if dh2 is not None else dy2  # never read without HAS_DPRENORM
    _launch(
        _layer_norm_bwd_kernel,
        lambda meta: (programs,),
        (
            dy2,
            dh_arg,
            x2,
            r_arg,
            weight,
            mean,
            rstd,
            dx,
            dres,
            dw_partial,
            db_partial,
            dy2.stride(0),
            dh_arg.stride(0),
            x2.stride(0),
            r_arg.stride(0),
            M,
            N,
            dropout_p,
            seed,
        ),
        dict(
            HAS_RESIDUAL=has_residual, HAS_DROPOUT=has_dropout, HAS_DPRENORM=dh2 is not None, STORE_DRESIDUAL=store_dres
        ),
        candidates,
        x2.device,
    )
    # The second, small reduction: (programs, N) -> (N,).
    dweight = dw_partial.sum(0).to(weight.dtype)
    dbias = db_partial.sum(0).to(bias.dtype)
    return dx, (dres if has_residual else None), dweight, dbias


# ---------------------------------------------------------------------------
# 3. Autograd
# ---------------------------------------------------------------------------


class LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, residual, dropout_p, seed, return_prenorm):
        N = x.shape[-1]
        x2 = _rows(x, N)
        r2 = _rows(residual, N) if residual is not None else None
        out_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
        weight, bias = weight.contiguous(), bias.contiguous()
        y, prenorm, mean, rstd = layer_norm_forward(
            x2, weight, bias, eps, r2, dropout_p, seed, out_dtype, return_prenorm
        )
        ctx.save_for_backward(x2, r2, weight, bias, mean, rstd)
        ctx.dropout_p, ctx.seed, ctx.shape = dropout_p, seed, x.shape
        ctx.residual_shape = None if residual is None else residual.shape
        ctx.set_materialize_grads(False)
        y = y.view(x.shape)
        return (y, prenorm.view(x.shape)) if return_prenorm else y

    @staticmethod
    def backward(ctx, dy, dprenorm=None):
        x2, r2, weight, bias, mean, rstd = ctx.saved_tensors
        N = x2.shape[1]
        if dy is None:  # only the pre-norm sum was used downstream
            dy = torch.zeros(
                x2.shape, dtype=x2.dtype if r2 is None else torch.promote_types(x2.dtype, r2.dtype), device=x2.device
            )
        dh2 = _rows(dprenorm, N) if dprenorm is not None else None
        dx, dres, dweight, dbias = layer_norm_backward(
            _rows(dy, N), dh2, x2, r2, weight, bias, mean, rstd, ctx.dropout_p, ctx.seed
        )
        dres = dres.view(ctx.residual_shape) if dres is not None else None
        return dx.view(ctx.shape), dweight, dbias, None, dres, None, None, None


# ---------------------------------------------------------------------------
# 4. Public functions
# ---------------------------------------------------------------------------


def layer_norm(x, weight, bias, eps=1e-5, residual=None, dropout_p=0.0, seed=None, return_prenorm=False):
    """LN(dropout(x) + residual) over the last dimension: roberta_kernels.layer_norm_reference, fused.

    x, residual: (..., N); weight, bias: (N,). The output (and the pre-norm
    sum, returned second with return_prenorm) has the promoted dtype of x and
    the residual. dropout_p drops elements of x with a Philox stream keyed by
    `seed` (drawn from torch's generator when None); layer_norm_dropout_mask
    returns the keep-mask it used.
    """
    _validate(x, weight, bias, residual, dropout_p)
    return LayerNormFunction.apply(
        x, weight, bias, float(eps), residual, float(dropout_p), kernel_seed(seed, dropout_p), bool(return_prenorm)
    )


_MASK_TILE = RowTileConfig(16, 64, 4)  # _layer_norm_dropout_mask_kernel (a debugging aid)


def _per_element_dropout(hidden: int) -> bool:
    """Whether layer_norm draws one Philox per element at this hidden size (see _dropout_keep)."""
    return layer_norm_configs(hidden)["bwd"].BLOCK_N > 2048


def layer_norm_dropout_mask(seed, shape, dropout_p, device="cpu"):
    """The bool keep-mask, shaped like x, that layer_norm(x, ..., dropout_p, seed=seed) applies.

    Pass it as layer_norm_reference(..., dropout_mask=mask) to rebuild exactly
    what the kernel computed.
    """
    shape = tuple(shape)
    N = shape[-1]
    M = 1
    for size in shape[:-1]:
        M *= size
    keep = torch.empty(M, N, dtype=torch.bool, device=device)
    grid = (triton.cdiv(M, _MASK_TILE.BLOCK_M), triton.cdiv(N, _MASK_TILE.BLOCK_N))
    _layer_norm_dropout_mask_kernel[grid](
        keep,
        M,
        N,
        float(dropout_p),
        int(seed),
        BLOCK_M=_MASK_TILE.BLOCK_M,
        BLOCK_N=_MASK_TILE.BLOCK_N,
        PER_ELEMENT=_per_element_dropout(N),
        **_MASK_TILE.options(),
    )
    return keep.view(shape)


# ---------------------------------------------------------------------------
# Ahead-of-time compilation specs (roberta_kernels.compile_check)
# ---------------------------------------------------------------------------


def aot_specs(arch: int):
    """Yield (variant, kernel, pointer dtypes, constexprs, launch options, divisible) for every
    launch configuration the launchers above use on `arch`: each power-of-two
    tile width up to MAX_HIDDEN, with bf16 activations (fp16 and fp32 take the
    same tiles) and fp32 parameters, residual and dropout on and off, and dropout alone.

    Every tuning candidate (layer_norm_candidates) is compiled, the extra ones as "... candidate k".
    Each is compiled three times, as the runtime specialises it: for hidden
    sizes that are multiples of 16 (768, 1024: N and the row strides are
    marked 16-divisible, and the row loads vectorise), for others in rows
    sliced from a wider tensor (x[:, :1000] of a (M, 1024) one: the strides
    only) and for others in contiguous rows (77: nothing is).
    """
    for per_element in (False, True):
        yield (
            f"per_element={int(per_element)}",
            _layer_norm_dropout_mask_kernel,
            {"Keep": "*i1"},
            {"BLOCK_M": _MASK_TILE.BLOCK_M, "BLOCK_N": _MASK_TILE.BLOCK_N, "PER_ELEMENT": per_element},
            _MASK_TILE.options(),
        )
    block_n = 16
    while block_n <= MAX_HIDDEN:
        strides = {"stride_x", "stride_r", "stride_y", "stride_h", "stride_dy", "stride_dh"}
        for alignment, divisible in (("N%16=0", {"N", *strides}), ("sliced", strides), ("N%16>0", set())):
            tables = layer_norm_candidates(block_n, aligned=alignment == "N%16=0")
            for has_residual, has_dropout in ((False, False), (False, True), (True, True)):
                variant = f"N<={block_n} {alignment} residual={int(has_residual)} dropout={int(has_dropout)}"
                flags = {"HAS_RESIDUAL": has_residual, "HAS_DROPOUT": has_dropout}
                for k, fwd in enumerate(tables["fwd"]):  # every tuning candidate; the first is the pick
                    yield (
                        variant + (f" candidate {k}" if k else ""),
                        _layer_norm_fwd_kernel,
                        {
                            "X": "*bf16",
                            "Residual": "*bf16",
                            "W": "*fp32",
                            "B": "*fp32",
                            "Y": "*bf16",
                            "PreNorm": "*bf16",
                            "Mean": "*fp32",
                            "Rstd": "*fp32",
                        },
                        {"BLOCK_M": fwd.BLOCK_M, "BLOCK_N": fwd.BLOCK_N, **flags, "STORE_PRENORM": has_residual},
                        fwd.options(),
                        divisible,
                    )
                for k, bwd in enumerate(tables["bwd"]):
                    yield (
                        variant + (f" candidate {k}" if k else ""),
                        _layer_norm_bwd_kernel,
                        {
                            "DY": "*bf16",
                            "DPreNorm": "*bf16",
                            "X": "*bf16",
                            "Residual": "*bf16",
                            "W": "*fp32",
                            "Mean": "*fp32",
                            "Rstd": "*fp32",
                            "DX": "*bf16",
                            "DResidual": "*bf16",
                            "DWPartial": "*fp32",
                            "DBPartial": "*fp32",
                        },
                        {
                            "BLOCK_M": bwd.BLOCK_M,
                            "BLOCK_N": bwd.BLOCK_N,
                            **flags,
                            "HAS_DPRENORM": has_residual,
                            "STORE_DRESIDUAL": has_residual,
                            "LOOP_STAGES": bwd.loop_stages,
                        },
                        bwd.options(),
                        divisible,
                    )
        block_n *= 2
