"""Fused attention for an encoder: FlashAttention-2 forward and backward with a
key-padding mask and in-kernel dropout.

Per (batch b, head h), with s = scale * q k^T, padded keys set to -inf,
P = softmax(s) and Z the dropout keep-mask:

    forward    O = (P * Z / (1 - p)) V           padded query rows of O are zero
    backward   dV = (P * Z / (1 - p))^T dO
               dP = (dO V^T) * Z / (1 - p)
               dS = P * (dP - delta),  delta = rowsum(dO * O)
               dQ = scale * dS K,      dK = scale * dS^T Q

The file has the four layers of every kernel in this package:
  1. @triton.jit kernels, fp32 math (`_attn_*_kernel`);
  2. launchers that validate inputs and pick tiles and warps per architecture;
  3. a thin torch.autograd.Function;
  4. the public `attention()`, plus `attention_dropout_mask()` for tests.

What differs from the Triton tutorial (06-fused-attention), whose non-causal
backward gives wrong gradients (triton #4541, #5660, #7216) and which needs T
divisible by 128 and has no padding mask:
  - every key and query tile is bounds-checked, so any T works;
  - the backward is two kernels, dK/dV (one program per key tile, looping over
    all query tiles) and dQ (one program per query tile, looping over all key
    tiles), both over the full non-causal range, no atomics;
  - a small kernel finds each sequence's first and last real token, and every
    loop runs only over the tiles between them: tiles that are entirely
    padding at either end are skipped, so time scales with the real lengths.
    Padding in the middle of a sequence is masked, not skipped.

Self-attention only: q, k and v share T, and key_padding_mask marks both the
keys to ignore and the query rows to zero. Splitting dQ from dK/dV costs two
extra matmuls per tile pair (S and dP are recomputed: 7 matmuls where
FlashAttention-2 with atomic dQ does 5) and buys deterministic gradients.
The output is written (B, T, H, D) in memory and returned as a (B, H, T, D)
view, so merging the heads afterwards needs no copy.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .utils import TileConfig, check_dropout_p, check_float_dtypes, check_same_device, kernel_seed

LOG2E = 1.4426950408889634
SUPPORTED_HEAD_DIMS = (32, 64, 128)


# ---------------------------------------------------------------------------
# 1. Kernels
# ---------------------------------------------------------------------------
# Small @triton.jit helpers first, as _attn_fwd_inner in the Triton tutorial.
# Triton inlines them, yet they are not quite free: each inlined call leaves
# debug line-info labels in the PTX, and ptxas allocates registers around them
# differently. kernels.compile_check is the judge (see _attn_bwd_dkdv_kernel).

@triton.jit
def _mma_operand(x, dtype: tl.constexpr, UPCAST: tl.constexpr):
    """Round a tl.dot operand to the I/O dtype, as the tensor cores consume it.

    subtle: Triton's interpreter stores bf16 as raw uint16 and its tl.dot
    multiplies the bit patterns (triton #11584). Under the interpreter the
    launcher sets UPCAST for bf16, and the rounded operand is handed back in
    fp32: bf16 products are exact in fp32, so the result matches the GPU's.
    """
    x = x.to(dtype)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _dropout_keep(seed, rows, cols, T, dropout_p):
    """Keep-mask of the attention-probability elements (rows, cols) of one head.

    rows: query indices offset by (b * H + h) * T; cols: key indices. The
    Philox counter is the element's linear index in a dense (B, H, T, T)
    tensor, so forward, backward and the debug helper draw the same bits.
    """
    offsets = rows.to(tl.int64) * T + cols
    return tl.rand(seed, offsets) >= dropout_p


@triton.jit
def _head_ptr(X, b, h, stride_b, stride_h):
    """Pointer to token 0 of head h of sequence b in a (B, H, T, D) tensor.

    The offsets are int64: B * H * T * D passes 2**31 elements at real sizes.
    """
    return X + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h


@triton.jit
def _load_rows(head, offs, offs_d, stride_t, T):
    """(BLOCK, HEAD_DIM) tile of one head (a _head_ptr): tokens offs (BLOCK,) by features offs_d (HEAD_DIM,).

    Tokens at or past T read as 0, which is what lets any T work.
    """
    in_bounds = (offs < T)[:, None]
    return tl.load(head + offs[:, None] * stride_t + offs_d[None, :], mask=in_bounds, other=0.0)


@triton.jit
def _load_operand(head, offs, offs_d, stride_t, T, UPCAST: tl.constexpr):
    """(BLOCK, HEAD_DIM) Q, K, V or dO tile: _load_rows, rounded for tl.dot by _mma_operand."""
    return _mma_operand(_load_rows(head, offs, offs_d, stride_t, T), head.dtype.element_ty, UPCAST)


@triton.jit
def _store_rows(head, offs, offs_d, stride_t, T, x):
    """Store x, an fp32 (BLOCK, HEAD_DIM) tile, as tokens offs of one head, in the head's dtype.

    Tokens at or past T are not written: they lie past the end of the tensor.
    """
    tl.store(head + offs[:, None] * stride_t + offs_d[None, :], x.to(head.dtype.element_ty),
             mask=(offs < T)[:, None])


@triton.jit
def _is_real(KeyMask, stride_mb, b, offs, T, HAS_MASK: tl.constexpr):
    """(BLOCK,) bool: whether tokens offs of sequence b are real, that is in bounds and, with a mask, unpadded."""
    if HAS_MASK:
        real = tl.load(KeyMask + b * stride_mb + offs, mask=offs < T, other=0) != 0
    else:
        real = offs < T
    return real


@triton.jit
def _tile_range(KVRange, b, start, T, BLOCK: tl.constexpr, HAS_MASK: tl.constexpr):
    """(lo, hi), int32 scalars: the tokens of the other side that a program owning
    tokens [start, start + BLOCK) of sequence b loops over.

    The other side is the keys for a query tile and the queries for a key tile
    (self-attention: both have the same real tokens). lo is the sequence's
    first real token and hi one past its last, from _attn_kv_range_kernel; the
    loop is `range((lo // LOOP_BLOCK) * LOOP_BLOCK, hi, LOOP_BLOCK)`, so tiles
    of pure padding at either end are skipped. When the owned tile is all
    padding, hi drops to lo: the loop visits at most the tile holding lo, and
    the owned rows' results are discarded anyway (zeroed output, -inf scores,
    +inf lse). Without a mask: (0, T).

    subtle: the rounding down stays at the loop, not in here: moved in, it
    spilled the fp32 dK/dV kernel on sm_80 (kernels.compile_check).
    """
    if HAS_MASK:
        lo = tl.load(KVRange + 2 * b)
        hi = tl.load(KVRange + 2 * b + 1)
        hi = tl.where((start < hi) & (start + BLOCK > lo), hi, lo)
    else:
        lo = 0
        hi = T
    return lo, hi


@triton.jit
def _load_row_stats(LSE, Delta, row_base, offs_m, q_real):
    """(lse, delta), each (BLOCK_M,) fp32: the forward's log-sum-exp and the backward's delta for queries offs_m.

    row_base is the head's row offset, (b * H + h) * T. subtle: padded query
    rows load lse = +inf, so their probabilities exp2(s - lse), and every
    gradient through them, are exactly 0.
    """
    lse = tl.load(LSE + row_base + offs_m, mask=q_real, other=float("inf"))
    delta = tl.load(Delta + row_base + offs_m, mask=q_real, other=0.0)
    return lse, delta


@triton.jit
def _attn_kv_range_kernel(
    KeyMask,  # (B, T) bool, True for real tokens
    KVRange,  # (B, 2) int32 out: first real token, one past the last ([0, 0) when none)
    stride_mb,
    T,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    first = tl.zeros((), tl.int32) + T
    last = tl.zeros((), tl.int32)
    for start in range(0, T, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        real = tl.load(KeyMask + b * stride_mb + offs, mask=offs < T, other=0) != 0
        first = tl.minimum(first, tl.min(tl.where(real, offs, T), 0))
        last = tl.maximum(last, tl.max(tl.where(real, offs + 1, 0), 0))
    tl.store(KVRange + 2 * b, tl.minimum(first, last))
    tl.store(KVRange + 2 * b + 1, last)


@triton.jit(do_not_specialize=["seed"])
def _attn_fwd_kernel(
    Q,  # (B, H, T, D) queries, unit stride along D
    K,  # (B, H, T, D) keys, unit stride along D
    V,  # (B, H, T, D) values, unit stride along D
    KeyMask,  # (B, T) bool, True for real tokens (read when HAS_MASK)
    KVRange,  # (B, 2) int32 from _attn_kv_range_kernel (read when HAS_MASK)
    Out,  # (B, H, T, D) out, unit stride along D
    LSE,  # (B, H, T) fp32 out: log2 of the softmax denominator, scores in log2 units
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot,
    stride_mb,
    H, T,
    qk_scale,  # softmax_scale * log2(e): the softmax runs on exp2
    dropout_p,
    seed,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOTS: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    h = tl.program_id(1)
    b = tl.program_id(2)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_head = _head_ptr(Q, b, h, stride_qb, stride_qh)
    k_head = _head_ptr(K, b, h, stride_kb, stride_kh)
    v_head = _head_ptr(V, b, h, stride_vb, stride_vh)
    o_head = _head_ptr(Out, b, h, stride_ob, stride_oh)
    row_base = (b * H + h) * T  # row offset of this head in the (B, H, T) LSE and dropout counters

    # A query tile of pure padding leaves its key loop (nearly) empty: see _tile_range.
    lo, hi = _tile_range(KVRange, b, start_m, T, BLOCK_M, HAS_MASK)
    q_real = _is_real(KeyMask, stride_mb, b, offs_m, T, HAS_MASK)
    q = _load_operand(q_head, offs_m, offs_d, stride_qt, T, UPCAST_DOTS)  # (BLOCK_M, HEAD_DIM)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running row max, log2 units
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running softmax denominator (before dropout)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    keep_scale = 1.0 / (1.0 - dropout_p)

    # subtle: the first tile visited holds the first real key, so every row's
    # max is finite after it and exp2(m_i - m_new) never sees -inf - -inf.
    for start_n in range((lo // BLOCK_N) * BLOCK_N, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_operand(k_head, offs_n, offs_d, stride_kt, T, UPCAST_DOTS)  # (BLOCK_N, HEAD_DIM)
        v = _load_operand(v_head, offs_n, offs_d, stride_vt, T, UPCAST_DOTS)  # (BLOCK_N, HEAD_DIM)
        k_real = _is_real(KeyMask, stride_mb, b, offs_n, T, HAS_MASK)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        s = s * qk_scale + tl.where(k_real, 0.0, float("-inf"))[None, :]
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if HAS_DROPOUT:
            keep = _dropout_keep(seed, row_base + offs_m[:, None], offs_n[None, :], T, dropout_p)
            p = tl.where(keep, p * keep_scale, 0.0)
        p = _mma_operand(p, V.dtype.element_ty, UPCAST_DOTS)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
        m_i = m_new

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)  # l_i is 0 when the loop was empty: an all-padding tile
    out = tl.where(q_real[:, None], acc / l_safe[:, None], 0.0)
    _store_rows(o_head, offs_m, offs_d, stride_ot, T, out)
    tl.store(LSE + row_base + offs_m, m_i + tl.log2(l_safe), mask=offs_m < T)


@triton.jit
def _attn_bwd_preprocess_kernel(
    Out,  # (B, H, T, D) forward output, unit stride along D
    DOut,  # (B, H, T, D) upstream gradient, unit stride along D
    Delta,  # (B, H, T) fp32 out: rowsum(Out * DOut)
    stride_ob, stride_oh, stride_ot,
    stride_dob, stride_doh, stride_dot,
    H, T,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    h = tl.program_id(1)
    b = tl.program_id(2)
    offs_d = tl.arange(0, HEAD_DIM)
    o = _load_rows(_head_ptr(Out, b, h, stride_ob, stride_oh), offs_m, offs_d, stride_ot, T).to(tl.float32)
    do = _load_rows(_head_ptr(DOut, b, h, stride_dob, stride_doh), offs_m, offs_d, stride_dot, T).to(tl.float32)
    tl.store(Delta + (b * H + h) * T + offs_m, tl.sum(o * do, 1), mask=offs_m < T)


@triton.jit(do_not_specialize=["seed"])
def _attn_bwd_dkdv_kernel(
    Q,  # (B, H, T, D) queries, unit stride along D
    K,  # (B, H, T, D) keys, unit stride along D
    V,  # (B, H, T, D) values, unit stride along D
    DOut,  # (B, H, T, D) upstream gradient, unit stride along D
    KeyMask,  # (B, T) bool, True for real tokens (read when HAS_MASK)
    KVRange,  # (B, 2) int32 from _attn_kv_range_kernel (read when HAS_MASK)
    LSE,  # (B, H, T) fp32 from the forward
    Delta,  # (B, H, T) fp32 from _attn_bwd_preprocess_kernel
    DK,  # (B, H, T, D) out, unit stride along D
    DV,  # (B, H, T, D) out, unit stride along D
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot,
    stride_dkb, stride_dkh, stride_dkt,
    stride_dvb, stride_dvh, stride_dvt,
    stride_mb,
    H, T,
    sm_scale,  # softmax_scale
    qk_scale,  # softmax_scale * log2(e)
    dropout_p,
    seed,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOTS: tl.constexpr,
):
    # One program owns BLOCK_N keys and walks every query tile; scores are
    # computed transposed, (BLOCK_N, BLOCK_M), so dK and dV need no transposes.
    start_n = tl.program_id(0) * BLOCK_N
    h = tl.program_id(1)
    b = tl.program_id(2)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q_head = _head_ptr(Q, b, h, stride_qb, stride_qh)
    k_head = _head_ptr(K, b, h, stride_kb, stride_kh)
    v_head = _head_ptr(V, b, h, stride_vb, stride_vh)
    do_head = _head_ptr(DOut, b, h, stride_dob, stride_doh)
    row_base = (b * H + h) * T

    # A key tile of pure padding leaves its query loop (nearly) empty: see _tile_range.
    lo, hi = _tile_range(KVRange, b, start_n, T, BLOCK_N, HAS_MASK)
    k_real = _is_real(KeyMask, stride_mb, b, offs_n, T, HAS_MASK)
    k_bias = tl.where(k_real, 0.0, float("-inf"))

    k = _load_operand(k_head, offs_n, offs_d, stride_kt, T, UPCAST_DOTS)  # (BLOCK_N, HEAD_DIM)
    v = _load_operand(v_head, offs_n, offs_d, stride_vt, T, UPCAST_DOTS)  # (BLOCK_N, HEAD_DIM)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    keep_scale = 1.0 / (1.0 - dropout_p)

    for start_m in range((lo // BLOCK_M) * BLOCK_M, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load_operand(q_head, offs_m, offs_d, stride_qt, T, UPCAST_DOTS)  # (BLOCK_M, HEAD_DIM)
        do = _load_operand(do_head, offs_m, offs_d, stride_dot, T, UPCAST_DOTS)  # (BLOCK_M, HEAD_DIM)
        # subtle: this is _is_real written out. Called here, its debug line-info
        # labels make ptxas use up to 61 more registers a thread (sm_90, D=64,
        # mask and dropout); without line info both forms compile alike.
        if HAS_MASK:
            q_real = tl.load(KeyMask + b * stride_mb + offs_m, mask=offs_m < T, other=0) != 0
        else:
            q_real = offs_m < T
        lse, delta = _load_row_stats(LSE, Delta, row_base, offs_m, q_real)
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
        p_t = tl.exp2(s_t * qk_scale + k_bias[:, None] - lse[None, :])
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
        if HAS_DROPOUT:
            keep_t = _dropout_keep(seed, row_base + offs_m[None, :], offs_n[:, None], T, dropout_p)
            p_drop_t = tl.where(keep_t, p_t * keep_scale, 0.0)
            dp_t = tl.where(keep_t, dp_t * keep_scale, 0.0)
        else:
            p_drop_t = p_t
        dv += tl.dot(_mma_operand(p_drop_t, DOut.dtype.element_ty, UPCAST_DOTS), do,
                     input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(_mma_operand(ds_t, Q.dtype.element_ty, UPCAST_DOTS), q, input_precision=DOT_PRECISION)

    _store_rows(_head_ptr(DK, b, h, stride_dkb, stride_dkh), offs_n, offs_d, stride_dkt, T, dk * sm_scale)
    _store_rows(_head_ptr(DV, b, h, stride_dvb, stride_dvh), offs_n, offs_d, stride_dvt, T, dv)


@triton.jit(do_not_specialize=["seed"])
def _attn_bwd_dq_kernel(
    Q,  # (B, H, T, D) queries, unit stride along D
    K,  # (B, H, T, D) keys, unit stride along D
    V,  # (B, H, T, D) values, unit stride along D
    DOut,  # (B, H, T, D) upstream gradient, unit stride along D
    KeyMask,  # (B, T) bool, True for real tokens (read when HAS_MASK)
    KVRange,  # (B, 2) int32 from _attn_kv_range_kernel (read when HAS_MASK)
    LSE,  # (B, H, T) fp32 from the forward
    Delta,  # (B, H, T) fp32 from _attn_bwd_preprocess_kernel
    DQ,  # (B, H, T, D) out, unit stride along D
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot,
    stride_dqb, stride_dqh, stride_dqt,
    stride_mb,
    H, T,
    sm_scale,  # softmax_scale
    qk_scale,  # softmax_scale * log2(e)
    dropout_p,
    seed,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOTS: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    h = tl.program_id(1)
    b = tl.program_id(2)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_head = _head_ptr(Q, b, h, stride_qb, stride_qh)
    k_head = _head_ptr(K, b, h, stride_kb, stride_kh)
    v_head = _head_ptr(V, b, h, stride_vb, stride_vh)
    do_head = _head_ptr(DOut, b, h, stride_dob, stride_doh)
    row_base = (b * H + h) * T

    # A query tile of pure padding leaves its key loop (nearly) empty: see _tile_range.
    lo, hi = _tile_range(KVRange, b, start_m, T, BLOCK_M, HAS_MASK)
    q_real = _is_real(KeyMask, stride_mb, b, offs_m, T, HAS_MASK)

    q = _load_operand(q_head, offs_m, offs_d, stride_qt, T, UPCAST_DOTS)  # (BLOCK_M, HEAD_DIM)
    do = _load_operand(do_head, offs_m, offs_d, stride_dot, T, UPCAST_DOTS)  # (BLOCK_M, HEAD_DIM)
    lse, delta = _load_row_stats(LSE, Delta, row_base, offs_m, q_real)  # padded rows: dQ is exactly 0
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    keep_scale = 1.0 / (1.0 - dropout_p)

    for start_n in range((lo // BLOCK_N) * BLOCK_N, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_operand(k_head, offs_n, offs_d, stride_kt, T, UPCAST_DOTS)  # (BLOCK_N, HEAD_DIM)
        v = _load_operand(v_head, offs_n, offs_d, stride_vt, T, UPCAST_DOTS)  # (BLOCK_N, HEAD_DIM)
        k_real = _is_real(KeyMask, stride_mb, b, offs_n, T, HAS_MASK)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        p = tl.exp2(s * qk_scale + tl.where(k_real, 0.0, float("-inf"))[None, :] - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        if HAS_DROPOUT:
            keep = _dropout_keep(seed, row_base + offs_m[:, None], offs_n[None, :], T, dropout_p)
            dp = tl.where(keep, dp * keep_scale, 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(_mma_operand(ds, K.dtype.element_ty, UPCAST_DOTS), k, input_precision=DOT_PRECISION)

    _store_rows(_head_ptr(DQ, b, h, stride_dqb, stride_dqh), offs_m, offs_d, stride_dqt, T, dq * sm_scale)


@triton.jit(do_not_specialize=["seed"])
def _attn_dropout_mask_kernel(
    Keep,  # (B, H, T, T) bool out, contiguous: the keep-mask the kernels above draw
    H, T,
    dropout_p,
    seed,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_base = (tl.program_id(2) * H + tl.program_id(1)) * T
    for start_n in range(0, T, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        keep = _dropout_keep(seed, row_base + offs_m[:, None], offs_n[None, :], T, dropout_p)
        offsets = (row_base + offs_m[:, None]).to(tl.int64) * T + offs_n[None, :]
        tl.store(Keep + offsets, keep, mask=(offs_m < T)[:, None] & (offs_n < T)[None, :])


# True when the kernels above were decorated under TRITON_INTERPRET=1
# (kernels/__init__.py reloads this module when that setting changes).
INTERPRETED = not isinstance(_attn_fwd_kernel, triton.runtime.JITFunction)


# ---------------------------------------------------------------------------
# 2. Launchers
# ---------------------------------------------------------------------------

def attention_configs(arch: int, head_dim: int, dtype: torch.dtype) -> dict[str, TileConfig]:
    """Tiles, warps and pipeline stages of each kernel for one architecture.

    In a TileConfig here, BLOCK_M counts query rows and BLOCK_N key rows.
    arch is the compute capability as an int (80 for A100, 90 for H100); the
    Hopper table serves 90 and newer, the Ampere table everything older.
    Key tiles of dK/dV and query tiles of dQ are the tiles a program keeps
    for its whole loop, so they are the large ones. fp32 inputs run their dots
    as tf32x3 (see _dot_precision), which triples the operand registers, so
    they get small tiles. Every entry is compiled for sm_80 and sm_90 by
    kernels.compile_check, which fails on any register spill.
    """
    hopper = arch >= 90
    if dtype == torch.float32:
        return {"fwd": TileConfig(16, 32, 4, 2), "dkdv": TileConfig(32, 16, 8, 2), "dq": TileConfig(16, 32, 4, 2)}
    if head_dim <= 64:
        return {
            "fwd": TileConfig(128, 64, 8, 3),
            "dkdv": TileConfig(32, 128, 8, 3),
            "dq": TileConfig(128, 32, 4 if hopper else 8, 3),
        }
    return {
        "fwd": TileConfig(128, 64, 8, 3) if hopper else TileConfig(128, 32, 8, 2),
        "dkdv": TileConfig(32, 64, 8, 3),
        "dq": TileConfig(64, 32, 4, 3),
    }


def _arch(device: torch.device) -> int:
    """Compute capability of a CUDA device; the interpreter uses the Ampere table."""
    if device.type != "cuda":
        return 80
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def _dot_precision(dtype: torch.dtype) -> str:
    """How tl.dot multiplies fp32 inputs; fp16/bf16 ignore it.

    fp32 follows torch's matmul setting: one tf32 pass when tf32 is allowed,
    else three (tf32x3: a high and a low tf32 part, fp32-level accuracy on the
    tensor cores). "ieee" would fall back to FMAs and spill heavily.
    """
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "tf32x3"
    return "tf32"


def _constexprs(cfg: TileConfig, head_dim: int, has_mask: bool, has_dropout: bool, dtype: torch.dtype,
                interpreted: bool) -> dict:
    """The compile-time arguments shared by the forward and backward kernels."""
    return dict(HEAD_DIM=head_dim, BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, HAS_MASK=has_mask,
                HAS_DROPOUT=has_dropout, DOT_PRECISION=_dot_precision(dtype),
                UPCAST_DOTS=interpreted and dtype == torch.bfloat16)


# The small kernels: one fixed tile each (BLOCK_N unused by the first two).
_KV_RANGE_TILE = TileConfig(1024, 1, 4, 1)  # _attn_kv_range_kernel: mask entries scanned per step
_PREPROCESS_TILE = TileConfig(64, 1, 4, 1)  # _attn_bwd_preprocess_kernel: rows per program
_MASK_TILE = TileConfig(64, 64, 4, 1)  # _attn_dropout_mask_kernel (a debugging aid)


def _validate(q, k, v, key_padding_mask, dropout_p):
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must all be (B, H, T, D); got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    check_float_dtypes(q, k, v, same=True,
                       message="q, k, v must share one dtype among float16, bfloat16, float32; got {dtypes}")
    check_same_device(q, k, v, message="q, k, v must be on one device")
    B, H, T, D = q.shape
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"the Triton attention kernel supports head dims {SUPPORTED_HEAD_DIMS}; got {D}")
    if T == 0 or B == 0 or H == 0:
        raise ValueError(f"empty attention input of shape {tuple(q.shape)}")
    if B > 65535 or H > 65535:
        raise ValueError(f"batch and heads must each be at most 65535 (a CUDA grid limit); got B={B}, H={H}")
    if key_padding_mask is not None:
        if key_padding_mask.shape != (B, T):
            raise ValueError(f"key_padding_mask must be (B, T) = {(B, T)}; got {tuple(key_padding_mask.shape)}")
        check_same_device(q, key_padding_mask, message="key_padding_mask must be on the same device as q")
    check_dropout_p(dropout_p)


def _unit_last_stride(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _strides3(t):
    return t.stride(0), t.stride(1), t.stride(2)


def _kv_range(key_padding_mask):
    """(B, 2) int32: each sequence's first real token and one past its last."""
    B, T = key_padding_mask.shape
    kv_range = torch.empty(B, 2, dtype=torch.int32, device=key_padding_mask.device)
    _attn_kv_range_kernel[(B,)](key_padding_mask, kv_range, key_padding_mask.stride(0), T,
                                BLOCK=_KV_RANGE_TILE.BLOCK_M, **_KV_RANGE_TILE.options())
    return kv_range


def _mask_args(key_padding_mask, kv_range, placeholder):
    """The (KeyMask, KVRange, stride_mb) kernel arguments; without a mask, placeholders never read."""
    if key_padding_mask is None:
        return placeholder, placeholder, 0
    return key_padding_mask, kv_range, key_padding_mask.stride(0)


def attention_forward(q, k, v, key_padding_mask, dropout_p, softmax_scale, seed):
    """Launch the forward. Returns (out, lse, kv_range): lse and kv_range feed the backward.

    out is laid out (B, T, H, D) in memory and returned as a (B, H, T, D) view.
    """
    B, H, T, D = q.shape
    cfg = attention_configs(_arch(q.device), D, q.dtype)["fwd"]
    kv_range = _kv_range(key_padding_mask) if key_padding_mask is not None else None
    mask, kv_range_arg, stride_mb = _mask_args(key_padding_mask, kv_range, q)
    out = torch.empty(B, T, H, D, dtype=q.dtype, device=q.device).transpose(1, 2)
    lse = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(T, cfg.BLOCK_M), H, B)
    _attn_fwd_kernel[grid](
        q, k, v, mask, kv_range_arg, out, lse,
        *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(out), stride_mb,
        H, T, softmax_scale * LOG2E, dropout_p, seed,
        **_constexprs(cfg, D, key_padding_mask is not None, dropout_p > 0.0, q.dtype, INTERPRETED),
        **cfg.options())
    return out, lse, kv_range


def attention_backward(do, q, k, v, out, lse, key_padding_mask, kv_range, dropout_p, softmax_scale, seed):
    """Launch the backward: delta, then dK/dV, then dQ. Returns (dq, dk, dv)."""
    B, H, T, D = q.shape
    do = _unit_last_stride(do)
    cfgs = attention_configs(_arch(q.device), D, q.dtype)
    has_mask, has_dropout = key_padding_mask is not None, dropout_p > 0.0
    mask, kv_range, stride_mb = _mask_args(key_padding_mask, kv_range, q)

    delta = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    _attn_bwd_preprocess_kernel[(triton.cdiv(T, _PREPROCESS_TILE.BLOCK_M), H, B)](
        out, do, delta, *_strides3(out), *_strides3(do), H, T,
        HEAD_DIM=D, BLOCK_M=_PREPROCESS_TILE.BLOCK_M, **_PREPROCESS_TILE.options())

    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    common = (*_strides3(q), *_strides3(k), *_strides3(v), *_strides3(do))
    scalars = (H, T, softmax_scale, softmax_scale * LOG2E, dropout_p, seed)
    cfg = cfgs["dkdv"]
    _attn_bwd_dkdv_kernel[(triton.cdiv(T, cfg.BLOCK_N), H, B)](
        q, k, v, do, mask, kv_range, lse, delta, dk, dv,
        *common, *_strides3(dk), *_strides3(dv), stride_mb, *scalars,
        **_constexprs(cfg, D, has_mask, has_dropout, q.dtype, INTERPRETED), **cfg.options())
    cfg = cfgs["dq"]
    _attn_bwd_dq_kernel[(triton.cdiv(T, cfg.BLOCK_M), H, B)](
        q, k, v, do, mask, kv_range, lse, delta, dq,
        *common, *_strides3(dq), stride_mb, *scalars,
        **_constexprs(cfg, D, has_mask, has_dropout, q.dtype, INTERPRETED), **cfg.options())
    return dq, dk, dv


# ---------------------------------------------------------------------------
# 3. Autograd
# ---------------------------------------------------------------------------

class FlashAttentionFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, dropout_p, softmax_scale, seed):
        out, lse, kv_range = attention_forward(q, k, v, key_padding_mask, dropout_p, softmax_scale, seed)
        ctx.save_for_backward(q, k, v, out, lse, key_padding_mask, kv_range)
        ctx.dropout_p, ctx.softmax_scale, ctx.seed = dropout_p, softmax_scale, seed
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse, key_padding_mask, kv_range = ctx.saved_tensors
        dq, dk, dv = attention_backward(do, q, k, v, out, lse, key_padding_mask, kv_range,
                                        ctx.dropout_p, ctx.softmax_scale, ctx.seed)
        return dq, dk, dv, None, None, None, None


# ---------------------------------------------------------------------------
# 4. Public functions
# ---------------------------------------------------------------------------

def attention(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None, seed=None):
    """Fused non-causal attention over (B, H, T, D); the semantics of kernels.attention_reference.

    key_padding_mask: (B, T), True for real tokens. Padded query rows output
    zeros and get zero gradients. dropout_p drops attention probabilities with
    a Philox stream keyed by `seed` (drawn from torch's generator when None);
    attention_dropout_mask(seed, ...) returns the keep-mask it used.
    """
    q, k, v = _unit_last_stride(q), _unit_last_stride(k), _unit_last_stride(v)
    _validate(q, k, v, key_padding_mask, dropout_p)
    if key_padding_mask is not None:  # the kernels read it as (B, T) bool with unit stride along T
        key_padding_mask = (key_padding_mask if key_padding_mask.dtype == torch.bool else key_padding_mask != 0)
        key_padding_mask = key_padding_mask.contiguous()
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(q.shape[-1])
    return FlashAttentionFunction.apply(q, k, v, key_padding_mask, float(dropout_p), float(softmax_scale),
                                        kernel_seed(seed, dropout_p))


def attention_dropout_mask(seed, batch, heads, seq_len, dropout_p, device="cpu"):
    """The (B, H, T, T) bool keep-mask that attention(..., dropout_p, seed=seed) applies.

    Pass it as attention_reference(..., dropout_mask=mask) to rebuild exactly
    what the kernel computed.
    """
    keep = torch.empty(batch, heads, seq_len, seq_len, dtype=torch.bool, device=device)
    grid = (triton.cdiv(seq_len, _MASK_TILE.BLOCK_M), heads, batch)
    _attn_dropout_mask_kernel[grid](keep, heads, seq_len, float(dropout_p), int(seed),
                                    BLOCK_M=_MASK_TILE.BLOCK_M, BLOCK_N=_MASK_TILE.BLOCK_N,
                                    **_MASK_TILE.options())
    return keep


# ---------------------------------------------------------------------------
# Ahead-of-time compilation specs (kernels.compile_check)
# ---------------------------------------------------------------------------

def aot_specs(arch: int):
    """Yield (variant, kernel, pointer dtypes, constexprs, launch options) for every
    launch configuration the launchers above use on `arch`.

    fp16 shares the bf16 tiles, so bf16 stands for both. Masks and dropout are
    compiled on and off: the mask-and-dropout variant holds the most registers.
    """
    yield ("", _attn_kv_range_kernel, {"KeyMask": "*i1", "KVRange": "*i32"},
           {"BLOCK": _KV_RANGE_TILE.BLOCK_M}, _KV_RANGE_TILE.options())
    yield ("", _attn_dropout_mask_kernel, {"Keep": "*i1"},
           {"BLOCK_M": _MASK_TILE.BLOCK_M, "BLOCK_N": _MASK_TILE.BLOCK_N}, _MASK_TILE.options())
    for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        io = f"*{dtype_name}"
        for D in SUPPORTED_HEAD_DIMS:
            yield (f"D={D} {dtype_name}", _attn_bwd_preprocess_kernel, {"Out": io, "DOut": io, "Delta": "*fp32"},
                   {"HEAD_DIM": D, "BLOCK_M": _PREPROCESS_TILE.BLOCK_M}, _PREPROCESS_TILE.options())
            cfgs = attention_configs(arch, D, dtype)
            for has_mask, has_dropout in ((False, False), (True, True)):
                variant = f"D={D} {dtype_name} mask={int(has_mask)} dropout={int(has_dropout)}"
                common = {"Q": io, "K": io, "V": io, "KeyMask": "*i1", "KVRange": "*i32", "LSE": "*fp32"}
                for name, kernel, outs in (
                    ("fwd", _attn_fwd_kernel, {"Out": io}),
                    ("dkdv", _attn_bwd_dkdv_kernel, {"DOut": io, "Delta": "*fp32", "DK": io, "DV": io}),
                    ("dq", _attn_bwd_dq_kernel, {"DOut": io, "Delta": "*fp32", "DQ": io}),
                ):
                    cfg = cfgs[name]
                    yield (variant, kernel, {**common, **outs},
                           _constexprs(cfg, D, has_mask, has_dropout, dtype, interpreted=False), cfg.options())
