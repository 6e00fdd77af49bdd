"""Exactness: every model class matches transformers to fp32 rounding, in every backend.

Tiny random models are built with transformers (all parameters random, LayerNorms
included), saved, loaded here with from_pretrained, and run on the same padded batch.
"""

import pytest
import torch
from helpers import padded_batch, random_hf_model

from roberta_scratch import (
    RobertaForMaskedLM,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
)

transformers = pytest.importorskip("transformers")

ATOL = 1e-5
BACKENDS = ["eager", "sdpa", "triton"]
CONFIGS = {  # odd shapes: hidden 96 with 3 heads, 1 and 3 layers, vocab 1000
    "1layer": dict(num_hidden_layers=1),
    "3layers": dict(num_hidden_layers=3),
}


def load_pair(arch, cls, tmp_path, backend, seed=0, **overrides):
    theirs = random_hf_model(arch, seed=seed, **overrides)
    theirs.save_pretrained(tmp_path)
    ours = cls.from_pretrained(str(tmp_path), attention=backend).eval()
    return ours, theirs


def real(x, mask):
    """Only real-token positions: the triton backend zeroes the (unused) padded query rows."""
    return x[mask.bool()]


def assert_close(a, b, mask=None, atol=ATOL):
    if mask is not None:
        a, b = real(a, mask), real(b, mask)
    diff = (a - b).abs().max().item()
    assert diff <= atol, f"max abs diff {diff:.3g} > {atol}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", CONFIGS)
def test_masked_lm_matches_transformers(backend, shape, tmp_path):
    ours, theirs = load_pair("RobertaForMaskedLM", RobertaForMaskedLM, tmp_path, backend, **CONFIGS[shape])
    ids, mask = padded_batch()
    labels = torch.full_like(ids, -100)
    labels[0, 1], labels[0, 5], labels[1, 2], labels[2, 1] = 17, 400, 999, 4
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, output_hidden_states=True)
        b = theirs(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        a_loss = ours(ids, attention_mask=mask, labels=labels)
        b_loss = theirs(input_ids=ids, attention_mask=mask, labels=labels)
    # the padded positions are compared too, except where the triton backend zeroes them
    pad_mask = mask if backend == "triton" else None
    assert len(a.hidden_states) == len(b.hidden_states) == CONFIGS[shape]["num_hidden_layers"] + 1
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        assert_close(x, y, pad_mask)
    assert_close(a.last_hidden_state, b.hidden_states[-1], pad_mask)
    assert_close(a.logits, b.logits, pad_mask)
    assert abs(a_loss.loss.item() - b_loss.loss.item()) <= ATOL
    # the masked-only head returns the logits of the labelled positions, in row-major order
    assert_close(a_loss.logits, b.logits[labels != -100])


@pytest.mark.parametrize("backend", BACKENDS)
def test_bare_model_matches_transformers(backend, tmp_path):
    theirs = random_hf_model("RobertaModel", num_hidden_layers=2)
    theirs.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="pooler"):  # BERT's pooler: RoBERTa does not use it
        ours = RobertaModel.from_pretrained(str(tmp_path), attention=backend).eval()
    ids, mask = padded_batch(lengths=(5, 9, 2, 9))
    with torch.no_grad():
        a = ours(ids, attention_mask=mask).last_hidden_state
        b = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
    assert a.shape == (4, 9, 96)
    assert_close(a, b, mask if backend == "triton" else None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "problem,num_labels,make_labels",
    [
        ("single_label_classification", 3, lambda g: torch.randint(0, 3, (3,), generator=g)),
        ("multi_label_classification", 4, lambda g: torch.randint(0, 2, (3, 4), generator=g).float()),
        ("regression", 1, lambda g: torch.randn(3, generator=g)),
    ],
)
def test_sequence_classification_matches_transformers(backend, problem, num_labels, make_labels, tmp_path):
    ours, theirs = load_pair(
        "RobertaForSequenceClassification",
        RobertaForSequenceClassification,
        tmp_path,
        backend,
        num_labels=num_labels,
        problem_type=problem,
        num_hidden_layers=2,
    )
    assert ours.config.problem_type == problem and ours.config.num_labels == num_labels
    ids, mask = padded_batch()
    labels = make_labels(torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, labels=labels)
        b = theirs(input_ids=ids, attention_mask=mask, labels=labels)
    assert_close(a.logits, b.logits)
    assert abs(a.loss.item() - b.loss.item()) <= ATOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_classification_matches_transformers(backend, tmp_path):
    ours, theirs = load_pair(
        "RobertaForTokenClassification",
        RobertaForTokenClassification,
        tmp_path,
        backend,
        num_labels=5,
        num_hidden_layers=2,
    )
    ids, mask = padded_batch()
    labels = torch.randint(0, 5, ids.shape, generator=torch.Generator().manual_seed(2))
    labels[mask == 0] = -100
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, labels=labels)
        b = theirs(input_ids=ids, attention_mask=mask, labels=labels)
    assert_close(a.logits, b.logits, mask if backend == "triton" else None)
    assert abs(a.loss.item() - b.loss.item()) <= ATOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_question_answering_matches_transformers(backend, tmp_path):
    ours, theirs = load_pair(
        "RobertaForQuestionAnswering", RobertaForQuestionAnswering, tmp_path, backend, num_hidden_layers=2
    )
    ids, mask = padded_batch()
    start = torch.tensor([3, 1, 50])  # 50 lies past the sequence: clamped and ignored, as in the original
    end = torch.tensor([5, 4, 50])
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, start_positions=start, end_positions=end)
        b = theirs(input_ids=ids, attention_mask=mask, start_positions=start, end_positions=end)
    pad = mask if backend == "triton" else None
    assert_close(a.start_logits, b.start_logits, pad)
    assert_close(a.end_logits, b.end_logits, pad)
    if backend != "triton":  # the loss's softmax spans the padded positions, whose rows triton zeroes
        assert abs(a.loss.item() - b.loss.item()) <= ATOL


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_gradients_match_transformers(backend, tmp_path):
    """Training mode with dropout off: every parameter's gradient matches (qkv against q;k;v)."""
    ours, theirs = load_pair(
        "RobertaForMaskedLM",
        RobertaForMaskedLM,
        tmp_path,
        backend,
        num_hidden_layers=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    ours.train(), theirs.train()
    ids, mask = padded_batch()
    labels = torch.where(torch.rand(ids.shape, generator=torch.Generator().manual_seed(3)) < 0.4, ids, -100)
    labels[mask == 0] = -100
    ours(ids, attention_mask=mask, labels=labels).loss.backward()
    theirs(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    from roberta_scratch.checkpoints.keymaps import ours_to_hf

    ours_grads = ours_to_hf({k: p.grad for k, p in ours.named_parameters()}, 2)
    theirs_grads = {k: p.grad for k, p in theirs.named_parameters()}
    assert set(ours_grads) <= set(theirs_grads)
    for k, g in ours_grads.items():
        assert_close(g, theirs_grads[k], atol=5e-5)


def test_attention_probabilities_match_transformers(tmp_path):
    ours, theirs = load_pair("RobertaForMaskedLM", RobertaForMaskedLM, tmp_path, "eager", num_hidden_layers=2)
    ids, mask = padded_batch()
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, output_attentions=True).attentions
        b = theirs(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    assert len(a) == len(b) == 2 and a[0].shape == (3, 3, 11, 11)
    for x, y in zip(a, b, strict=True):
        assert_close(x, y)
    assert torch.allclose(a[0].sum(-1), torch.ones(3, 3, 11))
    assert (a[1][2, :, :, 3:] == 0).all()  # nothing attends to padding


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_attention_probabilities_need_the_eager_backend(backend):
    from roberta_scratch import RobertaConfig

    model = RobertaModel(
        RobertaConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            attention=backend,
        )
    )
    with pytest.raises(ValueError, match="only available with attention='eager'"):
        model(torch.tensor([[0, 5, 2]]), output_attentions=True)
