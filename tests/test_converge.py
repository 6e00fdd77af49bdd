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
    assert "DIVERGED at step 0" in capsys.readouterr().err
    first = converge.converge("test_converge:ignores_padding", steps=20)["first_divergence"]
    assert first is not None and first["step"] == 0 and first["difference"] > first["limit"]


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
        "runs in Triton's CPU interpreter here: about 8.8 s a step on a quiet 2-core machine, so 5 steps take "
        "about 0.7 min" in err
    )
    a = args(attention="test_converge:right", device="cpu")
    a.steps = None
    assert converge.run(a) == 0 and seen["steps"] == converge.STEPS


def test_progress_moves_a_step_at_a_time(capsys, monkeypatch):
    monkeypatch.setenv("ROBERTA_SCRATCH_PROGRESS_SECONDS", "0")
    converge.converge("test_converge:right", steps=3, show_progress=True)
    err = capsys.readouterr().err
    assert "training with test_converge:right: 1/3 steps" in err and "3/3 steps (100%)" in err
