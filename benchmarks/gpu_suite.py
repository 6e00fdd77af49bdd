"""Every GPU check in one go, for the few minutes a GPU is lent: correctness, kernel timings, end to end.

    python3 benchmarks/gpu_suite.py --out DIR [--budget-s 480] [--dry-run]      # what `make gpu-check` runs
    python -m benchmarks.gpu_suite --out DIR [--budget-s 480] [--dry-run]

It needs only a python that has torch and triton: no venv, no pip, no network (the lent
machine has none), and it imports this project from the checkout it sits in. The stages, in order:

  check      roberta_kernels.check's CUDA correctness suite, on its quick sample (so compilation fits)
  attention  `kernels bench` at the headline shapes: bf16, 16k tokens, T = 512, D = 64, H = 12,
             padding 0 and 0.5; ours against sdpa (flash, mem-efficient, cuDNN), FlexAttention, eager
  layernorm  `kernels bench --layer-norm triton`: hidden 768, 16k rows, residual, dropout 0 and 0.1
  e2e        RoBERTa-base MLM training steps (forward, backward, AdamW) on a padded batch with
             attention triton against sdpa: the same weights, both under bf16 autocast; tokens/s
  sweep      `kernels bench` over T = 128 ... 2048 without padding, with whatever budget is left

The budget. Each stage has a cost estimate for a cold start on an H100/H200, compilation
included; a stage whose estimate does not fit in what is left of --budget-s is not started,
and is recorded as skipped with why. The sweep is bounded by the time left (kernels bench's
--time-limit-s), and the e2e stage stops timing steps early when time runs short. A stage that
fails is recorded with its error and the next one starts. If a stage hangs far past the budget,
the process dumps its stacks and exits (faulthandler), and the stage's JSON still says
"running", so a killed run says where it died.

The output. DIR/summary.md: every target of the kernels issue, the measured value, met or
not, beside FlexAttention's and cuDNN's figures from the same run; DIR/<stage>.json for every
stage, skipped ones included; each bench's own folder (DIR/bench-attention/results.json,
attention.png, ...). Both are rewritten after every stage, so a run cut short keeps what it
measured.

--dry-run runs every stage on the CPU at tiny sizes, the Triton kernels through Triton's
interpreter (nothing is compiled for a GPU): it proves the suite works, and its numbers mean
nothing. Measured on a quiet 2-core AMD EPYC (2026-12-07): 28 s in all, stages 7 + 6 + 1 +
5 + 7 s (benchmarks/results/gpu_suite_dry_run_cpu_2026-12-07.json); beside other work it
took 4 min 46 s once, so the dry estimates below are the quiet figures with a margin.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import faulthandler
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable

if __name__ == "__main__" and not __package__:
    # `python3 benchmarks/gpu_suite.py` (make gpu-check) puts benchmarks/ on sys.path, not the repository
    # root. This is the one script run outside the package (the lent GPU has no venv and no editable
    # install), so it adds the root and kernels/ (the folder that holds roberta_kernels) itself;
    # `python -m benchmarks.gpu_suite` from an installed checkout needs nothing.
    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path[:0] = [_root, os.path.join(_root, "kernels")]

# The kernels issue's targets, for an H100/H200 in bf16 at 16k tokens, T = 512, D = 64.
TARGETS = {
    "attention_fwd_tflops": 280.0,
    "attention_fwd_bwd_tflops": 200.0,
    "half_padding_speedup": 1.6,
    "layer_norm_fwd_gbs": 2300.0,
    "layer_norm_fwd_bwd_speedup": 1.0,
    "e2e_speedup": 1.3,
}
HEADLINE = dict(tokens=16384, T=512, D=64, H=12, pads=(0.0, 0.5), hidden=768, ln_dropout=(0.0, 0.1))
SWEEP_SEQ_LENS = (128, 256, 512, 1024, 2048)  # 512 again: its compiled kernels are cached, the curve complete
E2E = dict(preset="base", batch=32, seq_len=512, min_len=64, warmup=3, steps=10, mlm_probability=0.15)
E2E_DRY = dict(preset="tiny", layers=1, batch=2, seq_len=32, min_len=8, warmup=1, steps=2, mlm_probability=0.15)


@dataclasses.dataclass
class Suite:
    """What every stage needs: where to write, the machine, the clock."""

    out: str
    dry_run: bool
    budget_s: float
    started: float
    device: str
    card: str
    datasheet: tuple | None  # (16-bit TFLOP/s, tf32 TFLOP/s, GB/s) from roberta_scratch.flops, or None
    records: dict = dataclasses.field(default_factory=dict)  # stage name -> its record, as written

    def left_s(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)


@dataclasses.dataclass
class Stage:
    name: str
    what: str
    run: Callable[[Suite], dict]
    estimate_s: float | Callable[[Suite], float]  # a cold start on an H100/H200, compilation included
    dry_estimate_s: float

    def estimate(self, suite: Suite) -> float:
        if suite.dry_run:
            return self.dry_estimate_s
        return self.estimate_s(suite) if callable(self.estimate_s) else self.estimate_s


# ----------------------------------------------------------------------------- the stages


def stage_check(suite: Suite) -> dict:
    """roberta_kernels.check on its quick sample, attention and LayerNorm, for our Triton implementations."""
    from roberta_kernels import check

    def show(row: check.Result) -> None:  # a line per case as it finishes, for the log
        print(check.format_row(row), flush=True)

    rows = {
        "attention": check.check_attention("triton", suite.device, quick=True, progress=show),
        "layer_norm": check.check_layer_norm("triton", suite.device, quick=True, progress=show),
    }
    counts = {
        op: {"rows": len(rs), "failed": sum(r.failed for r in rs), "skipped": sum(r.status == "skip" for r in rs)}
        for op, rs in rows.items()
    }
    failed = sum(c["failed"] for c in counts.values())
    return {
        "status": "failed" if failed else "ok",
        "counts": counts,
        "rows": {op: [dataclasses.asdict(r) for r in rs] for op, rs in rows.items()},
        "reason": f"{failed} check(s) failed" if failed else None,
    }


def _bench(suite: Suite, name: str, argv: list, time_limit_s: float | None = None) -> dict:
    """Run `kernels bench` in this process with argv (plus --out, peaks, --dry-run) and return its record."""
    from roberta_kernels import bench

    out = os.path.join(suite.out, f"bench-{name}")
    argv = list(argv) + ["--out", out]
    if suite.datasheet and not suite.dry_run:
        argv += ["--peak-tflops", f"{suite.datasheet[0]:g}", "--peak-gbs", f"{suite.datasheet[2]:g}"]
    if time_limit_s is not None:
        argv += ["--time-limit-s", f"{max(time_limit_s, 1.0):.0f}"]
    if suite.dry_run:
        argv.append("--dry-run")
    parser = argparse.ArgumentParser(prog="roberta-scratch kernels bench")
    bench.add_arguments(parser)
    args = parser.parse_args(argv)
    args.command_line = "roberta-scratch kernels bench " + " ".join(argv)  # what this stage ran, by hand
    rc = bench.run(args)
    path = os.path.join(out, "results.json")
    if not os.path.isfile(path):
        return {"status": "failed", "reason": f"kernels bench exited {rc} without writing {path}"}
    with open(path) as f:
        record = json.load(f)
    return {
        "status": "ok" if rc == 0 else "failed",
        "rc": rc,
        "outputs": out,
        "bench": record,
        "reason": None if rc == 0 else f"kernels bench exited {rc}: a named implementation failed a case",
    }


def _attention_argv(seq_lens, pad_seq_len: int, pads) -> list[str]:
    """`kernels bench` options for our attention at the headline's bf16, tokens, heads and head dim."""
    h = HEADLINE
    argv = f"--attention triton --dtype bf16 --tokens {h['tokens']} --heads {h['H']} --head-dim {h['D']}".split()
    return argv + ["--seq-lens", *map(str, seq_lens), "--pad-seq-len", str(pad_seq_len), "--pad", *map(str, pads)]


def stage_attention(suite: Suite) -> dict:
    h = HEADLINE
    return _bench(suite, "attention", _attention_argv([h["T"]], h["T"], h["pads"]))


def stage_layernorm(suite: Suite) -> dict:
    h = HEADLINE
    argv = f"--layer-norm triton --dtype bf16 --tokens {h['tokens']} --hidden {h['hidden']}".split()
    return _bench(suite, "layernorm", argv + ["--ln-dropout", *map(str, h["ln_dropout"])])


def stage_sweep(suite: Suite) -> dict:
    margin = 0.0 if suite.dry_run else 15.0
    return _bench(
        suite,
        "sweep",
        _attention_argv(SWEEP_SEQ_LENS, SWEEP_SEQ_LENS[0], [0]),
        time_limit_s=None if suite.dry_run else suite.left_s() - margin,
    )


def sweep_estimate(suite: Suite) -> float:
    """One shape's worth: the headline stage's seconds per shape (the sweep stops itself when time runs out)."""
    rec = suite.records.get("attention", {})
    shapes = len(HEADLINE["pads"])
    return max(30.0, rec.get("seconds", 120.0) / shapes) if rec.get("status") == "ok" else 60.0


def padded_mlm_batch(
    vocab_size: int, batch: int, seq_len: int, min_len: int, mlm_probability: float, generator
) -> dict:
    """A right-padded MLM batch: lengths uniform in [min_len, seq_len], <s> ... </s> then <pad>, and
    mlm_probability of the inner tokens replaced by <mask> (the last id) with labels there."""
    import torch

    from roberta_scratch.config import IGNORE_INDEX

    lengths = torch.randint(min_len, seq_len + 1, (batch,), generator=generator)
    lengths[0] = seq_len  # one full row: the batch is as long as it says
    pos = torch.arange(seq_len)[None, :]
    real = pos < lengths[:, None]  # (B, T)
    ids = torch.randint(4, vocab_size - 1, (batch, seq_len), generator=generator)
    ids[:, 0] = 0  # <s>
    ids[pos == (lengths[:, None] - 1)] = 2  # </s>
    ids[~real] = 1  # <pad>
    inner = real & (pos > 0) & (pos < lengths[:, None] - 1)
    chosen = inner & (torch.rand(batch, seq_len, generator=generator) < mlm_probability)
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    ids = torch.where(chosen, torch.full_like(ids, vocab_size - 1), ids)  # <mask>
    return {"input_ids": ids, "attention_mask": real.long(), "labels": labels}


def _e2e_models(e: dict, device) -> tuple[dict, dict]:
    """RoBERTa MLM models with attention triton and sdpa, holding the same weights, with their AdamW."""
    import torch

    from roberta_scratch import RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(0)
    models = {}
    for attention in ("triton", "sdpa"):
        layers = {"num_hidden_layers": e["layers"]} if "layers" in e else {}
        models[attention] = RobertaForMaskedLM(RobertaConfig.preset(e["preset"], attention=attention, **layers))
        models[attention].to(device)
    models["sdpa"].load_state_dict(models["triton"].state_dict())  # the same weights
    optimizers = {
        name: torch.optim.AdamW(
            m.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, fused=device.type == "cuda"
        )
        for name, m in models.items()
    }
    return models, optimizers


def _e2e_autocast(device):
    """The trainer's autocast: bf16 on CUDA, none on the CPU; one context for both models."""
    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _e2e_step_times(suite: Suite, e: dict, models: dict, optimizers: dict, batch: dict, device) -> tuple[dict, bool]:
    """Seconds per training step (forward, backward, AdamW) of each model, interleaved so drift hits both
    alike, after e["warmup"] untimed steps; stops early when the budget runs short. (times, stopped early)"""
    import torch

    def step(name):
        with _e2e_autocast(device):
            loss = models[name](**batch).loss
        loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(e["warmup"]):  # compiles our kernels, warms the allocator and cuBLAS
        for name in models:
            step(name)
    times = {name: [] for name in models}
    for i in range(e["steps"]):
        if i >= 3 and not suite.dry_run and suite.left_s() < 10 * max(max(t) for t in times.values()):
            return times, True
        for name in models:
            t = time.perf_counter()
            step(name)
            times[name].append(time.perf_counter() - t)
    return times, False


def stage_e2e(suite: Suite) -> dict:
    """RoBERTa-base MLM training steps, attention triton against sdpa: same weights, same batch, same autocast."""
    import torch

    e = E2E_DRY if suite.dry_run else E2E
    device = torch.device(suite.device)
    models, optimizers = _e2e_models(e, device)
    vocab = models["triton"].config.vocab_size
    batch = padded_mlm_batch(
        vocab, e["batch"], e["seq_len"], e["min_len"], e["mlm_probability"], torch.Generator().manual_seed(0)
    )
    batch = {k: v.to(device) for k, v in batch.items()}
    real_tokens = int(batch["attention_mask"].sum())
    losses = {}
    with torch.no_grad():  # same function first: eval mode (no dropout), same weights, same batch
        for name, model in models.items():
            model.eval()
            with _e2e_autocast(device):
                losses[name] = float(model(**batch).loss)
            model.train()
    times, stopped_early = _e2e_step_times(suite, e, models, optimizers, batch, device)
    median = {name: statistics.median(t) for name, t in times.items()}
    tokens_per_s = {name: real_tokens / s for name, s in median.items()}
    return {
        "status": "ok",
        "preset": e["preset"],
        "layers": models["triton"].config.num_hidden_layers,
        "batch": [e["batch"], e["seq_len"]],
        "real_tokens": real_tokens,
        "padding_fraction": 1 - real_tokens / (e["batch"] * e["seq_len"]),
        "device": str(device),
        "autocast": "bf16" if device.type == "cuda" else "none (CPU)",
        "layer_norm": {name: _layer_norm_in(m) for name, m in models.items()},
        "timed_steps": len(times["sdpa"]),
        "stopped_early": stopped_early,
        "step_ms_median": {k: v * 1e3 for k, v in median.items()},
        "tokens_per_s": tokens_per_s,
        "speedup": tokens_per_s["triton"] / tokens_per_s["sdpa"],
        "eval_loss": losses,
        "eval_loss_abs_diff": abs(losses["triton"] - losses["sdpa"]),
        "timing": "median of per-step time.perf_counter with device syncs; step = forward, backward, AdamW",
    }


def _layer_norm_in(model) -> str:
    """The residual + LayerNorm implementation the model's layers run (model.AddNorm.impl; None is torch's)."""
    import torch

    names = {
        m.impl.name if m.impl is not None else "torch"
        for m in model.modules()
        if isinstance(m, torch.nn.LayerNorm) and hasattr(m, "impl")
    }
    return ", ".join(sorted(names)) or "torch"


STAGES = [
    # dry estimates: the quiet 2-core figures of the module docstring, x 1.5
    Stage("check", "roberta_kernels.check quick sample (CUDA correctness)", stage_check, 150.0, 10.0),
    Stage("attention", "kernels bench, headline shapes", stage_attention, 120.0, 9.0),
    Stage("layernorm", "kernels bench --layer-norm, hidden 768", stage_layernorm, 40.0, 2.0),
    Stage("e2e", "RoBERTa-base MLM training step, triton vs sdpa", stage_e2e, 90.0, 8.0),
    Stage("sweep", "kernels bench, T sweep without padding", stage_sweep, sweep_estimate, 11.0),
]


# ----------------------------------------------------------------------------- the summary


def _rows(suite: Suite, stage: str, op: str) -> list:
    rec = suite.records.get(stage, {})
    return (rec.get("bench") or {}).get(op, [])


def _find(rows: list, **where) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in where.items())), None)


def _value(row: dict | None, key: str, fmt: str) -> str:
    if row is None:
        return "not run"
    value = row.get(key)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return fmt.format(value)
    return str(row.get("status") or "not measured")


def _met(row: dict | None, key: str, target: float, dry_run: bool, strictly: bool = False) -> str:
    value = None if row is None else row.get(key)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "not measured"
    if dry_run:
        return "n/a (dry run)"
    return "**yes**" if (value > target if strictly else value >= target) else "**no**"


def _bench_record(suite: Suite, stage: str) -> dict:
    return suite.records.get(stage, {}).get("bench") or {}


def summary_markdown(suite: Suite) -> str:
    """DIR/summary.md: the run, the targets, then the stages."""
    lines = _summary_header(suite)
    lines += _attention_targets(suite)
    lines += _layer_norm_targets(suite)
    lines += _e2e_target(suite)
    lines += _stages_table(suite)
    lines += ["", "Per stage: `<stage>.json` here; the benches' own results.json and plots in `bench-*/`.", ""]
    return "\n".join(lines)


def _summary_header(suite: Suite) -> list[str]:
    """The card, the date, the versions, the budget, and the peaks measured in this run."""
    from roberta_kernels.bench import versions

    v = versions()
    lines = [f"# GPU check: {suite.card}", ""]
    if suite.dry_run:
        lines += [
            "**DRY RUN** on the CPU at tiny sizes, Triton through its interpreter: this proves the suite runs; "
            "the numbers mean nothing and no target is judged.",
            "",
        ]
    lines += [
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; python {v['python']}, torch "
        f"{v['torch']}, triton {v['triton']}, CUDA {v['cuda']}; budget {suite.budget_s:.0f} s, used "
        f"{time.monotonic() - suite.started:.0f} s.",
        "",
    ]
    if not suite.dry_run and not any(name in suite.card for name in ("H100", "H200")):
        lines += [f"The targets are stated for an H100/H200; this card is {suite.card}, so 'met' is indicative.", ""]
    peaks = _bench_record(suite, "attention").get("peaks", {})
    ln_peaks = _bench_record(suite, "layernorm").get("peaks", {})
    dtype = (_bench_record(suite, "attention").get("settings") or {}).get("dtype_name", "bf16")
    tflops, gbs = "{:,.0f} TFLOP/s", "{:,.0f} GB/s"
    lines += [
        f"Peaks measured in this run: {dtype} matmul {_num(peaks.get('matmul_tflops_measured'), tflops)}, "
        f"copy {_num(ln_peaks.get('copy_gbs_measured'), gbs)}; data sheet "
        f"{_num(peaks.get('datasheet_tflops'), tflops)}, {_num(ln_peaks.get('datasheet_gbs'), gbs)}.",
        "",
    ]
    return lines


def _attention_targets(suite: Suite) -> list[str]:
    """The table's head and its four attention rows: ours beside FlexAttention, cuDNN and sdpa's flash."""
    att = _rows(suite, "attention", "attention")
    headline_T = _headline_T(suite)
    matmul = _bench_record(suite, "attention").get("peaks", {}).get("matmul_tflops_measured")
    shape = f"bf16, {HEADLINE['tokens'] // 1024}k tokens, T={HEADLINE['T']}, D={HEADLINE['D']}, H={HEADLINE['H']}"
    if suite.dry_run:
        shape += " (dry run: tiny sizes, fp32" + (f", T={headline_T})" if att else ")")
    lines = [
        f"## Targets ({shape})",
        "",
        "| target | ours (triton) | met | FlexAttention | cuDNN (sdpa) | notes |",
        "|---|---|---|---|---|---|",
    ]
    half = HEADLINE["pads"][-1]
    targets = [
        (f"attention forward >= {TARGETS['attention_fwd_tflops']:.0f} TFLOP/s (no padding)", "fwd_tflops",
         TARGETS["attention_fwd_tflops"], 0.0, "{:,.1f}"),
        (f"attention forward+backward >= {TARGETS['attention_fwd_bwd_tflops']:.0f} TFLOP/s (no padding)",
         "fwd_bwd_tflops", TARGETS["attention_fwd_bwd_tflops"], 0.0, "{:,.1f}"),
        (f"forward >= {TARGETS['half_padding_speedup']}x faster at half padding than at none",
         "fwd_speedup_vs_no_pad", TARGETS["half_padding_speedup"], half, "{:.2f}x"),
        (f"forward+backward >= {TARGETS['half_padding_speedup']}x faster at half padding than at none",
         "fwd_bwd_speedup_vs_no_pad", TARGETS["half_padding_speedup"], half, "{:.2f}x"),
    ]  # fmt: skip
    for label, key, target, pad, fmt in targets:
        ours, flex, cudnn, flash = (
            _find(att, impl=i, T=headline_T, pad=pad) for i in ("triton", "flex", "sdpa-cudnn", "sdpa-flash")
        )
        note = f"sdpa flash {_value(flash, key, fmt)}"
        if key.endswith("tflops") and matmul and ours and isinstance(ours.get(key), (int, float)):
            note += f"; {ours[key] / matmul:.0%} of the measured matmul peak"
        lines.append(
            f"| {label} | {_value(ours, key, fmt)} | {_met(ours, key, target, suite.dry_run)} | "
            f"{_value(flex, key, fmt)} | {_value(cudnn, key, fmt)} | {note} |"
        )
    return lines


def _layer_norm_targets(suite: Suite) -> list[str]:
    """LayerNorm's bandwidth target (dropout 0) and its speed-up over torch, per dropout rate."""
    ln = _rows(suite, "layernorm", "layer_norm")
    copy = _bench_record(suite, "layernorm").get("peaks", {}).get("copy_gbs_measured")
    hidden = _find(ln, impl="triton")["N"] if _find(ln, impl="triton") else HEADLINE["hidden"]
    lines = []
    for p in HEADLINE["ln_dropout"]:
        ours, torch_row = _find(ln, impl="triton", N=hidden, dropout=p), _find(ln, impl="torch", N=hidden, dropout=p)
        if p == 0:
            note = f"torch {_value(torch_row, 'fwd_gbs', '{:,.0f} GB/s')}"
            if copy and ours and isinstance(ours.get("fwd_gbs"), (int, float)):
                note += f"; {ours['fwd_gbs'] / copy:.0%} of the measured copy bandwidth"
            lines.append(
                f"| LayerNorm forward >= {TARGETS['layer_norm_fwd_gbs'] / 1000:g} TB/s (hidden {hidden}, "
                f"residual, dropout 0) | {_value(ours, 'fwd_gbs', '{:,.0f} GB/s')} | "
                f"{_met(ours, 'fwd_gbs', TARGETS['layer_norm_fwd_gbs'], suite.dry_run)} | — | — | {note} |"
            )
        target = TARGETS["layer_norm_fwd_bwd_speedup"]
        lines.append(
            f"| LayerNorm forward+backward faster than torch (dropout {p:g}) | "
            f"{_value(ours, 'fwd_bwd_speedup_vs_torch', '{:.2f}x')} | "
            f"{_met(ours, 'fwd_bwd_speedup_vs_torch', target, suite.dry_run, strictly=True)} "
            f"| — | — | ours {_value(ours, 'fwd_bwd_gbs', '{:,.0f} GB/s')}, torch "
            f"{_value(torch_row, 'fwd_bwd_gbs', '{:,.0f} GB/s')} |"
        )
    return lines


def _e2e_target(suite: Suite) -> list[str]:
    """The end-to-end row: an MLM training step with our attention against sdpa's."""
    e2e = suite.records.get("e2e") or {}
    row = e2e if e2e.get("status") == "ok" else ({"status": e2e.get("status", "not run")} if e2e else None)
    tps = (row or {}).get("tokens_per_s") or {}
    note = (
        f"{tps['triton']:,.0f} vs {tps['sdpa']:,.0f} real tokens/s; {e2e.get('preset')} "
        f"{e2e.get('batch')}, {e2e.get('padding_fraction', 0):.0%} padding; eval loss differs by "
        f"{e2e.get('eval_loss_abs_diff', float('nan')):.1e}"
        if tps
        else ""
    )
    return [
        f"| end to end: triton >= {TARGETS['e2e_speedup']}x sdpa (MLM training step, bf16 autocast) | "
        f"{_value(row, 'speedup', '{:.2f}x')} | {_met(row, 'speedup', TARGETS['e2e_speedup'], suite.dry_run)} "
        f"| — | — | {note} |"
    ]


def _stages_table(suite: Suite) -> list[str]:
    """Every stage: its status, seconds against the estimate, and why it failed or was skipped."""
    lines = ["", "## Stages", "", "| stage | what | status | seconds | estimate | note |", "|---|---|---|---|---|---|"]
    for stage in STAGES:
        rec = suite.records.get(stage.name)
        if rec is None:
            lines.append(f"| {stage.name} | {stage.what} | not reached | | | |")
            continue
        note = (rec.get("reason") or "").replace("|", "/").replace("\n", " ")[:300]
        lines.append(
            f"| {stage.name} | {stage.what} | {rec['status']} | {_num(rec.get('seconds'), '{:.0f}')} | "
            f"{_num(rec.get('estimate_s'), '{:.0f}')} | {note} |"
        )
    counts = (suite.records.get("check") or {}).get("counts")
    if counts:
        lines += ["", "## Correctness (roberta_kernels.check, quick sample)", ""]
        lines += [
            f"- {op}: {c['rows']} cases, {c['failed']} failed, {c['skipped']} skipped" for op, c in counts.items()
        ]
    return lines


def _headline_T(suite: Suite) -> int:
    settings = (suite.records.get("attention", {}).get("bench") or {}).get("settings") or {}
    return settings.get("pad_seq_len", HEADLINE["T"])


def _num(value, fmt: str) -> str:
    return fmt.format(value) if isinstance(value, (int, float)) and math.isfinite(value) else "unknown"


# ----------------------------------------------------------------------------- the run


def write_summary(suite: Suite) -> str:
    path = os.path.join(suite.out, "summary.md")
    with open(path + ".tmp", "w") as f:
        f.write(summary_markdown(suite))
    os.replace(path + ".tmp", path)
    return path


def _autotuned_configs() -> dict:
    """The kernels' autotune picks so far (tuned_configs of roberta_kernels' flash_attention.py and layernorm.py)."""
    from roberta_kernels import kernel_module

    return {
        **kernel_module("flash_attention", interpret=False).tuned_configs(),
        **kernel_module("layernorm", interpret=False).tuned_configs(),
    }


def run_stages(suite: Suite, stages: list) -> None:
    """Each stage in order, if its estimate fits what is left of the budget; a JSON per stage either way."""
    import torch

    from roberta_kernels.bench import write_json

    for stage in stages:
        path = os.path.join(suite.out, f"{stage.name}.json")
        estimate, left = stage.estimate(suite), suite.left_s()
        base = {
            "stage": stage.name,
            "what": stage.what,
            "estimate_s": estimate,
            "dry_run": suite.dry_run,
            "card": suite.card,
        }
        if estimate > left:
            record = {
                **base,
                "status": "skipped",
                "seconds": 0.0,
                "reason": f"not started: estimated {estimate:.0f} s, {max(left, 0):.0f} s of the "
                f"{suite.budget_s:.0f} s budget left",
            }
        else:
            write_json(
                path,
                {
                    **base,
                    "status": "running",
                    "reason": "started; if this is still here, the suite was killed during this stage",
                },
            )
            print(f"== {stage.name}: {stage.what} (estimated {estimate:.0f} s, {left:.0f} s left)", flush=True)
            t = time.monotonic()
            try:
                result = stage.run(suite)
            except Exception as exc:  # noqa: BLE001 (one stage's failure is recorded; the next one starts)
                result = {
                    "status": "failed",
                    "reason": f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
                    "traceback": traceback.format_exc(),
                }
            if suite.device == "cuda":
                torch.cuda.empty_cache()
            record = {**base, **result, "seconds": time.monotonic() - t}
            if suite.device == "cuda":  # which tile config triton.autotune picked, per kernel and key
                record["autotuned"] = _autotuned_configs()
        suite.records[stage.name] = record
        write_json(path, record)
        write_summary(suite)
        print(
            f"== {stage.name}: {record['status']}"
            + (f" ({record['reason']})" if record.get("reason") else "")
            + f", {record['seconds']:.1f} s",
            flush=True,
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_suite.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory for summary.md, a JSON per stage and bench-*/")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=480.0,
        help="seconds the suite may take; no stage is started whose estimate does not fit what is left (default 480)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="every stage on the CPU at tiny sizes (Triton through its interpreter): proves the "
        "suite works; 28 s on a quiet 2-core machine, minutes beside other work",
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=[s.name for s in STAGES],
        default=[s.name for s in STAGES],
        help="run only these stages, in the usual order (default: all)",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()

    # the dry run asks for Triton's interpreter; a real run makes sure it is off (interpreted kernels on a
    # GPU would time nothing real)
    from roberta_kernels import triton_interpreter  # imports neither triton nor torch's CUDA state

    with triton_interpreter(args.dry_run):
        import torch

        if not args.dry_run and not torch.cuda.is_available():
            print(
                "gpu_suite.py: needs a CUDA GPU and none is visible, so nothing was measured; --dry-run runs "
                "every stage on the CPU",
                file=sys.stderr,
            )
            return 2
        from roberta_scratch.flops import card_peaks

        card = torch.cuda.get_device_name() if not args.dry_run else f"cpu ({platform.machine()}, dry run)"
        os.makedirs(args.out, exist_ok=True)
        suite = Suite(
            out=args.out,
            dry_run=args.dry_run,
            budget_s=args.budget_s,
            started=started,
            device="cpu" if args.dry_run else "cuda",
            card=card,
            datasheet=None if args.dry_run else card_peaks(card),
        )
        watchdog = not args.dry_run
        if watchdog:  # a hung stage (a compile, a deadlock) must not eat the machine's whole loan
            faulthandler.dump_traceback_later(args.budget_s + max(120.0, 0.5 * args.budget_s), exit=True)
        try:
            run_stages(suite, [s for s in STAGES if s.name in args.stages])
        finally:
            if watchdog:
                faulthandler.cancel_dump_traceback_later()
        path = write_summary(suite)
    print(f"wrote {path} ({time.monotonic() - started:.0f} s)")
    failed = [name for name, rec in suite.records.items() if rec["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
