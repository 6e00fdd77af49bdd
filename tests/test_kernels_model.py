"""The model on the fused kernels (attention="triton") against the eager model, in Triton's interpreter.

Same weights, a padded batch, dropout off: the MLM loss, the hidden states
and every parameter gradient agree. Only real-token positions are compared:
the kernel zeroes padded query rows where eager attention computes (unused)
values, and padding never reaches a real token in either. The interpreter is
set up as in tests/test_kernels_attention.py (see its docstring).
"""

import pytest
import torch
from helpers import triton_mode_fixture

import roberta_kernels
from roberta_scratch import RobertaConfig, RobertaForMaskedLM
from roberta_scratch.testing import padded_batch

pytestmark = pytest.mark.skipif(not roberta_kernels.triton_available(), reason="triton is not installed")

VOCAB = 300


_triton_mode = triton_mode_fixture("flash_attention", "layernorm")  # the interpreter on CPU


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts calls that reach the Triton launchers (not the reference fallback)."""
    calls = {"attention": 0, "layer_norm": 0}
    for module_name, fn_name in (("flash_attention", "attention"), ("layernorm", "layer_norm")):
        module = roberta_kernels.kernel_module(module_name)
        original = getattr(module, fn_name)

        def counted(*args, _original=original, _name=fn_name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, fn_name, counted)
    return calls


def tiny(attention):
    cfg = RobertaConfig.preset("tiny", vocab_size=VOCAB, attention=attention)  # hidden 128, 2 heads of 64
    torch.manual_seed(0)
    return RobertaForMaskedLM(cfg), cfg


def masked_batch(cfg, lengths):
    """A padded batch with MLM labels on about 30% of the real tokens (at least one)."""
    ids, mask = padded_batch(VOCAB, lengths, cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id, seed=1)
    g = torch.Generator().manual_seed(1)
    labels = torch.where((torch.rand(ids.shape, generator=g) < 0.3) & mask.bool(), ids, -100)
    labels[0, 1] = ids[0, 1]  # at least one label
    return ids, mask, labels


def test_triton_backend_matches_eager(kernel_calls):
    eager, cfg = tiny("eager")
    fused, _ = tiny("triton")
    fused.load_state_dict(eager.state_dict())
    eager.eval(), fused.eval()
    ids, mask, labels = masked_batch(cfg, [37, 20, 2])

    out_e = eager(ids, attention_mask=mask, labels=labels)
    out_f = fused(ids, attention_mask=mask, labels=labels)
    out_e.loss.backward()
    out_f.loss.backward()

    assert kernel_calls == {"attention": cfg.num_hidden_layers, "layer_norm": 2 * cfg.num_hidden_layers}
    real = mask.bool()
    torch.testing.assert_close(out_f.last_hidden_state[real], out_e.last_hidden_state[real], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_f.logits, out_e.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_f.loss, out_e.loss, atol=1e-6, rtol=1e-5)
    grads_e = dict(eager.named_parameters())
    for name, param in fused.named_parameters():
        assert param.grad is not None, name
        torch.testing.assert_close(
            param.grad, grads_e[name].grad, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_triton_backend_trains_with_dropout(kernel_calls):
    """Dropout on: seeded runs repeat exactly, and gradients are finite."""
    model, cfg = tiny("triton")
    model.train()
    ids, mask, labels = masked_batch(cfg, [30, 11])

    def step():
        torch.manual_seed(123)
        model.zero_grad()
        loss = model(ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss, grads = step()
    again, grads_again = step()
    assert kernel_calls["attention"] == 2 * cfg.num_hidden_layers
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    assert torch.equal(loss, again) and all(torch.equal(a, b) for a, b in zip(grads, grads_again, strict=True))
    model.eval()
    assert not torch.equal(loss, model(ids, attention_mask=mask, labels=labels).loss.detach())
