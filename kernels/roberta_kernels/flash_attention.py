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
  - any T works: the tiles at a sequence's edges check bounds and padding,
    and every loop runs in three parts, a masked head and tail around an
    unmasked middle of tiles that are in bounds and entirely real
    (_full_tiles; a sequence with padding in the middle is masked
    throughout). The unmasked tiles fold the softmax scale into one FMA
    per score and advance their pointers by one tile a step;
  - the backward is two kernels, dK/dV (one program per key tile, looping over
    all query tiles) and dQ (one program per query tile, looping over all key
    tiles), both over the full non-causal range, no atomics;
  - a small kernel finds each sequence's first and last real token, and every
    loop runs only over the tiles between them: tiles that are entirely
    padding at either end are skipped, so time scales with the real lengths.
    Padding in the middle of a sequence is masked, not skipped;
  - dropout draws sixteen keep-decisions of 8 bits per Philox call, grouped
    as the tensor cores' accumulator holds them, so no thread needs another's
    bits (see _dropout_keep), and its 1 / (1 - p) is applied once to O, dV,
    dK and dQ rather than to every probability: dropout adds ~8-10 PTX
    instructions per score to a loop (sm_90, bf16, D=64), where eight 16-bit
    decisions per call added ~20 and a Philox per element ~80
    (python -m roberta_kernels.compile_check --report);
  - on sm_90 and newer, Q, K, V, dO and the outputs move between global and
    shared memory by TMA, through tensor descriptors made in the kernel
    (_tile_desc, tma_kernels), as in the tutorial's Hopper path; sm_80,
    fp32 inputs and unaligned tensors keep cp.async;
  - on CUDA, triton.autotune picks each kernel's tiles from a small table
    per architecture (attention_candidates); everywhere else the first entry.

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

from .utils import TileConfig, check_dropout_p, check_float_dtypes, check_same_device, kernel_seed, launch
from .utils import tuned_configs as utils_tuned_configs

LOG2E = 1.4426950408889634
SUPPORTED_HEAD_DIMS = (32, 64, 128)


# ---------------------------------------------------------------------------
# 1. Kernels
# ---------------------------------------------------------------------------
# Small @triton.jit helpers first, as _attn_fwd_inner in the Triton tutorial.
# Triton inlines them, yet they are not quite free: each inlined call leaves
# debug line-info labels in the PTX, and ptxas allocates registers around them
# differently. roberta_kernels.compile_check is the judge (see _attn_bwd_dkdv_kernel).


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
def _dropout_threshold(dropout_p):
    """uint32 scalar: an element is kept when its 8 random bits are >= this.

    The threshold is round(p * 256), at most 255, so an element is dropped
    with probability threshold / 256: p rounded to the nearest multiple of
    2**-8, as FlashAttention's 8-bit threshold. The kept values are still
    scaled by the exact 1 / (1 - p), so the output's expectation is off by
    (threshold / 256 - p) / (1 - p), at most 2**-9 / (1 - p) in size: 0.18%
    low at RoBERTa's p = 0.1 (threshold 26, drop rate 0.1016), below one bf16
    rounding step (2**-8). tests/test_kernels_attention.py pins the rate.
    """
    return tl.minimum(tl.cast(dropout_p * 256.0 + 0.5, tl.uint32), 255)


@triton.jit
def _bytes_kept(r, threshold):
    """Four bools: whether each byte of the uint32 r is >= threshold (< 256).

    Masking a byte in place and comparing with the threshold shifted to the
    same byte is one AND and one compare per byte, no shift; the top byte needs no AND.
    """
    return (
        (r & 0xFF) >= threshold,
        (r & 0xFF00) >= (threshold << 8),
        (r & 0xFF0000) >= (threshold << 16),
        r >= (threshold << 24),
    )


@triton.jit
def _bytes_joined(r, threshold):
    """(.., 2, 2) bool from (..) uint32: [.., e, jb] is byte 2 * jb + e of r >= threshold."""
    b0, b1, b2, b3 = _bytes_kept(r, threshold)
    return tl.join(tl.join(b0, b1), tl.join(b2, b3))


@triton.jit
def _dropout_keep(seed, head, rows, start_n, threshold, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(BLOCK_M, BLOCK_N) bool keep-mask of one head's probabilities: query rows `rows` (BLOCK_M,) by
    keys start_n + arange(BLOCK_N), with BLOCK_N a power of two >= 16 and start_n a multiple of it.

    Keys are grouped in blocks of 64, key n = 64 blk + 8 j + 2 q + e (j < 8,
    q < 4, e < 2). One Philox call, counter (4 blk + q, row, head, 0), draws
    the 16 decisions of group (row, blk, q), 8 bits each: decision (j, e) is
    byte 2 (j % 2) + e of output word j // 2 (see _dropout_threshold for
    what 8 bits cost in precision). The grouping is the tensor cores' own:
    in the accumulator of a Hopper wgmma or an Ampere mma.sync, a thread
    holds keys 2 q + e + 8 j of its rows, so the forward and dQ kernels draw
    exactly the bits each thread needs and unpack them in its own registers,
    with no layout conversion through shared memory; the joins and the
    permute below only relabel registers. That and the 8-bit lanes took
    dropout from ~21 to ~9 PTX instructions per score (python -m
    roberta_kernels.compile_check --report). The counter depends on the element
    alone, not on the tiling, so the forward, both backward kernels (dK/dV
    with transposed tiles) and the debug helper draw the same bits.
    """
    if BLOCK_N >= 64:
        groups = start_n // 16 + tl.arange(0, BLOCK_N // 16)  # 4 blk + q
        g = (rows * 0)[:, None] + groups[None, :]  # (BLOCK_M, BLOCK_N // 16)
        row = rows[:, None] + (groups * 0)[None, :]
        r0, r1, r2, r3 = tl.philox(seed, g, row, row * 0 + head, row * 0)
        # tl.join appends its axis last: (.., e, jb, w0, w1), word w = 2 w1 + w0
        x = tl.join(
            tl.join(_bytes_joined(r0, threshold), _bytes_joined(r1, threshold)),
            tl.join(_bytes_joined(r2, threshold), _bytes_joined(r3, threshold)),
        )
        x = tl.reshape(x, (BLOCK_M, BLOCK_N // 64, 4, 2, 2, 2, 2))  # (row, blk, q, e, jb, w0, w1)
        x = tl.permute(x, (0, 1, 6, 5, 4, 2, 3))  # (row, blk, w1, w0, jb, q, e): key order, j = 2 w + jb
    else:
        # A tile narrower than a block takes its share of one block's group: j0 <= j < j0 + BLOCK_N / 8
        groups = (start_n // 64) * 4 + tl.arange(0, 4)
        g = (rows * 0)[:, None] + groups[None, :]  # (BLOCK_M, 4)
        row = rows[:, None] + (groups * 0)[None, :]
        r0, r1, r2, r3 = tl.philox(seed, g, row, row * 0 + head, row * 0)
        part = (start_n % 64) // BLOCK_N
        if BLOCK_N == 32:  # words 2 part, 2 part + 1
            x = tl.join(
                _bytes_joined(tl.where(part == 0, r0, r2), threshold),
                _bytes_joined(tl.where(part == 0, r1, r3), threshold),
            )  # (row, q, e, jb, w0)
            x = tl.permute(x, (0, 4, 3, 1, 2))  # (row, w0, jb, q, e)
        else:  # BLOCK_N == 16: word `part`
            word = tl.where(part == 0, r0, tl.where(part == 1, r1, tl.where(part == 2, r2, r3)))
            x = tl.permute(_bytes_joined(word, threshold), (0, 3, 1, 2))  # (row, jb, q, e)
    return tl.reshape(x, (BLOCK_M, BLOCK_N))


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
def _tile_desc(head, T, stride_t, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, USE_TMA: tl.constexpr):
    """What the Hopper path reads a head's (BLOCK, HEAD_DIM) tiles through: a TMA tensor descriptor
    of the head's (T, HEAD_DIM) rows; without USE_TMA, `head` itself (a placeholder, never used).

    The descriptor is made on the device, per program (the launcher gives Triton an allocator for
    it: _tma_allocator). TMA copies whole tiles from global to shared memory in the background,
    tracked by an mbarrier, and fills rows past T with zeros, so no load needs a bounds mask. It
    needs 16-byte aligned addresses and strides: the launcher checks (_tma_fits).
    """
    desc = head
    if USE_TMA:
        desc = tl.make_tensor_descriptor(
            head, shape=[T, HEAD_DIM], strides=[stride_t, 1], block_shape=[BLOCK, HEAD_DIM]
        )
    return desc


@triton.jit
def _load_tile(desc, ptrs, start, T, BLOCK: tl.constexpr, MASKED: tl.constexpr, USE_TMA: tl.constexpr):
    """(BLOCK, HEAD_DIM) tile of rows start + arange(BLOCK) of one head, in its dtype: through the
    TMA descriptor `desc` (rows past T are zeros) or from `ptrs`, masked to rows < T when MASKED."""
    if USE_TMA:
        x = desc.load([start, 0])
    elif MASKED:
        x = tl.load(ptrs, mask=((start + tl.arange(0, BLOCK)) < T)[:, None], other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def _load_operand(
    head,
    stride_t,
    offs,
    offs_d,
    start,
    T,
    BLOCK: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    USE_TMA: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """A tile a program loads once and keeps (its Q; or its K and V): rows offs = start +
    arange(BLOCK) of one head, masked to rows < T, rounded as a tl.dot operand."""
    x = _load_tile(
        _tile_desc(head, T, stride_t, BLOCK, HEAD_DIM, USE_TMA),
        head + offs[:, None] * stride_t + offs_d[None, :],
        start,
        T,
        BLOCK,
        True,
        USE_TMA,
    )
    return _mma_operand(x, head.dtype.element_ty, UPCAST)


@triton.jit
def _store_tile(head, desc, start, offs_d, stride_t, T, x, BLOCK: tl.constexpr, USE_TMA: tl.constexpr):
    """Store x, an fp32 (BLOCK, HEAD_DIM) tile, as rows start + arange(BLOCK) of one head in its
    dtype: through the TMA descriptor `desc` or by _store_rows. Rows at or past T are not written."""
    if USE_TMA:
        desc.store([start, 0], x.to(head.dtype.element_ty))
    else:
        _store_rows(head, start + tl.arange(0, BLOCK), offs_d, stride_t, T, x)


@triton.jit
def _store_rows(head, offs, offs_d, stride_t, T, x):
    """Store x, an fp32 (BLOCK, HEAD_DIM) tile, as tokens offs of one head, in the head's dtype.

    Tokens at or past T are not written: they lie past the end of the tensor.
    """
    tl.store(head + offs[:, None] * stride_t + offs_d[None, :], x.to(head.dtype.element_ty), mask=(offs < T)[:, None])


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
    spilled the fp32 dK/dV kernel on sm_80 (roberta_kernels.compile_check).
    """
    if HAS_MASK:
        lo = tl.load(KVRange + 3 * b)
        hi = tl.load(KVRange + 3 * b + 1)
        hi = tl.where((start < hi) & (start + BLOCK > lo), hi, lo)
    else:
        lo = 0
        hi = T
    return lo, hi


@triton.jit
def _full_tiles(KVRange, b, lo, hi, LOOP_BLOCK: tl.constexpr, HAS_MASK: tl.constexpr):
    """(full_lo, full_hi), int32 scalars: the loop tiles of [lo, hi) (from _tile_range) that need no masking.

    A loop over [(lo // LOOP_BLOCK) * LOOP_BLOCK, hi) splits into three:
    [.., full_lo) masked (at most the tile holding lo), [full_lo, full_hi)
    unmasked, [full_hi, hi) masked (at most the tile holding hi - 1). The
    unmasked tiles lie inside [lo, hi), so they are in bounds, and when the
    sequence is dense (no padding between its first and last real token,
    _attn_kv_range_kernel's flag; always without a mask) they hold only real
    tokens. A sequence with holes is masked throughout: full_lo = full_hi =
    the first tile.
    """
    first = (lo // LOOP_BLOCK) * LOOP_BLOCK
    full_lo = ((lo + LOOP_BLOCK - 1) // LOOP_BLOCK) * LOOP_BLOCK
    full_hi = tl.maximum(full_lo, (hi // LOOP_BLOCK) * LOOP_BLOCK)
    if HAS_MASK:
        dense = tl.load(KVRange + 3 * b + 2) != 0
        full_lo = tl.where(dense, full_lo, first)
        full_hi = tl.where(dense, full_hi, first)
    return full_lo, full_hi


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
    KVRange,  # (B, 3) int32 out: first real token, one past the last ([0, 0) when none), 1 if all between are real
    stride_mb,
    T,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    first = tl.zeros((), tl.int32) + T
    last = tl.zeros((), tl.int32)
    count = tl.zeros((), tl.int32)
    for start in range(0, T, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        real = tl.load(KeyMask + b * stride_mb + offs, mask=offs < T, other=0) != 0
        first = tl.minimum(first, tl.min(tl.where(real, offs, T), 0))
        last = tl.maximum(last, tl.max(tl.where(real, offs + 1, 0), 0))
        count += tl.sum(real.to(tl.int32), 0)
    first = tl.minimum(first, last)
    tl.store(KVRange + 3 * b, first)
    tl.store(KVRange + 3 * b + 1, last)
    tl.store(KVRange + 3 * b + 2, (count == last - first).to(tl.int32))


@triton.jit
def _attn_fwd_inner(
    acc,
    l_i,
    m_i,
    q,
    k_head,
    v_head,
    k_desc,
    v_desc,
    KeyMask,
    stride_mb,
    b,
    offs_m,
    offs_d,
    stride_kt,
    stride_vt,
    start,
    stop,
    T,
    qk_scale,
    seed,
    head,
    threshold,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOTS: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    """The forward's loop over key tiles [start, stop): online softmax into (acc, l_i, m_i), returned updated.

    MASKED tiles check bounds and padding; the others (see _full_tiles) load
    without masks and fold the softmax scale into one FMA per score, as the
    Triton tutorial does: the row max is taken before scaling, which needs
    qk_scale >= 0 (attention() moves a negative scale's sign onto k).
    """
    # subtle: pointers advance by one tile a step; recomputing them from offs_n
    # each step costs ~50 integer instructions a step (sm_90, D=64).
    k_ptrs = k_head + (start + tl.arange(0, BLOCK_N))[:, None] * stride_kt + offs_d[None, :]
    v_ptrs = v_head + (start + tl.arange(0, BLOCK_N))[:, None] * stride_vt + offs_d[None, :]
    # subtle: masked runs are one tile (bar a sequence with holes), so they pipeline two stages, not
    # the launch's three: at three, a mask spilled the 128-key Hopper tiles (and D=128 with dropout);
    # at one, K and V are loaded into registers instead of shared memory, and spilled too.
    for start_n in tl.range(start, stop, BLOCK_N, num_stages=2 if MASKED else None):
        k = _mma_operand(
            _load_tile(k_desc, k_ptrs, start_n, T, BLOCK_N, MASKED, USE_TMA), k_head.dtype.element_ty, UPCAST_DOTS
        )  # (BLOCK_N, HEAD_DIM)
        v = _mma_operand(
            _load_tile(v_desc, v_ptrs, start_n, T, BLOCK_N, MASKED, USE_TMA), v_head.dtype.element_ty, UPCAST_DOTS
        )  # (BLOCK_N, HEAD_DIM)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        if MASKED:
            k_real = _is_real(KeyMask, stride_mb, b, start_n + tl.arange(0, BLOCK_N), T, HAS_MASK)
            s = s * qk_scale + tl.where(k_real, 0.0, float("-inf"))[None, :]
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp2(s - m_new[:, None])
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
            p = tl.exp2(s * qk_scale - m_new[:, None])
        if not USE_TMA:
            k_ptrs += BLOCK_N * stride_kt
            v_ptrs += BLOCK_N * stride_vt
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        if HAS_DROPOUT:
            p = tl.where(_dropout_keep(seed, head, offs_m, start_n, threshold, BLOCK_M, BLOCK_N), p, 0.0)
        p = _mma_operand(p, v_head.dtype.element_ty, UPCAST_DOTS)
        acc = tl.dot(p, v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["seed"])
def _attn_fwd_kernel(
    Q,  # (B, H, T, D) queries, unit stride along D
    K,  # (B, H, T, D) keys, unit stride along D
    V,  # (B, H, T, D) values, unit stride along D
    KeyMask,  # (B, T) bool, True for real tokens (read when HAS_MASK)
    KVRange,  # (B, 3) int32 from _attn_kv_range_kernel (read when HAS_MASK)
    Out,  # (B, H, T, D) out, unit stride along D
    LSE,  # (B, H, T) fp32 out: log2 of the softmax denominator, scores in log2 units
    stride_qb,
    stride_qh,
    stride_qt,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_vb,
    stride_vh,
    stride_vt,
    stride_ob,
    stride_oh,
    stride_ot,
    stride_mb,
    H,
    T,
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
    USE_TMA: tl.constexpr,  # load and store tiles through TMA descriptors (sm_90+), else by pointers
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
    head = b * H + h  # this head's index among the B * H: keys the dropout counters
    row_base = head * T  # row offset of this head in the (B, H, T) LSE

    # A query tile of pure padding leaves its key loop (nearly) empty: see _tile_range.
    lo, hi = _tile_range(KVRange, b, start_m, T, BLOCK_M, HAS_MASK)
    q_real = _is_real(KeyMask, stride_mb, b, offs_m, T, HAS_MASK)
    k_desc = _tile_desc(k_head, T, stride_kt, BLOCK_N, HEAD_DIM, USE_TMA)
    v_desc = _tile_desc(v_head, T, stride_vt, BLOCK_N, HEAD_DIM, USE_TMA)
    q = _load_operand(q_head, stride_qt, offs_m, offs_d, start_m, T, BLOCK_M, HEAD_DIM, USE_TMA, UPCAST_DOTS)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running row max, log2 units
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running softmax denominator (before dropout)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    threshold = _dropout_threshold(dropout_p)

    # Key tiles in three runs: masked head, unmasked middle, masked tail (_full_tiles).
    # subtle: the first tile visited holds the first real key, so every row's
    # max is finite after it and exp2(m_i - m_new) never sees -inf - -inf.
    full_lo, full_hi = _full_tiles(KVRange, b, lo, hi, BLOCK_N, HAS_MASK)
    acc, l_i, m_i = _attn_fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        k_head,
        v_head,
        k_desc,
        v_desc,
        KeyMask,
        stride_mb,
        b,
        offs_m,
        offs_d,
        stride_kt,
        stride_vt,
        (lo // BLOCK_N) * BLOCK_N,
        full_lo,
        T,
        qk_scale,
        seed,
        head,
        threshold,
        BLOCK_M,
        BLOCK_N,
        True,
        HAS_MASK,
        HAS_DROPOUT,
        DOT_PRECISION,
        UPCAST_DOTS,
        USE_TMA,
    )
    acc, l_i, m_i = _attn_fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        k_head,
        v_head,
        k_desc,
        v_desc,
        KeyMask,
        stride_mb,
        b,
        offs_m,
        offs_d,
        stride_kt,
        stride_vt,
        full_lo,
        full_hi,
        T,
        qk_scale,
        seed,
        head,
        threshold,
        BLOCK_M,
        BLOCK_N,
        False,
        HAS_MASK,
        HAS_DROPOUT,
        DOT_PRECISION,
        UPCAST_DOTS,
        USE_TMA,
    )
    acc, l_i, m_i = _attn_fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        k_head,
        v_head,
        k_desc,
        v_desc,
        KeyMask,
        stride_mb,
        b,
        offs_m,
        offs_d,
        stride_kt,
        stride_vt,
        full_hi,
        hi,
        T,
        qk_scale,
        seed,
        head,
        threshold,
        BLOCK_M,
        BLOCK_N,
        True,
        HAS_MASK,
        HAS_DROPOUT,
        DOT_PRECISION,
        UPCAST_DOTS,
        USE_TMA,
    )

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)  # l_i is 0 when the loop was empty: an all-padding tile
    out = acc / l_safe[:, None]
    if HAS_DROPOUT:  # the kept probabilities' 1 / (1 - p), applied once to the sum rather than in the loop
        out = out * (1.0 / (1.0 - dropout_p))
    out = tl.where(q_real[:, None], out, 0.0)
    _store_tile(
        o_head,
        _tile_desc(o_head, T, stride_ot, BLOCK_M, HEAD_DIM, USE_TMA),
        start_m,
        offs_d,
        stride_ot,
        T,
        out,
        BLOCK_M,
        USE_TMA,
    )
    tl.store(LSE + row_base + offs_m, m_i + tl.log2(l_safe), mask=offs_m < T)


@triton.jit
def _attn_bwd_preprocess_kernel(
    Out,  # (B, H, T, D) forward output, unit stride along D
    DOut,  # (B, H, T, D) upstream gradient, unit stride along D
    Delta,  # (B, H, T) fp32 out: rowsum(Out * DOut)
    stride_ob,
    stride_oh,
    stride_ot,
    stride_dob,
    stride_doh,
    stride_dot,
    H,
    T,
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


@triton.jit
def _attn_dkdv_inner(
    dk,
    dv,
    k,
    v,
    q_head,
    do_head,
    q_desc,
    do_desc,
    KeyMask,
    stride_mb,
    b,
    LSE,
    Delta,
    row_base,
    offs_d,
    stride_qt,
    stride_dot,
    start,
    stop,
    start_n,
    T,
    qk_scale,
    dropout_p,
    seed,
    head,
    threshold,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOTS: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    """dK/dV's loop over query tiles [start, stop) for keys start_n + arange(BLOCK_N): (dk, dv), returned updated.

    Scores are transposed, (BLOCK_N, BLOCK_M). MASKED tiles check the
    queries' bounds and padding (padded queries load lse = +inf, so p = 0);
    the others load without masks. Keys are never masked here: row n of dK
    and dV depends only on key n's scores, so the kernel zeroes the rows of
    padded keys once, after the loop (whatever they hold, even inf or nan).
    """
    for start_m in tl.range(start, stop, BLOCK_M, num_stages=2 if MASKED else None):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        # subtle: addresses are recomputed each step, not carried as pointers as in the
        # forward: the carried pointers' registers spilled the fp32 D=128 kernel on sm_90.
        q_ptrs = q_head + offs_m[:, None] * stride_qt + offs_d[None, :]
        do_ptrs = do_head + offs_m[:, None] * stride_dot + offs_d[None, :]
        q = _mma_operand(
            _load_tile(q_desc, q_ptrs, start_m, T, BLOCK_M, MASKED, USE_TMA), q_head.dtype.element_ty, UPCAST_DOTS
        )  # (BLOCK_M, HEAD_DIM)
        do = _mma_operand(
            _load_tile(do_desc, do_ptrs, start_m, T, BLOCK_M, MASKED, USE_TMA), do_head.dtype.element_ty, UPCAST_DOTS
        )  # (BLOCK_M, HEAD_DIM)
        if MASKED:
            lse, delta = _load_row_stats(
                LSE, Delta, row_base, offs_m, _is_real(KeyMask, stride_mb, b, offs_m, T, HAS_MASK)
            )
        else:
            lse = tl.load(LSE + row_base + offs_m)
            delta = tl.load(Delta + row_base + offs_m)
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
        p_t = tl.exp2(s_t * qk_scale - lse[None, :])
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
        if HAS_DROPOUT:
            keep_t = tl.trans(_dropout_keep(seed, head, offs_m, start_n, threshold, BLOCK_M, BLOCK_N))
            p_drop_t = tl.where(keep_t, p_t, 0.0)  # 1 / (1 - p) is applied to dV once, at the end
            dp_t = tl.where(keep_t, dp_t, 0.0)
            delta = delta * (1.0 - dropout_p)  # dS without its 1 / (1 - p): see the dQ kernel
        else:
            p_drop_t = p_t
        dv = tl.dot(
            _mma_operand(p_drop_t, do_head.dtype.element_ty, UPCAST_DOTS), do, dv, input_precision=DOT_PRECISION
        )
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(_mma_operand(ds_t, q_head.dtype.element_ty, UPCAST_DOTS), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit(do_not_specialize=["seed"])
def _attn_bwd_dkdv_kernel(
    Q,  # (B, H, T, D) queries, unit stride along D
    K,  # (B, H, T, D) keys, unit stride along D
    V,  # (B, H, T, D) values, unit stride along D
    DOut,  # (B, H, T, D) upstream gradient, unit stride along D
    KeyMask,  # (B, T) bool, True for real tokens (read when HAS_MASK)
    KVRange,  # (B, 3) int32 from _attn_kv_range_kernel (read when HAS_MASK)
    LSE,  # (B, H, T) fp32 from the forward
    Delta,  # (B, H, T) fp32 from _attn_bwd_preprocess_kernel
    DK,  # (B, H, T, D) out, unit stride along D
    DV,  # (B, H, T, D) out, unit stride along D
    stride_qb,
    stride_qh,
    stride_qt,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_vb,
    stride_vh,
    stride_vt,
    stride_dob,
    stride_doh,
    stride_dot,
    stride_dkb,
    stride_dkh,
    stride_dkt,
    stride_dvb,
    stride_dvh,
    stride_dvt,
    stride_mb,
    H,
    T,
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
    USE_TMA: tl.constexpr,  # load and store tiles through TMA descriptors (sm_90+), else by pointers
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
    head = b * H + h
    row_base = head * T

    # A key tile of pure padding leaves its query loop (nearly) empty: see _tile_range.
    lo, hi = _tile_range(KVRange, b, start_n, T, BLOCK_N, HAS_MASK)
    k = _load_operand(k_head, stride_kt, offs_n, offs_d, start_n, T, BLOCK_N, HEAD_DIM, USE_TMA, UPCAST_DOTS)
    v = _load_operand(v_head, stride_vt, offs_n, offs_d, start_n, T, BLOCK_N, HEAD_DIM, USE_TMA, UPCAST_DOTS)
    q_desc = _tile_desc(q_head, T, stride_qt, BLOCK_M, HEAD_DIM, USE_TMA)
    do_desc = _tile_desc(do_head, T, stride_dot, BLOCK_M, HEAD_DIM, USE_TMA)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    keep_scale = 1.0 / (1.0 - dropout_p)
    threshold = _dropout_threshold(dropout_p)

    # Query tiles in three runs, as in the forward: masked head, unmasked middle, masked tail.
    full_lo, full_hi = _full_tiles(KVRange, b, lo, hi, BLOCK_M, HAS_MASK)
    dk, dv = _attn_dkdv_inner(
        dk,
        dv,
        k,
        v,
        q_head,
        do_head,
        q_desc,
        do_desc,
        KeyMask,
        stride_mb,
        b,
        LSE,
        Delta,
        row_base,
        offs_d,
        stride_qt,
        stride_dot,
        (lo // BLOCK_M) * BLOCK_M,
        full_lo,
        start_n,
        T,
        qk_scale,
        dropout_p,
        seed,
        head,
        threshold,
        BLOCK_M,
        BLOCK_N,
        True,
        HAS_MASK,
        HAS_DROPOUT,
        DOT_PRECISION,
        UPCAST_DOTS,
        USE_TMA,
    )
    dk, dv = _attn_dkdv_inner(
        dk,
        dv,
        k,
        v,
        q_head,
        do_head,
        q_desc,
        do_desc,
        KeyMask,
        stride_mb,
        b,
        LSE,
        Delta,
        row_base,
        offs_d,
        stride_qt,
        stride_dot,
        full_lo,
        full_hi,
        start_n,
        T,
        qk_scale,
        dropout_p,
        seed,
        head,
        threshold,
        BLOCK_M,
        BLOCK_N,
        False,
        HAS_MASK,
        HAS_DROPOUT,
        DOT_PRECISION,
        UPCAST_DOTS,
        USE_TMA,
    )
    dk, dv = _attn_dkdv_inner(
        dk,
        dv,
        k,
        v,
        q_head,
        do_head,
        q_desc,
        do_desc,
        KeyMask,
        stride_mb,
        b,
        LSE,
        Delta,
        row_base,
        offs_d,
        stride_qt,
        stride_dot,
        full_hi,
        hi,
        start_n,
        T,
        qk_scale,
        dropout_p,
        seed,
        head,
        threshold,
        BLOCK_M,
        BLOCK_N,
        True,
        HAS_MASK,
        HAS_DROPOUT,
        DOT_PRECISION,
        UPCAST_DOTS,
        USE_TMA,
    )

    # Padded keys were not masked in the loop: their rows of dK and dV are dropped here.
    k_real = _is_real(KeyMask, stride_mb, b, offs_n, T, HAS_MASK)[:, None]
    dk = tl.where(k_real, dk, 0.0)
    dv = tl.where(k_real, dv, 0.0)
    if HAS_DROPOUT:  # the kept probabilities' 1 / (1 - p), left out of the loop
        dv = dv * keep_scale
        dk = dk * keep_scale
    dk_head = _head_ptr(DK, b, h, stride_dkb, stride_dkh)
    dv_head = _head_ptr(DV, b, h, stride_dvb, stride_dvh)
    _store_tile(
        dk_head,
        _tile_desc(dk_head, T, stride_dkt, BLOCK_N, HEAD_DIM, USE_TMA),
        start_n,
        offs_d,
        stride_dkt,
        T,
        dk * sm_scale,
        BLOCK_N,
        USE_TMA,
    )
    _store_tile(
        dv_head,
        _tile_desc(dv_head, T, stride_dvt, BLOCK_N, HEAD_DIM, USE_TMA),
        start_n,
        offs_d,
        stride_dvt,
        T,
        dv,
        BLOCK_N,
        USE_TMA,
    )


@triton.jit
def _attn_dq_inner(
    dq,
    q,
    do,
    lse,
    delta,
    k_head,
    v_head,
    k_desc,
    v_desc,
    KeyMask,
    stride_mb,
    b,
    offs_m,
    offs_d,
    stride_kt,
    stride_vt,
    start,
    stop,
    T,
    qk_scale,
    seed,
    head,
    threshold,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOTS: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    """dQ's loop over key tiles [start, stop): dq (BLOCK_M, HEAD_DIM) fp32, returned updated.

    MASKED and pipelining as in _attn_fwd_inner; here the scale and the
    log-sum-exp fold into one FMA on every tile. Padded query rows have
    lse = +inf, so their p is 0 on both paths.
    """
    k_ptrs = k_head + (start + tl.arange(0, BLOCK_N))[:, None] * stride_kt + offs_d[None, :]
    v_ptrs = v_head + (start + tl.arange(0, BLOCK_N))[:, None] * stride_vt + offs_d[None, :]
    for start_n in tl.range(start, stop, BLOCK_N, num_stages=2 if MASKED else None):
        k = _mma_operand(
            _load_tile(k_desc, k_ptrs, start_n, T, BLOCK_N, MASKED, USE_TMA), k_head.dtype.element_ty, UPCAST_DOTS
        )  # (BLOCK_N, HEAD_DIM)
        v = _mma_operand(
            _load_tile(v_desc, v_ptrs, start_n, T, BLOCK_N, MASKED, USE_TMA), v_head.dtype.element_ty, UPCAST_DOTS
        )  # (BLOCK_N, HEAD_DIM)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        if MASKED:
            k_real = _is_real(KeyMask, stride_mb, b, start_n + tl.arange(0, BLOCK_N), T, HAS_MASK)
            p = tl.exp2(s * qk_scale + tl.where(k_real, 0.0, float("-inf"))[None, :] - lse[:, None])
        else:
            p = tl.exp2(s * qk_scale - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        if HAS_DROPOUT:
            dp = tl.where(_dropout_keep(seed, head, offs_m, start_n, threshold, BLOCK_M, BLOCK_N), dp, 0.0)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(_mma_operand(ds, k_head.dtype.element_ty, UPCAST_DOTS), k, dq, input_precision=DOT_PRECISION)
        if not USE_TMA:
            k_ptrs += BLOCK_N * stride_kt
            v_ptrs += BLOCK_N * stride_vt
    return dq


@triton.jit(do_not_specialize=["seed"])
def _attn_bwd_dq_kernel(
    Q,  # (B, H, T, D) queries, unit stride along D
    K,  # (B, H, T, D) keys, unit stride along D
    V,  # (B, H, T, D) values, unit stride along D
    DOut,  # (B, H, T, D) upstream gradient, unit stride along D
    KeyMask,  # (B, T) bool, True for real tokens (read when HAS_MASK)
    KVRange,  # (B, 3) int32 from _attn_kv_range_kernel (read when HAS_MASK)
    LSE,  # (B, H, T) fp32 from the forward
    Delta,  # (B, H, T) fp32 from _attn_bwd_preprocess_kernel
    DQ,  # (B, H, T, D) out, unit stride along D
    stride_qb,
    stride_qh,
    stride_qt,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_vb,
    stride_vh,
    stride_vt,
    stride_dob,
    stride_doh,
    stride_dot,
    stride_dqb,
    stride_dqh,
    stride_dqt,
    stride_mb,
    H,
    T,
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
    USE_TMA: tl.constexpr,  # load and store tiles through TMA descriptors (sm_90+), else by pointers
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
    head = b * H + h
    row_base = head * T

    # A query tile of pure padding leaves its key loop (nearly) empty: see _tile_range.
    lo, hi = _tile_range(KVRange, b, start_m, T, BLOCK_M, HAS_MASK)
    q_real = _is_real(KeyMask, stride_mb, b, offs_m, T, HAS_MASK)

    q = _load_operand(q_head, stride_qt, offs_m, offs_d, start_m, T, BLOCK_M, HEAD_DIM, USE_TMA, UPCAST_DOTS)
    do = _load_operand(do_head, stride_dot, offs_m, offs_d, start_m, T, BLOCK_M, HEAD_DIM, USE_TMA, UPCAST_DOTS)
    k_desc = _tile_desc(k_head, T, stride_kt, BLOCK_N, HEAD_DIM, USE_TMA)
    v_desc = _tile_desc(v_head, T, stride_vt, BLOCK_N, HEAD_DIM, USE_TMA)
    lse, delta = _load_row_stats(LSE, Delta, row_base, offs_m, q_real)  # padded rows: dQ is exactly 0
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    threshold = _dropout_threshold(dropout_p)
    if HAS_DROPOUT:
        # dS = P * (Z * dP / (1 - p) - delta) = P * (Z * dP - (1 - p) * delta) / (1 - p): the loop
        # accumulates the second form without the division, applied to dQ once at the end.
        delta = delta * (1.0 - dropout_p)
        sm_scale = sm_scale / (1.0 - dropout_p)

    # Key tiles in three runs, as in the forward: masked head, unmasked middle, masked tail.
    full_lo, full_hi = _full_tiles(KVRange, b, lo, hi, BLOCK_N, HAS_MASK)
    dq = _attn_dq_inner(
        dq,
        q,
        do,
        lse,
        delta,
        k_head,
        v_head,
        k_desc,
        v_desc,
        KeyMask,
        stride_mb,
        b,
        offs_m,
        offs_d,
        stride_kt,
        stride_vt,
        (lo // BLOCK_N) * BLOCK_N,
        full_lo,
        T,
        qk_scale,
        seed,
        head,
        threshold,
        BLOCK_M,
        BLOCK_N,
        True,
        HAS_MASK,
        HAS_DROPOUT,
        DOT_PRECISION,
        UPCAST_DOTS,
        USE_TMA,
    )
    dq = _attn_dq_inner(
        dq,
        q,
        do,
        lse,
        delta,
        k_head,
        v_head,
        k_desc,
        v_desc,
        KeyMask,
        stride_mb,
        b,
        offs_m,
        offs_d,
        stride_kt,
        stride_vt,
        full_lo,
        full_hi,
        T,
        qk_scale,
        seed,
        head,
        threshold,
        BLOCK_M,
        BLOCK_N,
        False,
        HAS_MASK,
        HAS_DROPOUT,
        DOT_PRECISION,
        UPCAST_DOTS,
        USE_TMA,
    )
    dq = _attn_dq_inner(
        dq,
        q,
        do,
        lse,
        delta,
        k_head,
        v_head,
        k_desc,
        v_desc,
        KeyMask,
        stride_mb,
        b,
        offs_m,
        offs_d,
        stride_kt,
        stride_vt,
        full_hi,
        hi,
        T,
        qk_scale,
        seed,
        head,
        threshold,
        BLOCK_M,
        BLOCK_N,
        True,
        HAS_MASK,
        HAS_DROPOUT,
        DOT_PRECISION,
        UPCAST_DOTS,
        USE_TMA,
    )

    dq_head = _head_ptr(DQ, b, h, stride_dqb, stride_dqh)
    _store_tile(
        dq_head,
        _tile_desc(dq_head, T, stride_dqt, BLOCK_M, HEAD_DIM, USE_TMA),
        start_m,
        offs_d,
        stride_dqt,
        T,
        dq * sm_scale,
        BLOCK_M,
        USE_TMA,
    )


@triton.jit(do_not_specialize=["seed"])
def _attn_dropout_mask_kernel(
    Keep,  # (B, H, T, T) bool out, contiguous: the keep-mask the kernels above draw
    H,
    T,
    dropout_p,
    seed,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    head = tl.program_id(2) * H + tl.program_id(1)
    row_base = head * T
    threshold = _dropout_threshold(dropout_p)
    for start_n in range(0, T, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        keep = _dropout_keep(seed, head, offs_m, start_n, threshold, BLOCK_M, BLOCK_N)
        offsets = (row_base + offs_m[:, None]).to(tl.int64) * T + offs_n[None, :]
        tl.store(Keep + offsets, keep, mask=(offs_m < T)[:, None] & (offs_n < T)[None, :])


# True when the kernels above were decorated under TRITON_INTERPRET=1
# (kernels/roberta_kernels/__init__.py reloads this module when that setting changes).
INTERPRETED = not isinstance(_attn_fwd_kernel, triton.runtime.JITFunction)


# ---------------------------------------------------------------------------
# 2. Launchers
# ---------------------------------------------------------------------------


def attention_configs(arch: int, head_dim: int, dtype: torch.dtype, dropout: bool = False) -> dict[str, TileConfig]:
    """Tiles, warps and pipeline stages of each kernel for one architecture.

    In a TileConfig here, BLOCK_M counts query rows and BLOCK_N key rows.
    arch is the compute capability as an int (80 for A100, 90 for H100); the
    Hopper table serves 90 and newer, the Ampere table everything older.
    Key tiles of dK/dV and query tiles of dQ are the tiles a program keeps
    for its whole loop, so they are the large ones. fp32 inputs run their dots
    as tf32x3 (see _dot_precision), which triples the operand registers, so
    they get small tiles. dropout: whether the kernels draw dropout bits,
    which hold registers of their own. Every entry is compiled for sm_80 and
    sm_90 by roberta_kernels.compile_check, which fails on any register spill.
    """
    hopper = arch >= 90
    if dtype == torch.float32:
        # subtle: with dropout at D=128, dQ spilled 8 B on sm_90 at 4 warps, dK/dV 28-52 B at 32 query rows;
        # below D=128, dK/dV with dropout spilled 8 B on 8 warps (sm_90, D=32, triton 3.6): 4 warps there.
        heavy = dropout and head_dim > 64
        return {
            "fwd": TileConfig(16, 32, 4, 2),
            "dkdv": TileConfig(16 if heavy else 32, 16, 4 if dropout and not heavy else 8, 2),
            "dq": TileConfig(16, 32, 8 if heavy else 4, 2),
        }
    if head_dim <= 64:
        return {
            # 128-key tiles on Hopper, as the Triton tutorial: the loop's fixed cost per step (wgmma
            # descriptors, pointers, barriers) is spread over twice the scores (compile_check --report).
            # With dropout's bits on top they spilled (mask + dropout, D=32 and 64): 64 there,
            # and 32 on sm_80, where 64 spilled 8-16 B.
            "fwd": TileConfig(128, (128 if not dropout else 64) if hopper else (32 if dropout else 64), 8, 3),
            # 2 stages on sm_80 with dropout: at 3 it spilled 8 B (D=64, triton 3.6)
            "dkdv": TileConfig(32, 128, 8, 3 if hopper or not dropout else 2),
            # 8 warps with dropout on Hopper: at 4, its bits spilled dQ (24 B, D=64). 64 keys a step
            # with dropout on Hopper: one Philox draws a row's 16 decisions in 64 keys (_dropout_keep),
            # so 32-key tiles would throw half of every draw away; on sm_80 64 keys spilled (48 B, D=64).
            "dq": TileConfig(128, 64 if hopper and dropout else 32, 4 if hopper and not dropout else 8, 3),
        }
    return {
        # sm_80 with dropout: 128 x 32 on 8 warps spilled 16 B (mask + dropout)
        "fwd": (
            TileConfig(128, 64, 8, 3) if hopper else TileConfig(64, 32, 4, 2) if dropout else TileConfig(128, 32, 8, 2)
        ),
        "dkdv": TileConfig(32, 64, 8, 3),
        # subtle: 8 warps on sm_80: at 4, dropout's bit unpacking spilled mask + dropout (24 B).
        "dq": TileConfig(64, 32, 4 if hopper else 8, 3),
    }


def attention_candidates(
    arch: int, head_dim: int, dtype: torch.dtype, dropout: bool = False, tma: bool = True
) -> dict[str, list[TileConfig]]:
    """Each kernel's tuning table: the configs triton.autotune times on a GPU, attention_configs' first.

    The first is the one used where nothing is timed: under the interpreter and on the CPU the
    launchers always take it, so results there are deterministic. The second halves the tile's
    long side on 4 warps: the same registers per thread, twice the programs, which wins when
    B * H * cdiv(T, tile) leaves SMs idle (short sequences, few heads) or on a card whose
    shared memory or scheduler prefers smaller CTAs. fp32 inputs have one config (their tiles are
    already the smallest that run tf32x3 without spilling), and so does sm_90's cp.async fallback
    (tma=False where the kernel has a TMA path: tma_kernels), which real tensors rarely take.
    roberta_kernels.compile_check compiles every entry, for sm_80 and sm_90, and fails on any spill.
    """
    base = attention_configs(arch, head_dim, dtype, dropout)
    fallback = not tma and arch >= 90 and TMA_AVAILABLE
    tables = {name: [cfg] for name, cfg in base.items()}
    if dtype == torch.float32:
        return tables
    fwd, dkdv, dq = base["fwd"], base["dkdv"], base["dq"]
    alternatives = {"dq": TileConfig(dq.BLOCK_M // 2, dq.BLOCK_N, 4, dq.num_stages)}
    # subtle: the halved forward spilled on sm_80 (16-32 B, D=64 mask, D=128 mask + dropout) and the
    # halved dK/dV at D=128 on sm_90 (76-484 B, TMA), so those keep their single config.
    if arch >= 90:
        alternatives["fwd"] = TileConfig(fwd.BLOCK_M // 2, fwd.BLOCK_N, 4, fwd.num_stages)
    if head_dim <= 64:
        alternatives["dkdv"] = TileConfig(dkdv.BLOCK_M, dkdv.BLOCK_N // 2, 4, dkdv.num_stages)
    for name, alternative in alternatives.items():
        if not (fallback and name in tma_kernels(arch, head_dim, dtype, dropout)):
            tables[name].append(alternative)
    return tables


# triton.autotune wrappers, one per kernel and tuning table (attention_candidates), made on first use.
_AUTOTUNED: dict = {}


def _launch(kernel, grid, args: tuple, constexprs: dict, candidates: list[TileConfig], device: torch.device):
    """utils.launch keyed on T, the head dim, the mask, dropout and TMA flags. Autotune's repeated
    runs are safe: every kernel here only overwrites its outputs (no atomics, nothing
    accumulated across launches) and reads its inputs, dropout's seed included, unchanged."""
    launch(
        kernel,
        grid,
        args,
        constexprs,
        candidates,
        device,
        _AUTOTUNED,
        ["T", "HEAD_DIM", "HAS_MASK", "HAS_DROPOUT", "USE_TMA"],
    )


def tuned_configs() -> dict[str, str]:
    """What autotune picked so far in this process: "kernel [candidates]" -> the best config, for
    every autotuned kernel that has run (benchmarks/gpu_suite.py records it with its timings)."""
    return utils_tuned_configs(_AUTOTUNED)


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


def _constexprs(
    cfg: TileConfig | None,
    head_dim: int,
    has_mask: bool,
    has_dropout: bool,
    dtype: torch.dtype,
    interpreted: bool,
    use_tma: bool = False,
) -> dict:
    """The compile-time arguments shared by the forward and backward kernels; the tile's
    BLOCK_M and BLOCK_N only with a cfg (without, the launch's tile config adds them: _launch)."""
    tile = {} if cfg is None else dict(BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N)
    return dict(
        HEAD_DIM=head_dim,
        **tile,
        HAS_MASK=has_mask,
        HAS_DROPOUT=has_dropout,
        DOT_PRECISION=_dot_precision(dtype),
        UPCAST_DOTS=interpreted and dtype == torch.bfloat16,
        USE_TMA=use_tma,
    )


# Whether this triton can make TMA descriptors in a kernel (tl.make_tensor_descriptor: triton >= 3.4).
TMA_AVAILABLE = hasattr(tl, "make_tensor_descriptor")


def tma_kernels(arch: int, head_dim: int, dtype: torch.dtype, dropout: bool = False) -> frozenset:
    """Which of the kernels ("fwd", "dkdv", "dq") load and store through TMA on `arch`, when the
    tensors allow it (_use_tma). roberta_kernels.compile_check compiles both paths of each.

    None before sm_90, nor for fp32 inputs: their tf32x3 dots hold three times the operand
    registers, and with TMA most of their variants spilled (8 B to 3 KB, sm_90). The dK/dV kernel
    at D=128 with dropout keeps cp.async: with TMA it spilled 216 B (mask + dropout), and smaller
    tiles cost 2-4x the instructions per score.
    """
    if arch < 90 or not TMA_AVAILABLE or dtype == torch.float32:
        return frozenset()
    if dropout and head_dim > 64:
        return frozenset({"fwd", "dq"})
    return frozenset({"fwd", "dkdv", "dq"})


def _tma_fits(*tensors) -> bool:
    """Whether TMA can address every tensor given: a 16-byte aligned start and 16-byte multiples for
    every stride but the last (unit) one, so that each head's start is aligned too."""
    return all(t.data_ptr() % 16 == 0 and all(s * t.element_size() % 16 == 0 for s in t.stride()[:-1]) for t in tensors)


def _use_tma(arch: int, *tensors) -> bool:
    """The Hopper path: TMA loads and stores on sm_90 and newer when this triton has descriptors and
    the tensors' layout allows them (for the kernels in tma_kernels); everything else (sm_80, older
    triton, odd strides) takes cp.async.

    The descriptors are made on the device, in a global-memory scratch buffer that Triton allocates
    at launch through triton.set_allocator; on CUDA an allocator is set here unless one was already.
    """
    if arch < 90 or not TMA_AVAILABLE or not _tma_fits(*tensors):
        return False
    if tensors[0].device.type == "cuda":
        _set_tma_allocator()
    return True


def _tma_scratch(size: int, alignment: int, stream):
    """Triton's allocator protocol: `size` bytes of device memory for the kernels' TMA descriptors."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _set_tma_allocator() -> None:
    """Give Triton _tma_scratch as its allocator, unless the caller has set one of their own."""
    from triton.runtime import _allocation  # no public getter; set_allocator is public

    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(_tma_scratch)


# The small kernels: one fixed tile each (BLOCK_N unused by the first two).
_KV_RANGE_TILE = TileConfig(1024, 1, 4, 1)  # _attn_kv_range_kernel: mask entries scanned per step
_PREPROCESS_TILE = TileConfig(64, 1, 4, 1)  # _attn_bwd_preprocess_kernel: rows per program
_MASK_TILE = TileConfig(64, 64, 4, 1)  # _attn_dropout_mask_kernel (a debugging aid)


def _validate(q, k, v, key_padding_mask, dropout_p):
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must all be (B, H, T, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    check_float_dtypes(
        q, k, v, same=True, message="q, k, v must share one dtype among float16, bfloat16, float32; got {dtypes}"
    )
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
    """(B, 3) int32: each sequence's first real token, one past its last, and 1 if every token between is real."""
    B, T = key_padding_mask.shape
    kv_range = torch.empty(B, 3, dtype=torch.int32, device=key_padding_mask.device)
    _attn_kv_range_kernel[(B,)](
        key_padding_mask,
        kv_range,
        key_padding_mask.stride(0),
        T,
        BLOCK=_KV_RANGE_TILE.BLOCK_M,
        **_KV_RANGE_TILE.options(),
    )
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
    kv_range = _kv_range(key_padding_mask) if key_padding_mask is not None else None
    mask, kv_range_arg, stride_mb = _mask_args(key_padding_mask, kv_range, q)
    out = torch.empty(B, T, H, D, dtype=q.dtype, device=q.device).transpose(1, 2)
    lse = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    arch = _arch(q.device)
    use_tma = "fwd" in tma_kernels(arch, D, q.dtype, dropout_p > 0.0) and _use_tma(arch, q, k, v, out)
    _launch(
        _attn_fwd_kernel,
        lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), H, B),
        (
            q,
            k,
            v,
            mask,
            kv_range_arg,
            out,
            lse,
            *_strides3(q),
            *_strides3(k),
            *_strides3(v),
            *_strides3(out),
            stride_mb,
            H,
            T,
            softmax_scale * LOG2E,
            dropout_p,
            seed,
        ),
        _constexprs(None, D, key_padding_mask is not None, dropout_p > 0.0, q.dtype, INTERPRETED, use_tma),
        attention_candidates(arch, D, q.dtype, dropout_p > 0.0, use_tma)["fwd"],
        q.device,
    )
    return out, lse, kv_range


def attention_backward(do, q, k, v, out, lse, key_padding_mask, kv_range, dropout_p, softmax_scale, seed):
    """Launch the backward: delta, then dK/dV, then dQ. Returns (dq, dk, dv)."""
    B, H, T, D = q.shape
    do = _unit_last_stride(do)
    has_mask, has_dropout = key_padding_mask is not None, dropout_p > 0.0
    mask, kv_range, stride_mb = _mask_args(key_padding_mask, kv_range, q)

    delta = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    _attn_bwd_preprocess_kernel[(triton.cdiv(T, _PREPROCESS_TILE.BLOCK_M), H, B)](
        out,
        do,
        delta,
        *_strides3(out),
        *_strides3(do),
        H,
        T,
        HEAD_DIM=D,
        BLOCK_M=_PREPROCESS_TILE.BLOCK_M,
        **_PREPROCESS_TILE.options(),
    )

    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    arch = _arch(q.device)
    tma = tma_kernels(arch, D, q.dtype, has_dropout) if _use_tma(arch, q, k, v, do, dq, dk, dv) else frozenset()
    common = (*_strides3(q), *_strides3(k), *_strides3(v), *_strides3(do))
    scalars = (H, T, softmax_scale, softmax_scale * LOG2E, dropout_p, seed)
    _launch(
        _attn_bwd_dkdv_kernel,
        lambda meta: (triton.cdiv(T, meta["BLOCK_N"]), H, B),
        (q, k, v, do, mask, kv_range, lse, delta, dk, dv, *common, *_strides3(dk), *_strides3(dv), stride_mb, *scalars),
        _constexprs(None, D, has_mask, has_dropout, q.dtype, INTERPRETED, "dkdv" in tma),
        attention_candidates(arch, D, q.dtype, has_dropout, "dkdv" in tma)["dkdv"],
        q.device,
    )
    _launch(
        _attn_bwd_dq_kernel,
        lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), H, B),
        (q, k, v, do, mask, kv_range, lse, delta, dq, *common, *_strides3(dq), stride_mb, *scalars),
        _constexprs(None, D, has_mask, has_dropout, q.dtype, INTERPRETED, "dq" in tma),
        attention_candidates(arch, D, q.dtype, has_dropout, "dq" in tma)["dq"],
        q.device,
    )
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
        dq, dk, dv = attention_backward(
            do, q, k, v, out, lse, key_padding_mask, kv_range, ctx.dropout_p, ctx.softmax_scale, ctx.seed
        )
        return dq, dk, dv, None, None, None, None


# ---------------------------------------------------------------------------
# 4. Public functions
# ---------------------------------------------------------------------------


def attention(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None, seed=None):
    """Fused non-causal attention over (B, H, T, D); the semantics of roberta_kernels.attention_reference.

    key_padding_mask: (B, T), True for real tokens. Padded query rows output
    zeros and get zero gradients. dropout_p drops attention probabilities with
    a Philox stream keyed by `seed` (drawn from torch's generator when None);
    attention_dropout_mask(seed, ...) returns the keep-mask it used.
    """
    q, k, v = _unit_last_stride(q), _unit_last_stride(k), _unit_last_stride(v)
    _validate(q, k, v, key_padding_mask, dropout_p)
    if key_padding_mask is not None:  # the kernels read it as (B, T) bool with unit stride along T
        key_padding_mask = key_padding_mask if key_padding_mask.dtype == torch.bool else key_padding_mask != 0
        key_padding_mask = key_padding_mask.contiguous()
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(q.shape[-1])
    if softmax_scale < 0:  # the forward's unmasked loop needs scale >= 0 (_attn_fwd_inner): q (-k)^T |scale|
        k, softmax_scale = -k, -softmax_scale
    return FlashAttentionFunction.apply(
        q, k, v, key_padding_mask, float(dropout_p), float(softmax_scale), kernel_seed(seed, dropout_p)
    )


def attention_dropout_mask(seed, batch, heads, seq_len, dropout_p, device="cpu"):
    """The (B, H, T, T) bool keep-mask that attention(..., dropout_p, seed=seed) applies.

    Pass it as attention_reference(..., dropout_mask=mask) to rebuild exactly
    what the kernel computed.
    """
    keep = torch.empty(batch, heads, seq_len, seq_len, dtype=torch.bool, device=device)
    grid = (triton.cdiv(seq_len, _MASK_TILE.BLOCK_M), heads, batch)
    _attn_dropout_mask_kernel[grid](
        keep,
        heads,
        seq_len,
        float(dropout_p),
        int(seed),
        BLOCK_M=_MASK_TILE.BLOCK_M,
        BLOCK_N=_MASK_TILE.BLOCK_N,
        **_MASK_TILE.options(),
    )
    return keep


# ---------------------------------------------------------------------------
# Ahead-of-time compilation specs (roberta_kernels.compile_check)
# ---------------------------------------------------------------------------


def aot_specs(arch: int):
    """Yield (variant, kernel, pointer dtypes, constexprs, launch options) for every
    launch configuration the launchers above use on `arch`.

    fp16 shares the bf16 tiles, so bf16 stands for both. Every combination of
    mask and dropout is compiled: the tiles depend on dropout, the
    mask-and-dropout variant holds the most registers, and the pairs show
    what each costs (compile_check --report).
    """
    yield (
        "",
        _attn_kv_range_kernel,
        {"KeyMask": "*i1", "KVRange": "*i32"},
        {"BLOCK": _KV_RANGE_TILE.BLOCK_M},
        _KV_RANGE_TILE.options(),
    )
    yield (
        "",
        _attn_dropout_mask_kernel,
        {"Keep": "*i1"},
        {"BLOCK_M": _MASK_TILE.BLOCK_M, "BLOCK_N": _MASK_TILE.BLOCK_N},
        _MASK_TILE.options(),
    )
    for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        io = f"*{dtype_name}"
        for D in SUPPORTED_HEAD_DIMS:
            yield (
                f"D={D} {dtype_name}",
                _attn_bwd_preprocess_kernel,
                {"Out": io, "DOut": io, "Delta": "*fp32"},
                {"HEAD_DIM": D, "BLOCK_M": _PREPROCESS_TILE.BLOCK_M},
                _PREPROCESS_TILE.options(),
            )
            for has_mask, has_dropout in ((False, False), (True, False), (False, True), (True, True)):
                common = {"Q": io, "K": io, "V": io, "KeyMask": "*i1", "KVRange": "*i32", "LSE": "*fp32"}
                tma = tma_kernels(arch, D, dtype, has_dropout)
                for use_tma in (False, True) if tma else (False,):
                    for name, kernel, outs in (
                        ("fwd", _attn_fwd_kernel, {"Out": io}),
                        ("dkdv", _attn_bwd_dkdv_kernel, {"DOut": io, "Delta": "*fp32", "DK": io, "DV": io}),
                        ("dq", _attn_bwd_dq_kernel, {"DOut": io, "Delta": "*fp32", "DQ": io}),
                    ):
                        if use_tma and name not in tma:
                            continue
                        candidates = attention_candidates(arch, D, dtype, has_dropout, use_tma or name not in tma)
                        for index, cfg in enumerate(candidates[name]):
                            # the first candidate is "D=..", the others name their tile ("64x128w4s3 D=..")
                            tile = f"{cfg.BLOCK_M}x{cfg.BLOCK_N}w{cfg.num_warps}s{cfg.num_stages} " if index else ""
                            variant = (
                                f"{'tma ' if use_tma else ''}{tile}D={D} {dtype_name} mask={int(has_mask)} "
                                f"dropout={int(has_dropout)}"
                            )
                            yield (
                                variant,
                                kernel,
                                {**common, **outs},
                                _constexprs(cfg, D, has_mask, has_dropout, dtype, False, use_tma),
                                cfg.options(),
                            )
