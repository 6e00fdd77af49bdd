"""`roberta-scratch kernels bench` (and `python -m roberta_kernels.bench`): the options, the sizes a run
uses, the run itself and its exit status."""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial

import torch

from .. import registry
from .implementations import ATTENTION_REFERENCES, attention_implementations, layer_norm_implementations
from .record import card_name, command_line, datasheet_peaks, versions, write_outputs
from .shapes import FLOP_COUNT, LN_BYTES, add_padding_speedups, bench_attention_shape, bench_layer_norm_shape
from .timing import measure_copy_gbs, measure_matmul_tflops

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# --dry-run: every size scaled down so the CPU (and Triton's interpreter) gets through in seconds
DRY = dict(tokens=64, heads=2, head_dim=32, max_seq_len=32, hidden=48, matmul_n=256, copy_numel=1 << 20, repeats=1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `roberta-scratch kernels bench` (and `python -m roberta_kernels.bench`)."""
    _add_what_arguments(parser)
    _add_shape_arguments(parser)
    _add_timing_arguments(parser)
    # for callers in Python (benchmarks/gpu_suite.py): the command to record, and a function
    # card name -> (16-bit TFLOP/s, tf32 TFLOP/s, GB/s) for the data-sheet peaks
    parser.set_defaults(command_line=None, card_peaks=None)


def _add_what_arguments(parser: argparse.ArgumentParser) -> None:
    """What runs, where its results go, and the dry run."""
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


def _add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """The sizes swept: dtype, tokens, sequence lengths, padding, heads, hidden sizes, dropout."""
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


def _add_timing_arguments(parser: argparse.ArgumentParser) -> None:
    """How long each figure is measured, when to stop, and the data-sheet peaks to report beside ours."""
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


class _TimeLimit:
    """--time-limit-s: a shape is started only if it would end (judged by the slowest so far) in time;
    otherwise its rows are reported as skipped."""

    def __init__(self, limit_s: float | None):
        self.limit_s, self.started, self.durations = limit_s, time.monotonic(), []

    def run(self, run_shape: Callable[[], list], stub_rows: list) -> list:
        slowest = max(self.durations, default=0.0)
        if self.limit_s is not None and time.monotonic() - self.started + slowest > self.limit_s:
            for row in stub_rows:
                row.update(status="skipped", reason=f"--time-limit-s {self.limit_s:g} would be passed")
            return stub_rows
        t = time.monotonic()
        rows = run_shape()
        self.durations.append(time.monotonic() - t)
        return rows


def _measure_peaks(args, s: dict, device, card: str, attention: bool, layer_norm: bool) -> dict:
    """The data-sheet peaks, and the matmul rate (for attention) and copy bandwidth (for LayerNorm)
    measured now on this card; printed as one line."""
    peaks = datasheet_peaks(args, card, s["dtype"])
    n, numel = (DRY["matmul_n"], DRY["copy_numel"]) if args.dry_run else (8192, 1 << 28)
    if attention:
        peaks["matmul_tflops_measured"] = measure_matmul_tflops(device, s["dtype"], n, **s["timing"])
        peaks["matmul_measured_how"] = f"{n}x{n}x{n} torch.matmul in {s['dtype_name']}, median"
    if layer_norm:
        peaks["copy_gbs_measured"] = measure_copy_gbs(device, numel, **s["timing"])
        peaks["copy_measured_how"] = f"copy_ of {numel * 4 / 2**20:,.0f} MiB fp32, read + write counted, median"
    sheet = (
        f"data sheet {peaks['datasheet_tflops']} TFLOP/s, {peaks['datasheet_gbs']} GB/s"
        if peaks.get("datasheet_tflops") is not None
        else "no data sheet for this device"
    )
    print(
        f"{card}: measured {peaks.get('matmul_tflops_measured') or 0:,.1f} TFLOP/s ({s['dtype_name']} matmul), "
        f"{peaks.get('copy_gbs_measured') or 0:,.0f} GB/s (copy); {sheet}",
        flush=True,
    )
    return peaks


def _attention_rows(impls: list, s: dict, device, peaks: dict, limit: _TimeLimit) -> list:
    """The padding sweep at --pad-seq-len, then the T sweep without padding."""
    rows = []
    shapes = [(s["pad_seq_len"], pad) for pad in s["pads"]]
    shapes += [(T, 0.0) for T in s["seq_lens"] if T != s["pad_seq_len"]]
    for T, pad in shapes if impls else ():
        stub = [{"op": "attention", "impl": impl.name, "role": role, "T": T, "pad": pad} for impl, role in impls]
        shape_rows = limit.run(partial(bench_attention_shape, impls, T, pad, s, device, peaks), stub)
        rows += shape_rows
        _progress(shape_rows, f"attention T={T} pad={pad:g}", "fwd_tflops", "fwd_bwd_tflops", "TFLOP/s")
    add_padding_speedups(rows, s["pad_seq_len"])
    return rows


def _layer_norm_rows(impls: list, s: dict, device, peaks: dict, limit: _TimeLimit) -> list:
    """Every hidden size at every dropout rate, --tokens rows each."""
    rows = []
    for N in s["hidden"] if impls else ():
        for p in s["ln_dropout"]:
            stub = [{"op": "layer_norm", "impl": impl.name, "role": role, "N": N, "dropout": p} for impl, role in impls]
            shape_rows = limit.run(partial(bench_layer_norm_shape, impls, s["tokens"], N, p, s, device, peaks), stub)
            rows += shape_rows
            _progress(shape_rows, f"layer_norm N={N} dropout={p:g}", "fwd_gbs", "fwd_bwd_gbs", "GB/s")
    return rows


def benchmark(args) -> dict:
    """Run everything the arguments ask for and return the record that results.json holds."""
    device = torch.device("cpu" if args.dry_run else "cuda")
    s = settings(args, device)
    named_attention = args.attention if args.attention is not None else ([] if args.layer_norm else ["triton"])
    attention_impls = attention_implementations(named_attention, args.skip) if named_attention else []
    ln_impls = layer_norm_implementations(args.layer_norm) if args.layer_norm else []
    card = card_name(device)
    limit = _TimeLimit(args.time_limit_s)
    peaks = _measure_peaks(args, s, device, card, bool(attention_impls), bool(ln_impls))
    attention_rows = _attention_rows(attention_impls, s, device, peaks, limit)
    ln_rows = _layer_norm_rows(ln_impls, s, device, peaks, limit)
    timing = (
        "median of time.perf_counter timings (dry run: the numbers mean nothing)"
        if args.dry_run
        else "median: triton.testing.do_bench(return_mode='median'), L2 flushed before each call"
    )
    return {
        "benchmark": "kernels bench",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": args.command_line or command_line(),
        "dry_run": bool(args.dry_run),
        "card": card,
        "versions": versions(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET"),
        "peaks": peaks,
        "settings": {k: v for k, v in s.items() if k != "dtype"},
        "timing": timing,
        "flop_count": FLOP_COUNT,
        "layer_norm_bytes": LN_BYTES,
        "seconds": time.monotonic() - limit.started,
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
