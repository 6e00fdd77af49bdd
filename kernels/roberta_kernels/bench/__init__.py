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

The package, by concern: implementations.py (what runs), timing.py (medians, measured peaks),
shapes.py (one shape measured, the FLOP and byte counts), plots.py, record.py (the command, the
card, the versions, results.json) and cli.py (the options and the run). Nothing here imports
triton (or roberta_scratch) at import time.
"""

from .cli import DTYPES, add_arguments, benchmark, main, run, settings
from .implementations import ATTENTION_REFERENCES, attention_implementations, layer_norm_implementations, runs_as
from .record import card_name, command_line, environment, jsonable, versions, write_json, write_outputs
from .shapes import attention_flops, bench_attention_shape, bench_layer_norm_shape, layer_norm_bytes
from .timing import measure_copy_gbs, measure_matmul_tflops, median_ms

__all__ = [
    "ATTENTION_REFERENCES",
    "DTYPES",
    "add_arguments",
    "attention_flops",
    "attention_implementations",
    "bench_attention_shape",
    "bench_layer_norm_shape",
    "benchmark",
    "card_name",
    "command_line",
    "environment",
    "jsonable",
    "layer_norm_bytes",
    "layer_norm_implementations",
    "main",
    "measure_copy_gbs",
    "measure_matmul_tflops",
    "median_ms",
    "run",
    "runs_as",
    "settings",
    "versions",
    "write_json",
    "write_outputs",
]
