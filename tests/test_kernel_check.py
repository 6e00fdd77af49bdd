"""`roberta-scratch kernels check`: it passes the correct implementations and catches wrong ones.

The wrong implementations below are the bugs a kernel author actually writes: a softmax
scale slightly off, padding masked in the first key tile only, one gradient off by 1%, a
backward that draws its own dropout mask, an output or gradient a kernel never writes. Each
must fail `--quick`, with the failing tensor named. Triton code runs in the interpreter, set
up as in tests/test_kernels_attention.py (see its docstring).
"""

import argparse
import math
import os
import re

import pytest
import torch
import torch.nn.functional as F
from helpers import triton_mode_fixture

import roberta_kernels
from roberta_kernels import check
from roberta_kernels.registry import Implementation, eager_attention, flex_available, torch_layer_norm

if roberta_kernels.triton_available():  # Triton code in the interpreter (every test: the check restores the variable)
    _triton_mode = triton_mode_fixture("flash_attention", "layernorm")


def run_quick(spec, op="attention"):
    fn = check.check_attention if op == "attention" else check.check_layer_norm
    return fn(spec, device="cpu", quick=True)


def failed(rows):
    return [r for r in rows if r.status == "FAIL"]


def assert_passes(rows):
    assert rows and not failed(rows), check.format_table(failed(rows))
    assert any(r.status == "ok" for r in rows)
    assert check.summarize(rows)[1] == 0


# ----------------------------------------------------------------------------- wrong implementations


def scale_off_attention(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    """The softmax scale 1% too large."""
    return eager_attention(q, k, v, key_padding_mask, dropout_p, softmax_scale=1.01 / math.sqrt(q.shape[-1]))


def first_tile_mask_attention(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    """Padding masked in the first 64-key tile only: keys from 64 on count as real."""
    if key_padding_mask is not None:
        key_padding_mask = key_padding_mask | (torch.arange(q.shape[-2], device=q.device) >= 64)
    return eager_attention(q, k, v, key_padding_mask, dropout_p, softmax_scale)


class _GradTimes(torch.autograd.Function):
    """Identity forward; the backward scales the gradient by 1.01."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * 1.01


def wrong_dv_attention(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    """dv 1% off, every other tensor right."""
    return eager_attention(q, k, _GradTimes.apply(v), key_padding_mask, dropout_p, softmax_scale)


def detached_k_attention(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    """No gradient reaches k."""
    return eager_attention(q, k.detach(), v, key_padding_mask, dropout_p, softmax_scale)


class _RecomputingAttention(torch.autograd.Function):
    """Saves memory by recomputing the forward in the backward, but forgets to replay the RNG:
    the backward's dropout mask is a new draw."""

    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, dropout_p):
        ctx.save_for_backward(q, k, v, key_padding_mask)
        ctx.dropout_p = dropout_p
        return eager_attention(q, k, v, key_padding_mask, dropout_p)

    @staticmethod
    def backward(ctx, do):
        q, k, v, key_padding_mask = ctx.saved_tensors
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_() for t in (q, k, v)]
            out = eager_attention(*inputs, key_padding_mask, ctx.dropout_p)
            return (*torch.autograd.grad(out, inputs, do), None, None)


def redrawn_dropout_attention(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    return _RecomputingAttention.apply(q, k, v, key_padding_mask, dropout_p)


def unscaled_dropout_attention(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    """Dropout without the 1 / (1 - p) rescale: biased."""
    return eager_attention(q, k, v, key_padding_mask, dropout_p, softmax_scale) * (1 - dropout_p)


def unwritten_pad_rows_attention(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    """Writes the real query rows only, as a kernel that skips padded query tiles would: the
    padded rows keep whatever torch.empty held."""
    out = eager_attention(q, k, v, key_padding_mask, dropout_p, softmax_scale)
    if key_padding_mask is None:
        return out
    return torch.where(key_padding_mask[:, None, :, None], out, torch.empty_like(out))


class _UnwrittenPadKeyGrads(torch.autograd.Function):
    """Right gradients for real keys; dk and dv of padded keys never written (a tile skipped in
    the backward without zeroing its output)."""

    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask):
        ctx.save_for_backward(q, k, v, key_padding_mask)
        return eager_attention(q, k, v, key_padding_mask)

    @staticmethod
    def backward(ctx, do):
        q, k, v, mask = ctx.saved_tensors
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_() for t in (q, k, v)]
            dq, dk, dv = torch.autograd.grad(eager_attention(*inputs, mask), inputs, do)
        if mask is not None:
            real = mask[:, None, :, None]
            dk, dv = torch.where(real, dk, torch.empty_like(dk)), torch.where(real, dv, torch.empty_like(dv))
        return dq, dk, dv, None


def unwritten_pad_key_grads_attention(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    return _UnwrittenPadKeyGrads.apply(q, k, v, key_padding_mask)


def detached_residual_layer_norm(x, weight, bias, eps=1e-5, residual=None, dropout_p=0.0):
    return torch_layer_norm(x, weight, bias, eps, None if residual is None else residual.detach(), dropout_p)


class _RedrawnDropoutLN(torch.autograd.Function):
    """The forward's dropout and the backward's are two draws."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, residual, dropout_p):
        ctx.save_for_backward(x, weight, bias, residual)
        ctx.eps, ctx.dropout_p = eps, dropout_p
        return torch_layer_norm(x, weight, bias, eps, residual, dropout_p)

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, residual = ctx.saved_tensors
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_() for t in (x, weight, bias, residual)]
            y = torch_layer_norm(inputs[0], inputs[1], inputs[2], ctx.eps, inputs[3], ctx.dropout_p)
            dx, dw, db, dr = torch.autograd.grad(y, inputs, dy)
        return dx, dw, db, None, dr, None


def redrawn_dropout_layer_norm(x, weight, bias, eps=1e-5, residual=None, dropout_p=0.0):
    return _RedrawnDropoutLN.apply(x, weight, bias, eps, residual, dropout_p)


def eps_off_layer_norm(x, weight, bias, eps=1e-5, residual=None, dropout_p=0.0):
    """eps 1e-2 instead of 1e-5: the rows are normalised by a slightly wrong variance."""
    h = F.dropout(x, dropout_p, training=dropout_p > 0) + (0 if residual is None else residual)
    return F.layer_norm(h, (h.shape[-1],), weight, bias, 1e-2)


# ----------------------------------------------------------------------------- the correct ones pass


@pytest.mark.parametrize("name", ["eager", "sdpa"])
def test_quick_passes_torch_attention(name):
    rows = run_quick(name)
    assert_passes(rows)
    assert [r for r in rows if r.dropout and r.status == "ok"], "the dropout case ran"


def test_quick_passes_torch_layer_norm():
    rows = run_quick("torch", "layer_norm")
    assert_passes(rows)
    assert [r for r in rows if r.dropout and r.status == "ok"]


@pytest.mark.skipif(not flex_available(), reason="this torch has no FlexAttention")
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_quick_passes_flex_forward_only_on_the_cpu():
    # torch's flex attention has no backward on the CPU (it raises NotImplementedError for inputs
    # that require grad) and claims no dropout: --quick checks its forward alone (eager flex, ~3 s).
    rows = run_quick("flex")
    assert not failed(rows), check.format_table(rows)
    ok, skipped = [r for r in rows if r.status == "ok"], [r for r in rows if r.status == "skip"]
    assert ok and all(r.forward_only and "NotImplementedError" in r.note for r in ok)
    assert [r.dropout for r in skipped] == [check.DROPOUT_P] and "does not claim dropout" in skipped[0].note
    text, code = check.summarize(rows)
    assert code == 0 and f"{len(ok)} checked forward only" in text


requires_triton = pytest.mark.skipif(not roberta_kernels.triton_available(), reason="triton is not installed")


@requires_triton
def test_quick_passes_triton_attention():
    rows = run_quick("triton")
    assert_passes(rows)
    assert len(rows) == len(check.QUICK_INTERPRETED_ATTENTION)  # the interpreter's tiny set
    assert roberta_kernels.kernel_module("flash_attention").INTERPRETED  # the Triton code ran, not the fallback


@requires_triton
def test_quick_passes_triton_layer_norm():
    assert_passes(run_quick("triton", "layer_norm"))


# ----------------------------------------------------------------------------- the wrong ones fail


@pytest.mark.parametrize(
    "fn, op, tensors",
    [
        (scale_off_attention, "attention", {"out"}),
        (first_tile_mask_attention, "attention", {"out", "dv"}),
        (wrong_dv_attention, "attention", {"dv"}),
        (detached_k_attention, "attention", {"dk"}),
        (redrawn_dropout_attention, "attention", {"dq", "dv"}),
        (unscaled_dropout_attention, "attention", {"mask"}),
        (unwritten_pad_rows_attention, "attention", {"out"}),
        (unwritten_pad_key_grads_attention, "attention", {"dk", "dv"}),
        (detached_residual_layer_norm, "layer_norm", {"dresidual"}),
        (redrawn_dropout_layer_norm, "layer_norm", {"y"}),
        (eps_off_layer_norm, "layer_norm", {"y"}),
    ],
    ids=lambda x: getattr(x, "__name__", None),
)
def test_quick_catches(fn, op, tensors):
    rows = run_quick(fn, op)
    bad = failed(rows)
    assert bad, f"{fn.__name__} passed:\n{check.format_table(rows)}"
    named = {name for r in bad for name in r.tensor.split(",")}
    assert tensors <= named, f"expected {tensors} among the failures:\n{check.format_table(bad)}"
    assert check.summarize(rows)[1] == 1
    assert "first failure" in check.summarize(rows)[0]


def test_wrong_dv_fails_dv_alone():
    rows = run_quick(wrong_dv_attention)
    assert all(r.status == "FAIL" for r in rows if r.dtype == "fp32")  # 1% is 10^3 times fp32's tolerance
    assert {r.tensor for r in failed(rows)} == {"dv"}
    assert "dv: rel err 1.00e-02" in failed(rows)[0].note


def test_nan_never_passes():
    def nan_attention(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
        out = eager_attention(q, k, v, key_padding_mask, dropout_p, softmax_scale)
        return out + torch.where(torch.arange(q.shape[-2]) == q.shape[-2] - 1, math.nan, 0.0)[:, None]

    rows = run_quick(nan_attention)
    assert all(r.status == "FAIL" for r in rows if not r.dropout), check.format_table(rows)
    assert "NaN" in rows[0].note


def test_inputs_modified_in_place_fail():
    def scribbling_attention(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
        out = eager_attention(q, k, v, key_padding_mask, dropout_p, softmax_scale)
        k.data.mul_(0.5)  # as a kernel that reuses an input's memory as scratch
        return out

    rows = check.check_attention(scribbling_attention, cases=[check.AttentionCase(17, 32, "right", torch.float32)])
    assert rows[0].status == "FAIL" and "modified in place" in rows[0].note


# ----------------------------------------------------------------------------- capabilities


def test_unclaimed_cases_are_skipped_with_the_reason():
    impl = Implementation(
        "attention", "d64", eager_attention, dtypes=(torch.float32, torch.bfloat16), head_dims=(64,), dropout=False
    )
    rows = run_quick(impl)
    skipped = [r for r in rows if r.status == "skip"]
    assert not failed(rows) and skipped
    assert [r for r in rows if r.status == "ok"] == [
        r for r in rows if r.dtype != "fp16" and r.D == 64 and not r.dropout
    ]
    notes = {r.note for r in skipped}
    assert "d64 does not claim float16" in notes and "d64 does not claim dropout" in notes
    assert any("does not claim head dim 128" in n for n in notes)
    assert check.summarize(rows)[1] == 0


def test_everything_skipped_says_so_and_fails():
    impl = Implementation("attention", "gpu_only", eager_attention, devices=("cuda",))
    rows = run_quick(impl)
    assert {r.status for r in rows} == {"skip"}
    text, code = check.summarize(rows)
    assert code == 2 and "NOTHING WAS CHECKED" in text


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(ValueError, match="registered are eager, sdpa, triton"):
        check.check_attention("nope")


def test_cases_cover_the_issue():
    cases = check.attention_cases()
    assert {c.T for c in cases if not c.dropout_p and c.inputs == "normal"} == {1, 17, 77, 128, 130, 257, 513}
    assert set(check.ACCUMULATION_ATTENTION) <= set(cases)
    assert {c.D for c in cases} == {32, 64, 128}
    assert {c.padding for c in cases} == {"none", "right", "single", "middle"}
    assert {c.dtype for c in cases} == {torch.float32, torch.bfloat16, torch.float16}
    for c in cases:
        if c.dropout_p:
            assert c.T == c.D
    mask = check.padding_mask("middle", 2, 17)
    assert not mask[0, 5] and mask[0, 0] and mask[0, -1]  # a pad between real tokens
    assert check.padding_mask("single", 2, 17)[0].sum() == 1
    right = check.padding_mask("right", 2, 77)
    assert right[0].all() and not right[1, 64:].any() and right[1, :50].all()


def test_the_check_leaves_the_environment_and_rng_alone(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    state = torch.get_rng_state()
    check.check_attention("eager", cases=[check.AttentionCase(32, 32, "right", torch.float32, check.DROPOUT_P)])
    assert "TRITON_INTERPRET" not in os.environ
    assert torch.equal(torch.get_rng_state(), state)
    assert not hasattr(torch.empty, "__wrapped__") and not hasattr(torch.Tensor.new_empty, "__wrapped__")


# ----------------------------------------------------------------------------- the command


def parse(argv):
    parser = argparse.ArgumentParser()
    check.add_arguments(parser)
    return parser.parse_args(argv)


def test_run_prints_the_table_and_exits_zero(capsys):
    assert check.run(parse(["--attention", "eager", "--quick", "--device", "cpu"])) == 0
    out = capsys.readouterr().out
    assert "impl" in out and "rel err" in out and "max abs" in out
    assert "attention eager: 9 ok, 0 FAIL, 0 skipped" in out and "PASS" in out


def test_run_with_a_wrong_module_function_exits_nonzero(capsys):
    code = check.run(
        parse(
            [
                "--attention",
                "eager",
                f"{__name__}:scale_off_attention",
                "--layer-norm",
                "torch",
                "--quick",
                "--device",
                "cpu",
            ]
        )
    )
    out = capsys.readouterr().out
    assert code == 1
    assert re.search(rf"attention {__name__}:scale_off_attention: \d+ ok, [1-9]\d* FAIL", out)
    assert "attention eager: 9 ok, 0 FAIL" in out and "layer_norm torch: 7 ok, 0 FAIL" in out
    assert out.rstrip().endswith("FAIL")


def test_run_needs_an_implementation():
    with pytest.raises(ValueError, match="name at least one implementation"):
        check.run(parse(["--quick"]))


def test_cli_main(capsys):
    pytest.importorskip(
        "roberta_kernels.bench", reason="roberta_scratch/cli.py imports roberta_kernels.bench, not written yet"
    )
    from roberta_scratch import cli

    assert cli.main(["kernels", "check", "--attention", "eager", "--quick", "--device", "cpu"]) == 0
    assert "attention eager: 9 ok" in capsys.readouterr().out
    assert (
        cli.main(["kernels", "check", "--attention", f"{__name__}:wrong_dv_attention", "--quick", "--device", "cpu"])
        == 1
    )
    assert "dv" in capsys.readouterr().out


# ----------------------------------------------------------------------------- on a GPU (make test-gpu)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("name", ["eager", "sdpa", "triton", "flex"])
def test_quick_passes_on_cuda(name):
    if name == "flex" and not flex_available():
        pytest.skip("this torch has no FlexAttention")
    assert_passes(check.check_attention(name, "cuda", quick=True))


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(
    "fn, tensors",
    [
        (unwritten_pad_rows_attention, {"out"}),
        (unwritten_pad_key_grads_attention, {"dk", "dv"}),
        (redrawn_dropout_attention, {"dq", "dv"}),
    ],
)
def test_quick_catches_on_cuda(fn, tensors):
    bad = failed(check.check_attention(fn, "cuda", quick=True))
    assert tensors <= {name for r in bad for name in r.tensor.split(",")}, check.format_table(bad)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("name", ["torch", "triton"])
def test_quick_passes_layer_norm_on_cuda(name):
    assert_passes(check.check_layer_norm(name, "cuda", quick=True))


# ----------------------------------------------------------------------------- kernels that misbehave


def exiting_attention(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    raise SystemExit(0)  # what a library's fatal path may do


def hanging_layer_norm(x, weight, bias, eps=1e-5, residual=None, dropout_p=0.0):
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # a kernel that never finishes (bounded here, so a broken test ends)
        pass
    raise AssertionError("not stopped by the check's time limit")


def test_a_kernel_that_raises_system_exit_fails_with_a_verdict():
    rows = run_quick(exiting_attention)
    assert rows and all(r.status == "FAIL" for r in rows if r.status != "skip")
    assert "SystemExit" in failed(rows)[0].note and check.summarize(rows)[1] == 1


def test_a_kernel_that_hangs_fails_its_case_and_the_check_goes_on():
    import time

    cases = check.layer_norm_cases(True, False)[:2]
    start = time.monotonic()
    rows = check.check_layer_norm(hanging_layer_norm, device="cpu", cases=cases, timeout=0.5)
    assert time.monotonic() - start < 10
    assert [r.status for r in rows] == ["FAIL", "FAIL"] and "timed out after 0.5 s" in rows[0].note
    assert check.summarize(rows)[1] == 1


def segfaulting_attention(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    import ctypes

    ctypes.string_at(0)  # reads address 0: SIGSEGV, as a kernel writing out of bounds in the interpreter did


def test_a_kernel_that_segfaults_fails_its_case_and_the_check_goes_on():
    """The Triton tutorial's attention segfaulted Triton's interpreter at case 7, and the whole
    check died with it, with no summary. Each case now runs in a child process."""
    cases = [check.AttentionCase(17, 32, "right", torch.float32), check.AttentionCase(5, 32, "none", torch.float32)]
    rows = check.check_attention(segfaulting_attention, cases=cases)
    assert [r.status for r in rows] == ["FAIL", "FAIL"]
    assert "the process running the case died: killed by SIGSEGV (a crash)" in rows[0].note
    assert check.summarize(rows)[1] == 1
    assert_passes(check.check_attention("eager", cases=cases))  # the next check runs as ever


def test_declared_limits_skip_once_per_limit_and_quick_moves_inside_them(capsys):
    roberta_kernels.register("attention", "tiles128", eager_attention, padding=False, seq_multiple=128, dropout=False)
    try:
        rows = run_quick("tiles128")
        ok = [r for r in rows if r.status == "ok"]
        assert ok and all(r.T % 128 == 0 and r.variant.split(",")[0] == "none" for r in ok)  # what it claims
        assert check.run(parse(["--attention", "tiles128", "--device", "cpu", "--seq-lens", "77", "128"])) == 0
        out = capsys.readouterr().out
        lines = [line for line in out.splitlines() if line.startswith("skipped")]
        assert "skipped" in out and len(lines) == len(set(lines)) <= 4  # one line per limit, not per case
        assert any("does not claim padding (padding=False)" in line for line in lines)
        assert any("multiple of 128" in line for line in lines)
        assert {r.T for r in check.check_attention("tiles128", lengths=[256]) if r.status == "ok"} == {256}
        # --quick with nothing left to check: exit 2, saying why
        roberta_kernels.register("attention", "tiny_only", eager_attention, max_seq=8, seq_multiple=16)
        with pytest.raises(check.NothingClaimed, match="claims none of the quick cases"):
            run_quick("tiny_only")
        assert check.run(parse(["--attention", "tiny_only", "--quick", "--device", "cpu"])) == 2
        assert "claims none of the quick cases" in capsys.readouterr().err
    finally:
        for name in ("tiles128", "tiny_only"):
            roberta_kernels.registry._REGISTRY["attention"].pop(name, None)


def test_the_model_refuses_a_batch_outside_declared_limits(tiny):
    from roberta_scratch import RobertaForMaskedLM

    roberta_kernels.register("attention", "unpadded", eager_attention, padding=False)
    try:
        model = RobertaForMaskedLM(tiny(attention="unpadded"))
        ids = torch.randint(4, 100, (2, 6))
        model(ids)  # no padding: runs
        with pytest.raises(ValueError, match=r"attention 'unpadded' cannot run this batch.*padding=False"):
            model(ids, attention_mask=torch.tensor([[1] * 6, [1] * 4 + [0] * 2]))
    finally:
        roberta_kernels.registry._REGISTRY["attention"].pop("unpadded", None)


def test_bad_limits_are_refused_when_registered():
    with pytest.raises(ValueError, match="seq_multiple must be a whole number >= 1"):
        roberta_kernels.register("attention", "bad", eager_attention, seq_multiple=0)
    with pytest.raises(ValueError, match="max_seq must be a whole number >= min_seq"):
        roberta_kernels.register("attention", "bad", eager_attention, min_seq=64, max_seq=32)


def test_dropout_failures_after_a_failing_forward_blame_the_forward():
    """With the forward already wrong, the dropout case used to report a bad keep rate, which sent
    the author to the wrong place."""
    rows = run_quick(scale_off_attention)
    dropout_failures = [r for r in rows if r.failed and r.dropout]
    assert dropout_failures and all(
        r.note.startswith("forward already fails without dropout") for r in dropout_failures
    )
    assert all(r.note.count("forward already fails") <= 1 for r in rows)  # said once, whatever follows


# ----------------------------------------------------------------------------- low-precision accumulation


def low_precision_accumulator_attention(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    """A real bf16 kernel bug: flash attention's running output and row sum kept in the input dtype,
    16 keys at a time, so each tile's contribution is rounded into them. Scores and the exponentials
    are float32, as in a correct kernel; only the accumulators are wrong."""
    B, H, T, D = q.shape
    scale = softmax_scale or 1.0 / math.sqrt(D)
    m = torch.full((B, H, T), -math.inf, device=q.device)
    l = torch.zeros((B, H, T), dtype=q.dtype, device=q.device)
    acc = torch.zeros((B, H, T, D), dtype=q.dtype, device=q.device)
    for j in range(0, T, 16):
        s = (q.float() @ k[..., j : j + 16, :].float().transpose(-2, -1)) * scale  # (B, H, T, 16)
        if key_padding_mask is not None:
            s = s.masked_fill(~key_padding_mask[:, None, None, j : j + 16], -math.inf)
        m_new = torch.maximum(m, s.amax(-1))
        alpha = torch.exp(m - m_new).nan_to_num(0.0)
        p = torch.exp(s - m_new[..., None]).nan_to_num(0.0)
        l = (l.float() * alpha + p.sum(-1)).to(q.dtype)  # the bug: rounded to bf16 every tile
        acc = (acc.float() * alpha[..., None] + p.to(q.dtype).float() @ v[..., j : j + 16, :].float()).to(q.dtype)
        m = m_new
    return (acc.float() / l.float()[..., None]).to(q.dtype)


def test_an_input_dtype_accumulator_passes_the_ordinary_cases_and_fails_the_long_ones():
    """It passed all 234 cases of the full suite before the accumulation cases existed: its error
    grows with the keys in a row, and T = 513 keeps it under bf16's tolerance."""
    ordinary = [c for c in check.QUICK_ATTENTION if c.inputs == "normal" and not c.dropout_p]
    assert_passes(check.check_attention(low_precision_accumulator_attention, cases=ordinary))
    rows = check.check_attention(low_precision_accumulator_attention, cases=check.ACCUMULATION_ATTENTION)
    assert [r.status for r in rows] == ["FAIL", "FAIL"], check.format_table(rows)
    assert all("accumulate" in r.variant for r in rows)
    assert check.ACCUMULATION_ATTENTION[0] in check.QUICK_ATTENTION  # --quick catches it too


@pytest.mark.parametrize("name", ["eager", "sdpa"])
def test_correct_attention_passes_the_accumulation_cases(name):
    assert_passes(check.check_attention(name, cases=check.ACCUMULATION_ATTENTION))


def test_our_triton_attention_passes_the_bf16_accumulation_case():
    """About 10 s in Triton's interpreter; the fp16 case at T = 4096 (about 55 s) is `slow`."""
    if not roberta_kernels.triton_available():
        pytest.skip("triton is not installed")
    assert_passes(check.check_attention("triton", cases=check.ACCUMULATION_ATTENTION[:1]))


@pytest.mark.slow
def test_our_triton_attention_passes_the_fp16_accumulation_case():
    if not roberta_kernels.triton_available():
        pytest.skip("triton is not installed")
    assert_passes(check.check_attention("triton", cases=check.ACCUMULATION_ATTENTION[1:]))
