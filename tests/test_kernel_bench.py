"""`kernels bench` and benchmarks/gpu_suite.py, proven on the CPU by their dry runs (tiny sizes, Triton's
interpreter): every stage runs, results.json, the plots, summary.md and a JSON per stage are written, cases
an implementation does not claim are skipped with a reason, and the budget stops stages that do not fit.
The GPU numbers themselves are taken by `make gpu-check` on a lent GPU."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from roberta_kernels import bench, registry

REPO = Path(__file__).resolve().parents[1]


def bench_args(tmp_path, *argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args([*argv, "--out", str(tmp_path), "--dry-run"])


def test_dry_run_benches_every_implementation_and_writes_results_and_plots(tmp_path, monkeypatch):
    # a user's implementation that claims only D = 128: skipped, with the reason, not failed
    only_128 = registry.Implementation("attention", "only-d128", registry.eager_attention, head_dims=(128,))
    monkeypatch.setitem(registry._REGISTRY["attention"], "only-d128", only_128)
    args = bench_args(
        tmp_path,
        "--attention",
        "triton",
        "sdpa",
        "eager",
        "only-d128",
        "--layer-norm",
        "triton",
        "--seq-lens",
        "512",
        "--pad",
        "0.5",
        "--hidden",
        "768",
        "--ln-dropout",
        "0",
        "0.1",
    )
    assert bench.run(args) == 0

    record = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "attention.png").stat().st_size > 0 and (tmp_path / "layernorm.png").stat().st_size > 0
    assert record["dry_run"] and record["command"] and record["date"]
    assert {"torch", "triton", "python"} <= set(record["versions"])
    assert record["peaks"]["matmul_tflops_measured"] > 0 and record["peaks"]["copy_gbs_measured"] > 0

    rows = {(r["impl"], r["pad"]): r for r in record["attention"]}
    T = record["settings"]["pad_seq_len"]
    assert {r["T"] for r in record["attention"]} == {T} and {r["pad"] for r in record["attention"]} == {0.0, 0.5}
    for name in ("triton", "sdpa", "eager", "sdpa-flash", "sdpa-mem-efficient", "sdpa-cudnn", "flex"):
        assert (name, 0.5) in rows, name
    for name in ("triton", "sdpa", "eager"):
        for pad in (0.0, 0.5):
            r = rows[(name, pad)]
            assert r["status"] == "ok", r
            assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["fwd_tflops"] > 0 and r["finite"]
            assert r["max_err_out"] < 1e-4 and r["max_err_grad"] < 1e-4  # fp32 in a dry run; real rows only
        assert "fwd_speedup_vs_no_pad" in rows[(name, 0.5)]
    assert rows[("triton", 0.0)]["runs_as"] == "triton interpreter"
    assert rows[("only-d128", 0.0)]["status"] == "skipped"
    assert "head dim" in rows[("only-d128", 0.0)]["reason"]
    # the CPU has no mem-efficient or cuDNN kernel: reported, not failed; the real work is the GPU's
    assert rows[("sdpa-cudnn", 0.0)]["status"] == "not supported" and rows[("sdpa-cudnn", 0.0)]["reason"]
    # FLOPs on real tokens only: half the tokens, a quarter of the work
    assert rows[("triton", 0.5)]["real_tokens"] * 2 == rows[("triton", 0.0)]["real_tokens"]

    ln = {(r["impl"], r["dropout"]): r for r in record["layer_norm"]}
    assert set(ln) == {("triton", 0.0), ("triton", 0.1), ("torch", 0.0), ("torch", 0.1)}
    for p in (0.0, 0.1):
        assert ln[("triton", p)]["status"] == "ok" and ln[("triton", p)]["fwd_gbs"] > 0
        assert ln[("triton", p)]["max_err_out"] < 1e-4
        assert "fwd_bwd_speedup_vs_torch" in ln[("triton", p)]


def test_median_is_asked_of_do_bench(monkeypatch):
    """triton.testing.do_bench returns the mean unless told; every CUDA figure asks for the median."""
    triton_testing = pytest.importorskip("triton.testing")
    seen = {}

    def fake(fn, **kwargs):
        seen.update(kwargs)
        return 1.0

    monkeypatch.setattr(triton_testing, "do_bench", fake)
    assert bench.median_ms(lambda: None, torch.device("cuda"), warmup_ms=1, rep_ms=2) == 1.0
    assert seen["return_mode"] == "median"
    calls = []
    assert bench.median_ms(lambda: calls.append(1), torch.device("cpu"), repeats=3) >= 0
    assert len(calls) == 4  # a warmup, then the median of three


def test_flops_are_counted_on_real_tokens():
    lengths = torch.tensor([512, 256])
    assert bench.attention_flops(lengths, heads=12, head_dim=64) == 4 * 12 * 64 * (512**2 + 256**2)


def test_bench_module_imports_neither_triton_nor_the_package():
    code = (
        "import sys, roberta_kernels.bench; bad = [m for m in ('triton', 'roberta_scratch') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_unknown_implementation_is_an_argument_error(tmp_path, capsys):
    assert bench.run(bench_args(tmp_path, "--attention", "no-such-kernel")) == 2
    assert "no-such-kernel" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def test_gpu_suite_dry_run_runs_every_stage_and_writes_the_summary(tmp_path):
    from benchmarks import gpu_suite

    out = tmp_path / "gpu"
    before = os.environ.get("TRITON_INTERPRET")
    gpu_suite.main(["--out", str(out), "--dry-run"])  # exit 1 only if a stage failed, checked below per stage
    assert os.environ.get("TRITON_INTERPRET") == before  # the dry run's interpreter setting is undone
    summary = (out / "summary.md").read_text()
    assert "DRY RUN" in summary
    for target in (
        "280 TFLOP/s",
        "200 TFLOP/s",
        "1.6x faster at half padding",
        "2.3 TB/s",
        "faster than torch",
        "1.3x sdpa",
    ):
        assert target in summary, target
    assert "FlexAttention" in summary and "cuDNN" in summary
    for stage in gpu_suite.STAGES:
        record = json.loads((out / f"{stage.name}.json").read_text())
        assert record["stage"] == stage.name
        if stage.name == "check":  # roberta_kernels.check is another module's: its own tests judge it
            assert record["status"] in ("ok", "failed", "skipped"), record
        else:
            assert record["status"] == "ok", record
    attention = json.loads((out / "attention.json").read_text())["bench"]
    assert {r["impl"] for r in attention["attention"]} >= {"triton", "eager", "flex", "sdpa-cudnn"}
    assert (out / "bench-attention" / "attention.png").exists() and (out / "bench-layernorm" / "layernorm.png").exists()
    e2e = json.loads((out / "e2e.json").read_text())
    assert e2e["speedup"] > 0 and e2e["layer_norm"] == {"triton": "triton", "sdpa": "torch"}
    assert e2e["eval_loss_abs_diff"] < 1e-3  # the same weights and batch give the same loss either way


def test_gpu_suite_skips_what_the_budget_cannot_fit(tmp_path):
    from benchmarks import gpu_suite

    assert gpu_suite.main(["--out", str(tmp_path), "--dry-run", "--budget-s", "1"]) == 0
    for stage in gpu_suite.STAGES:
        record = json.loads((tmp_path / f"{stage.name}.json").read_text())
        assert record["status"] == "skipped" and "budget" in record["reason"], record
    summary = (tmp_path / "summary.md").read_text()
    assert "skipped" in summary and "not measured" in summary


@pytest.mark.parametrize("how", [["benchmarks/gpu_suite.py"], ["-m", "benchmarks.gpu_suite"]])
def test_gpu_suite_help_works_as_a_script_and_as_a_module(how):
    result = subprocess.run([sys.executable, *how, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--budget-s" in result.stdout, result.stderr
