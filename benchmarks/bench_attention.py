"""Fused Triton attention against torch's attention kernels, on one GPU.

    python -m benchmarks.bench_attention [--tokens 16384] [--seq-lens 128 512 1024] [--head-dims 64 128]
                                            [--heads 12] [--dtype bf16] [--pad 0 0.5] [--dropout 0]

For every (T, D, padding) shape, with B = tokens // T sequences and right
padding (every sequence has round(T * (1 - pad)) real tokens), it times the
forward and the forward+backward of
  triton        roberta_kernels.attention with the key-padding mask (none when pad = 0);
  sdpa-flash    F.scaled_dot_product_attention, flash backend (no mask: pad = 0 only);
  sdpa-mem-eff  F.scaled_dot_product_attention, memory-efficient backend, boolean mask;
  naive         matmul, masked softmax, matmul in the input dtype;
and reports milliseconds, TFLOP/s with FlashAttention's FLOP count on real
tokens only (forward 4 * H * D * sum(L_b^2), backward 2.5 times that), the
fraction of the card's dense peak, and the max error of the output and of
dQ/dK/dV against the fp32 reference on real rows (padded rows are zero in
ours, arbitrary in torch's; no gradient arrives at them, as in the model).
Timings are medians: triton.testing.do_bench with return_mode="median" (its
default is the mean), L2 flushed. Results go to
benchmarks/results/attention_<card>_<date>.json with the card's name, the
date and the command; numbers from different cards are not comparable.
Needs a CUDA GPU.

Targets from the kernels issue (H100, bf16, 16k tokens, T = 512, D = 64):
forward >= 280 TFLOP/s, forward+backward >= 200 TFLOP/s, and with half the
tokens padding at least 1.6x faster than with none.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F

from benchmarks.common import DTYPES, card_slug, print_table, require_cuda, torch_dtype, write_result
from roberta_scratch.flops import card_peaks


def attention_flops(lengths: torch.Tensor, heads: int, head_dim: int) -> float:
    """FlashAttention's forward FLOP count on real tokens: two matmuls of L x L x D per head."""
    return 4.0 * heads * head_dim * float((lengths.double() ** 2).sum())


def sdpa(backend):
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v, mask, dropout_p):
        attn_mask = None if mask is None else mask[:, None, None, :]
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)

    return run


def naive(q, k, v, mask, dropout_p):
    scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    probs = F.dropout(torch.softmax(scores, dim=-1), p=dropout_p)
    return torch.matmul(probs, v)


def triton_attention(q, k, v, mask, dropout_p):
    import roberta_kernels

    return roberta_kernels.attention(q, k, v, key_padding_mask=mask, dropout_p=dropout_p)


def bench_shape(T, D, pad, args, dtype, peak_tflops):
    from torch.nn.attention import SDPBackend
    from triton.testing import do_bench

    import roberta_kernels

    B, H = max(1, args.tokens // T), args.heads
    real = max(1, round(T * (1.0 - pad)))
    lengths = torch.full((B,), real)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).cuda() if pad > 0 else None
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(B, H, T, D, device="cuda", dtype=dtype, generator=g) for _ in range(4))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    if mask is not None:  # no gradient arrives at padded query rows (the model's loss never reads them): with one
        do = do.masked_fill(~mask[:, None, :, None], 0)  # there, torch's padded rows would add it to real dK, dV
    flops = attention_flops(lengths, H, D)

    # fp32 reference on real rows (dropout off, so all providers compute the same function)
    ref_in = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = roberta_kernels.attention_reference(*ref_in, key_padding_mask=mask)
    ref.backward(do.float())
    real_rows = (torch.ones(B, T, dtype=torch.bool, device="cuda") if mask is None else mask)[:, None, :, None]

    providers = {"triton": triton_attention, "sdpa-mem-eff": sdpa(SDPBackend.EFFICIENT_ATTENTION), "naive": naive}
    if mask is None:
        providers["sdpa-flash"] = sdpa(SDPBackend.FLASH_ATTENTION)
    rows = []
    for name, fn in providers.items():
        row = {"provider": name, "T": T, "D": D, "B": B, "H": H, "pad": pad, "dtype": args.dtype}
        try:
            for t in (q, k, v):
                t.grad = None
            out = fn(q, k, v, mask, 0.0)
            out.backward(do)
            errors = [(out.float() - ref).abs().mul(real_rows).max().item()]
            errors += [(t.grad.float() - r.grad).abs().mul(real_rows).max().item() for t, r in zip((q, k, v), ref_in)]
            row["max_err_out"], row["max_err_grad"] = errors[0], max(errors[1:])

            def fwd():
                with torch.no_grad():
                    fn(q, k, v, mask, args.dropout)

            def fwd_bwd():
                fn(q, k, v, mask, args.dropout).backward(do)

            ms_fwd = do_bench(fwd, warmup=25, rep=100, return_mode="median")  # subtle: its default is the mean
            ms_all = do_bench(fwd_bwd, warmup=25, rep=100, grad_to_none=[q, k, v], return_mode="median")
            row.update(
                fwd_ms=ms_fwd,
                fwd_bwd_ms=ms_all,
                fwd_tflops=flops / ms_fwd * 1e-9,
                fwd_bwd_tflops=3.5 * flops / ms_all * 1e-9,
            )
            if peak_tflops:
                row["fwd_peak_frac"] = row["fwd_tflops"] / peak_tflops
                row["fwd_bwd_peak_frac"] = row["fwd_bwd_tflops"] / peak_tflops
        except (RuntimeError, ValueError) as exc:  # e.g. a backend that refuses this shape
            row["error"] = str(exc).splitlines()[0][:120]
        rows.append(row)
        torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=16384, help="B * T per shape (default 16384)")
    parser.add_argument(
        "--seq-lens",
        type=int,
        nargs="+",
        default=[128, 512, 1024],
        help="sequence lengths T to sweep (default 128 512 1024)",
    )
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128], help="head dims D (default 64 128)")
    parser.add_argument("--heads", type=int, default=12, help="attention heads H (default 12)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="input dtype (default bf16)")
    parser.add_argument("--pad", type=float, nargs="+", default=[0.0, 0.5], help="fractions of padding tokens")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout_p while timing (errors use 0)")
    args = parser.parse_args(argv)
    require_cuda("bench_attention.py")

    card = torch.cuda.get_device_name()
    dtype = torch_dtype(args.dtype)
    peaks = card_peaks(card)
    peak_tflops = None if peaks is None else (peaks[1] if dtype == torch.float32 else peaks[0])
    print(f"{card}: dense peak {peak_tflops or 'unknown'} TFLOP/s ({args.dtype})")
    rows = []
    for T in args.seq_lens:
        for D in args.head_dims:
            for pad in args.pad:
                rows += bench_shape(T, D, pad, args, dtype, peak_tflops)
    print_table(
        rows,
        [
            "provider",
            "T",
            "D",
            "B",
            "pad",
            "fwd_ms",
            "fwd_tflops",
            "fwd_peak_frac",
            "fwd_bwd_ms",
            "fwd_bwd_tflops",
            "fwd_bwd_peak_frac",
            "max_err_out",
            "max_err_grad",
            "error",
        ],
    )

    # speed-up from padding, per provider and shape: time(pad = 0) / time(pad)
    base = {(r["provider"], r["T"], r["D"]): r for r in rows if r["pad"] == 0 and "fwd_ms" in r}
    for r in rows:
        b = base.get((r["provider"], r["T"], r["D"]))
        if r["pad"] > 0 and b and "fwd_ms" in r:
            r["fwd_speedup_vs_no_pad"] = b["fwd_ms"] / r["fwd_ms"]
            r["fwd_bwd_speedup_vs_no_pad"] = b["fwd_bwd_ms"] / r["fwd_bwd_ms"]
            print(
                f"{r['provider']:<13} T={r['T']} D={r['D']} pad={r['pad']}: "
                f"{r['fwd_speedup_vs_no_pad']:.2f}x forward, {r['fwd_bwd_speedup_vs_no_pad']:.2f}x forward+backward "
                "faster than with no padding"
            )
    path = write_result(
        f"attention_{card_slug(card)}",
        rows,
        {
            "card": card,
            "peak_tflops": peak_tflops,
            "flop_count": "FlashAttention: fwd 4*H*D*sum(L^2), bwd 2.5x fwd",
            "targets_h100_bf16_T512_D64": {"fwd_tflops": 280, "fwd_bwd_tflops": 200, "speedup_half_padding": 1.6},
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
