"""Fused residual-add + dropout + LayerNorm against torch's separate kernels, on one GPU.

    python -m benchmarks.bench_layernorm [--tokens 16384] [--hidden 768 1024 4096] [--dtype bf16] [--dropout 0 0.1]

For every hidden size N (and dropout rate), on M = tokens rows, it times the
forward and the forward+backward of y = LN(dropout(x) + residual) by
  triton   roberta_kernels.layer_norm(x, w, b, residual=r, dropout_p=p): one kernel each way;
  torch    F.layer_norm(F.dropout(x, p) + r): torch's add (and dropout) and LayerNorm kernels;
and reports milliseconds, GB/s over the bytes the fused op must move (forward:
read x and r, write y; backward: read dy, x and r, write dx, and d_residual
when dropout makes it differ from dx), the fraction of the card's HBM
bandwidth, and the max error of y and of every gradient against the fp32
reference. Timings are medians: triton.testing.do_bench with
return_mode="median" (its default is the mean), L2 flushed. Results
go to benchmarks/results/layernorm_<card>_<date>.json with the card's name,
the date and the command. Needs a CUDA GPU.

Targets from the kernels issue (H100, bf16, with residual, hidden 768):
forward >= 2.3 TB/s (70% of HBM), forward+backward faster than torch's.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from benchmarks.common import DTYPES, card_slug, print_table, require_cuda, torch_dtype, write_result
from roberta_scratch.flops import card_peaks


def torch_layer_norm(x, w, b, r, p):
    return F.layer_norm(F.dropout(x, p=p) + r, (x.shape[-1],), w, b, 1e-5)


def triton_layer_norm(x, w, b, r, p):
    import roberta_kernels

    return roberta_kernels.layer_norm(x, w, b, 1e-5, residual=r, dropout_p=p)


def bench_shape(M, N, p, args, dtype, peak_gbs):
    from triton.testing import do_bench

    import roberta_kernels

    g = torch.Generator(device="cuda").manual_seed(0)
    x, r, dy = (torch.randn(M, N, device="cuda", dtype=dtype, generator=g) for _ in range(3))
    w = (1.0 + 0.1 * torch.randn(N, device="cuda", generator=g)).to(dtype)
    b = (0.1 * torch.randn(N, device="cuda", generator=g)).to(dtype)
    leaves = [t.requires_grad_() for t in (x, r, w, b)]
    size = x.element_size()
    bytes_fwd = 3 * M * N * size
    bytes_bwd = (5 if p > 0 else 4) * M * N * size

    ref_in = [t.detach().float().requires_grad_() for t in leaves]
    ref = roberta_kernels.layer_norm_reference(ref_in[0], ref_in[2], ref_in[3], 1e-5, residual=ref_in[1])
    ref.backward(dy.float())

    rows = []
    for name, fn in {"triton": triton_layer_norm, "torch": torch_layer_norm}.items():
        for t in leaves:
            t.grad = None
        y = fn(x, w, b, r, 0.0)  # errors without dropout: the same function on both sides
        y.backward(dy)
        row = {
            "provider": name,
            "M": M,
            "N": N,
            "dropout": p,
            "dtype": args.dtype,
            "max_err_out": (y.float() - ref).abs().max().item(),
            "max_err_grad": max((t.grad.float() - u.grad).abs().max().item() for t, u in zip(leaves, ref_in)),
        }

        def fwd():
            with torch.no_grad():
                fn(x, w, b, r, p)

        def fwd_bwd():
            fn(x, w, b, r, p).backward(dy)

        ms_fwd = do_bench(fwd, warmup=25, rep=100, return_mode="median")  # subtle: its default is the mean
        ms_all = do_bench(fwd_bwd, warmup=25, rep=100, grad_to_none=leaves, return_mode="median")
        row.update(
            fwd_ms=ms_fwd,
            fwd_bwd_ms=ms_all,
            fwd_gbs=bytes_fwd / ms_fwd * 1e-6,
            fwd_bwd_gbs=(bytes_fwd + bytes_bwd) / ms_all * 1e-6,
        )
        if peak_gbs:
            row["fwd_peak_frac"] = row["fwd_gbs"] / peak_gbs
            row["fwd_bwd_peak_frac"] = row["fwd_bwd_gbs"] / peak_gbs
        rows.append(row)
    rows[0]["fwd_bwd_speedup_vs_torch"] = rows[1]["fwd_bwd_ms"] / rows[0]["fwd_bwd_ms"]
    rows[0]["fwd_speedup_vs_torch"] = rows[1]["fwd_ms"] / rows[0]["fwd_ms"]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=16384, help="rows M (default 16384)")
    parser.add_argument(
        "--hidden", type=int, nargs="+", default=[768, 1024, 4096], help="hidden sizes N (default 768 1024 4096)"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="input dtype (default bf16)")
    parser.add_argument(
        "--dropout",
        type=float,
        nargs="+",
        default=[0.0, 0.1],
        help="dropout rates before the residual add (default 0 0.1)",
    )
    args = parser.parse_args(argv)
    require_cuda("bench_layernorm.py")

    card = torch.cuda.get_device_name()
    peaks = card_peaks(card)
    peak_gbs = None if peaks is None else peaks[2]
    print(f"{card}: HBM peak {peak_gbs or 'unknown'} GB/s")
    rows = []
    for N in args.hidden:
        for p in args.dropout:
            rows += bench_shape(args.tokens, N, p, args, torch_dtype(args.dtype), peak_gbs)
    print_table(
        rows,
        [
            "provider",
            "M",
            "N",
            "dropout",
            "fwd_ms",
            "fwd_gbs",
            "fwd_peak_frac",
            "fwd_bwd_ms",
            "fwd_bwd_gbs",
            "fwd_bwd_peak_frac",
            "fwd_bwd_speedup_vs_torch",
            "max_err_out",
            "max_err_grad",
        ],
    )
    path = write_result(
        f"layernorm_{card_slug(card)}",
        rows,
        {
            "card": card,
            "peak_gbs": peak_gbs,
            "bytes": "fwd 3*M*N (x, r, y); bwd 4*M*N (dy, x, r, dx), 5 with dropout (+ d_residual)",
            "targets_h100_bf16_hidden768": {"fwd_gbs": 2300, "fwd_bwd_faster_than_torch": True},
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
