"""The benchmark scripts run as modules from the repository root, with no sys.path edits, and
each parses its options (the measurements themselves are run by hand; see docs/benchmarks.md)."""

import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "benchmarks").glob("bench_*.py"))


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_module_imports_and_has_help(name, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    source = Path(module.__file__).read_text()
    assert "sys.path" not in source
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    assert f"python -m benchmarks.{name}" in (module.__doc__ or "")


def test_command_is_recorded_as_the_module_invocation(monkeypatch):
    import sys
    import types

    from benchmarks import common

    monkeypatch.setattr(sys, "argv", ["/repo/benchmarks/bench_model.py", "--configs", "tiny"])
    monkeypatch.setitem(
        sys.modules, "__main__", types.SimpleNamespace(__spec__=types.SimpleNamespace(name="benchmarks.bench_model"))
    )
    assert common.command_line() == "python -m benchmarks.bench_model --configs tiny"


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_option_says_what_it_does(name, monkeypatch):
    import argparse

    module = importlib.import_module(f"benchmarks.{name}")
    parsers = []
    real = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        parsers.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        module.main([])
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", real)
    [parser] = parsers
    silent = [a.option_strings for a in parser._actions if not a.help]
    assert not silent, f"options without help text: {silent}"


def test_a_second_result_the_same_day_does_not_overwrite_the_first(tmp_path, monkeypatch):
    from benchmarks import common

    monkeypatch.setattr(common, "RESULTS_DIR", str(tmp_path))
    first = common.write_result("demo", [{"a": 1}])
    second = common.write_result("demo", [{"a": 2}])
    assert first != second and second.endswith("-2.json")
    import json

    assert json.load(open(first))["results"] == [{"a": 1}] and json.load(open(second))["results"] == [{"a": 2}]


def test_results_name_the_processor_its_extensions_and_its_gemm_rate():
    """ "AMD EPYC" named two machines a factor 1.6 apart in GEMM rate (AVX-512 against AVX2)."""
    from benchmarks.common import machine
    from roberta_scratch.machine import cpu_isa

    info = machine()
    assert info["processor"] and info["gemm_gflops_fp32"] > 0 and info["torch_cpu_capability"]
    assert isinstance(info["isa"], list)
    avx2_only = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n"
    assert cpu_isa(avx2_only) == ["AVX2"]
    sapphire = "flags\t\t: avx2 avx512f avx512_vnni amx_tile amx_bf16 avx_vnni\n"
    assert cpu_isa(sapphire) == ["AMX", "AVX-512 VNNI", "AVX-512", "AVX-VNNI", "AVX2"]
    assert cpu_isa("") == []


def test_inference_batches_are_padded_rows_of_the_drawn_lengths():
    from benchmarks.bench_inference import make_batches
    from roberta_scratch import RobertaConfig

    cfg = RobertaConfig.preset("tiny")
    lengths = [3, 9, 40]
    batches = make_batches(cfg, lengths, 8, "mix", n=3, seed=1)
    assert make_batches(cfg, lengths, 8, "mix", n=3, seed=1)[0][0].equal(batches[0][0])  # seeded: same inputs
    for ids, mask in batches:
        real = mask.sum(1).tolist()
        assert ids.shape == mask.shape == (8, max(real)) and set(real) <= set(lengths)
        for row, n in zip(ids.tolist(), real, strict=True):
            assert row[0] == cfg.bos_token_id and row[n - 1] == cfg.eos_token_id
            assert row[n:] == [cfg.pad_token_id] * (len(row) - n)
    ids, mask = make_batches(cfg, lengths, 32, 128, n=1)[0]
    assert ids.shape == (32, 128) and bool(mask.all())


def test_serve_benchmark_quick_run_has_every_section_and_no_server_error(tmp_path, monkeypatch, reference_dir):
    """bench_serve --quick end to end: a tiny model, every server as its own process, a few requests
    each (about 25 s on 2 cores). Every row's figures are finite, no request got a 5xx or hung, the
    429s carried Retry-After, the overloaded server recovered, and every server exited 0 on SIGTERM."""
    import json
    import math

    import torch

    from benchmarks import bench_serve, common

    monkeypatch.setattr(common, "RESULTS_DIR", str(tmp_path))
    threads = torch.get_num_threads()
    try:
        record = json.load(open(bench_serve.main(["--quick"])))
    finally:
        torch.set_num_threads(threads)  # the benchmark sets its own
    rows = record["results"]
    closed = {(r["server"], r["clients"]) for r in rows if r["section"] == "closed loop"}
    assert closed == {(s, c) for s in bench_serve.SERVERS for c in (1, 8)}
    assert [r["section"] for r in rows if r["section"] != "closed loop"] == ["half load", "overload", "int8"]
    for r in rows:
        numbers = {k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        assert numbers and all(math.isfinite(v) for v in numbers.values()), r
        if "ok" in r:
            assert r["ok"] > 0 and r["5xx"] == 0 and r["hangs"] == 0, r
    overload = rows[-2]
    assert overload["ok"] + overload["429"] == overload["sent"] and overload["429"] == overload["429_with_retry_after"]
    assert overload["recovery_s"] is not None
    assert record["exit_codes"] == {name: 0 for name in [*bench_serve.SERVERS, "overload"]}
    assert record["torch_threads_per_server"] >= 1
    assert len(record["targets"]) == 9 and all(t["met"] in (True, False) for t in record["targets"])
