"""`kernels converge`: a correct attention trains the model as sdpa does; one that is right on
unit shapes but wrong in the model (strides, padding) is caught, at the step it diverges."""

import argparse
import math

import pytest
import torch

from roberta_kernels.registry import eager_attention
from roberta_scratch import converge


def assumes_contiguous(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    """Right on the contiguous tensors of a unit test; in the model q, k, v are views of one
    qkv matmul, and reading them with contiguous strides reads the wrong elements."""
    q, k, v = (torch.as_strided(t, t.shape, torch.empty(t.shape).stride()) for t in (q, k, v))
    return eager_attention(q, k, v, key_padding_mask, dropout_p, softmax_scale)


def ignores_padding(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    """Right on unpadded shapes; the model's batches are padded."""
    return eager_attention(q, k, v, None, dropout_p, softmax_scale)


def right(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    """The math written out again, by another hand: agrees with sdpa to rounding."""
    scale = softmax_scale or 1.0 / math.sqrt(q.shape[-1])
    s = torch.einsum("bhtd,bhsd->bhts", q, k) * scale
    if key_padding_mask is not None:
        s = s.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    return torch.einsum("bhts,bhsd->bhtd", s.softmax(-1), v)


def args(**kw):
    p = argparse.ArgumentParser()
    converge.add_arguments(p)
    return p.parse_args(sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in kw.items()), []))


def test_a_correct_attention_converges_with_sdpa(capsys):
    assert converge.run(args(attention="test_converge:right", steps=30, device="cpu")) == 0
    out = capsys.readouterr().out
    assert "OK: the curves agree at every step" in out and "test_converge:right against sdpa" in out
    result = converge.converge("test_converge:right", steps=30)
    assert result["first_divergence"] is None
    assert result["reference"].losses[-1] < result["reference"].losses[0] - 0.1  # it does learn


def test_an_attention_wrong_only_in_the_model_is_caught(capsys):
    # right on a contiguous unit case ...
    q, k, v = torch.randn(3, 2, 2, 7, 16).unbind(0)
    torch.testing.assert_close(assumes_contiguous(q, k, v), eager_attention(q, k, v))
    # ... wrong in training, from the first step
    assert converge.run(args(attention="test_converge:assumes_contiguous", steps=20, device="cpu")) == 1
    assert "WRONG GRADIENTS at step 0" in capsys.readouterr().err
    result = converge.converge("test_converge:ignores_padding", steps=20)
    first = result["first_divergence"]
    assert not result["first_step"]["ok"] and first is not None and first["step"] == 0


def first_tile_mask(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    """Padding honoured in the first 64 keys only: right wherever rows are padded inside the first
    tile (the old batches of 64 tokens), wrong where padding starts past it."""
    if key_padding_mask is not None:
        key_padding_mask = key_padding_mask | (torch.arange(q.shape[-2], device=q.device) >= 64)
    return eager_attention(q, k, v, key_padding_mask, dropout_p, softmax_scale)


def scale_one_percent_off(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    return eager_attention(q, k, v, key_padding_mask, dropout_p, softmax_scale=1.01 / math.sqrt(q.shape[-1]))


@pytest.mark.parametrize("name", ["first_tile_mask", "scale_one_percent_off"])
def test_the_exact_first_step_catches_what_the_curves_catch_late(name):
    """A 1% scale error took up to 42 steps to show in the loss curves, and padding honoured over
    the first key tile only passed: step 0's gradients against float64 show both at once."""
    grads = converge.converge(f"test_converge:{name}", steps=1)["first_step"]
    assert not grads["ok"] and grads["error"] > 5 * grads["limit"]
    assert converge.converge("test_converge:right", steps=1)["first_step"]["ok"]


def test_the_batches_put_padding_inside_past_and_far_past_the_first_key_tile():
    batches = converge.synthetic_batches(steps=3, batch_size=8, seq_len=160, vocab_size=120, seed=0)
    lengths = {int(n) for b in batches for n in b["attention_mask"].sum(1)}
    assert min(lengths) < 64 and any(64 < n < 128 for n in lengths) and any(128 < n < 160 for n in lengths)
    assert 160 in lengths  # a full row: the batch is as long as seq_len


def test_the_interpreter_gets_a_short_default_said_up_front(monkeypatch, capsys):
    """`converge --attention triton` on the CPU ran 50 interpreted steps (17.5 min under load) in
    silence: now 5 by default, with the expected time said before the first step."""
    import roberta_kernels

    if not roberta_kernels.triton_available():
        pytest.skip("triton is not installed")
    seen = {}

    def fake(attention, layer_norm, steps, *rest, show_progress=False):
        seen.update(steps=steps, show_progress=show_progress)
        curve = converge.Curve(attention, [1.0] * steps)
        return {
            "batches": {"seq_len": 160, "padded": True},
            "first_step": {
                "ok": True,
                "dtype": "torch.float32",
                "worst": "w",
                "error": 0.0,
                "limit": 1e-5,
                "reference_error": 0.0,
                "missing": [],
            },
            "candidate": curve,
            "reference": converge.Curve("sdpa", [1.0] * steps),
            "twin": curve,
            "first_divergence": None,
            "tolerance": {
                "dtype": "torch.float32",
                "atol": 1e-6,
                "rtol": 2e-5,
                "step0_rtol": 2e-6,
                "spread_factor": 10,
            },
        }

    monkeypatch.setattr(converge, "converge", fake)
    a = args(attention="triton", device="cpu")
    a.steps = None
    assert converge.run(a) == 0
    assert seen == {"steps": converge.INTERPRETED_STEPS, "show_progress": True}
    err = capsys.readouterr().err
    assert (
        "runs in Triton's CPU interpreter here: about 24 s a step on a quiet 2-core machine, so 5 steps take "
        "about 2.0 min, plus about a third of a minute for the exact first step" in err
    )
    a = args(attention="test_converge:right", device="cpu")
    a.steps = None
    assert converge.run(a) == 0 and seen["steps"] == converge.STEPS


def test_progress_moves_a_step_at_a_time(capsys, monkeypatch):
    monkeypatch.setenv("ROBERTA_SCRATCH_PROGRESS_SECONDS", "0")
    converge.converge("test_converge:right", steps=3, show_progress=True)
    err = capsys.readouterr().err
    assert "training with test_converge:right: 1/3 steps" in err and "3/3 steps (100%)" in err


TRITON_MODULE = """\
import torch
import triton
import triton.language as tl

import roberta_kernels
from roberta_kernels.registry import eager_attention


@triton.jit
def _copy_kernel(src, dst, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst + offs, tl.load(src + offs, mask=offs < n), mask=offs < n)


def attn(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    # a Triton kernel in the forward (interpreted on the CPU), then the math written out
    flat = q.detach().contiguous().view(-1)
    out = torch.empty_like(flat)
    _copy_kernel[(triton.cdiv(flat.numel(), 1024),)](flat, out, flat.numel(), BLOCK=1024)
    assert torch.equal(out, flat)
    return eager_attention(q, k, v, key_padding_mask, dropout_p, softmax_scale)
"""


def test_converge_runs_a_triton_module_from_the_current_folder(tmp_path):
    """`converge --attention MODULE:FUNCTION` imported the module before it set TRITON_INTERPRET, so
    a Triton kernel there was decorated for a GPU and failed on the CPU; and the console script did
    not look in the current folder."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import roberta_kernels

    if not roberta_kernels.triton_available():
        pytest.skip("triton is not installed")
    (tmp_path / "my_tri").mkdir()
    (tmp_path / "my_tri" / "__init__.py").write_text("")
    (tmp_path / "my_tri" / "attn.py").write_text(TRITON_MODULE)
    script = Path(sys.executable).parent / "roberta-scratch"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    argv = [str(script), "kernels", "converge", "--attention", "my_tri.attn:attn", "--steps", "2", "--device", "cpu"]
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: the curves agree" in proc.stdout
    missing = subprocess.run(
        [str(script), "kernels", "converge", "--attention", "no_such_pkg.attn:attn", "--device", "cpu"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert missing.returncode != 0 and f"looked in the current folder {tmp_path}" in missing.stderr


def test_a_kernel_without_padding_trains_on_full_rows_of_its_multiple():
    import roberta_kernels

    roberta_kernels.register("attention", "unpadded64", eager_attention, padding=False, seq_multiple=64)
    try:
        result = converge.converge("unpadded64", steps=3)
    finally:
        roberta_kernels.registry._REGISTRY["attention"].pop("unpadded64", None)
    assert result["batches"] == {"seq_len": 192, "padded": False}  # 160 rounded up to a multiple of 64
    assert result["first_step"]["ok"] and result["first_divergence"] is None
