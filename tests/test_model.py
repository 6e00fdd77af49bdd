"""The model's own contracts: positions, masked-only MLM head, backends, config, bad input."""

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import padded_batch

from roberta_scratch import (
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
)
from roberta_scratch.model import MODEL_CLASSES


def test_position_ids_count_real_tokens_from_padding_idx_plus_one(tiny):
    model = RobertaModel(tiny()).eval()
    seen = {}
    model.embeddings.position_embeddings.register_forward_hook(lambda m, args, out: seen.update(pos=args[0]))
    ids = torch.tensor([[0, 5, 6, 2, 1, 1], [0, 7, 2, 1, 1, 1]])
    model(ids)
    assert seen["pos"].tolist() == [[2, 3, 4, 5, 1, 1], [2, 3, 4, 1, 1, 1]]


def test_padding_does_not_change_real_tokens(tiny):
    """A sequence gives the same hidden states alone or padded in a batch (every backend)."""
    for backend in ("eager", "sdpa", "triton"):
        torch.manual_seed(0)
        model = RobertaModel(tiny(attention=backend)).eval()
        ids, mask = padded_batch(lengths=(12, 5))
        with torch.no_grad():
            batched = model(ids, attention_mask=mask).last_hidden_state
            alone = model(ids[1:, :5]).last_hidden_state
        assert (batched[1, :5] - alone[0]).abs().max() < 1e-5, backend


def test_backends_agree_in_training_mode_without_dropout(tiny):
    cfg = tiny(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ids, mask = padded_batch()
    labels = torch.where(mask.bool(), ids, -100)
    grads = {}
    for backend in ("eager", "sdpa", "triton"):
        torch.manual_seed(0)
        model = RobertaForMaskedLM(cfg.replace(attention=backend)).train()
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        grads[backend] = [p.grad for p in model.parameters()]
    for backend in ("sdpa", "triton"):
        for a, b in zip(grads["eager"], grads[backend], strict=True):
            assert (a - b).abs().max() < 1e-5


def test_masked_only_head_equals_full_head(tiny):
    torch.manual_seed(0)
    model = RobertaForMaskedLM(tiny()).eval()
    ids, mask = padded_batch()
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 1], labels[1, 5] = 10, 20, 30
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits  # (B, T, V)
        masked = model(ids, attention_mask=mask, labels=labels)
    assert full.shape == (3, 11, 1000)
    assert masked.logits.shape == (3, 1000)
    torch.testing.assert_close(masked.logits, full[labels != -100], rtol=0, atol=1e-6)
    expected = F.cross_entropy(full.view(-1, 1000), labels.view(-1), ignore_index=-100)
    torch.testing.assert_close(masked.loss, expected, rtol=0, atol=1e-6)


def test_masked_only_head_skips_the_vocabulary_projection_elsewhere(tiny):
    model = RobertaForMaskedLM(tiny()).eval()
    rows = []
    model.lm_head.dense.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    ids, mask = padded_batch()
    labels = torch.full_like(ids, -100)
    labels[0, 2] = 5
    model(ids, attention_mask=mask, labels=labels)
    assert rows == [1]


def test_decoder_is_tied_to_word_embeddings(tiny):
    model = RobertaForMaskedLM(tiny())
    ids, mask = padded_batch()
    model(ids, mask, labels=torch.where(mask.bool(), ids, -100)).loss.backward()
    emb = model.roberta.embeddings.word_embeddings.weight
    assert not any(p is not emb and p.shape == emb.shape for p in model.parameters())
    assert emb.grad[ids[0, 3]].abs().sum() > 0


def test_output_hidden_states_returns_embeddings_and_every_layer(tiny):
    model = RobertaModel(tiny(num_hidden_layers=3)).eval()
    ids, mask = padded_batch()
    out = model(ids, mask, output_hidden_states=True)
    assert len(out.hidden_states) == 4
    assert out.hidden_states[-1] is out.last_hidden_state
    assert model(ids, mask).hidden_states is None


def test_dropout_is_seeded_and_off_in_eval(tiny):
    model = RobertaForMaskedLM(tiny(hidden_dropout_prob=0.3)).train()
    ids, mask = padded_batch()
    torch.manual_seed(5)
    a = model(ids, mask).logits
    torch.manual_seed(5)
    b = model(ids, mask).logits
    c = model(ids, mask).logits
    assert torch.equal(a, b) and not torch.equal(a, c)
    model.eval()
    assert torch.equal(model(ids, mask).logits, model(ids, mask).logits)


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("name", sorted(MODEL_CLASSES))
def test_out_of_range_ids_are_a_value_error(tiny, name):
    model = MODEL_CLASSES[name](tiny())
    for bad in (1000, -1):
        ids = torch.tensor([[0, 5, bad, 2]])
        with pytest.raises(ValueError, match=f"token id {bad} is out of range for vocab_size 1000"):
            model(ids)


def test_too_long_sequence_is_a_value_error(tiny):
    model = RobertaModel(tiny())  # 40 rows - padding_idx 1 - 1 = 38 tokens
    model(torch.full((1, 38), 5))
    with pytest.raises(ValueError, match="sequence length 39 is longer than the 38 positions"):
        model(torch.full((1, 39), 5))


@pytest.mark.parametrize("mask_shape", [(2, 6), (1, 7), (6,), (1, 1, 6)])
def test_wrong_mask_shape_is_a_value_error(tiny, mask_shape):
    model = RobertaModel(tiny())
    with pytest.raises(ValueError, match=r"attention_mask has shape .* expected \(batch, seq_len\) = \(1, 6\)"):
        model(torch.full((1, 6), 5), attention_mask=torch.ones(mask_shape))


def test_other_bad_inputs_are_value_errors(tiny):
    model = RobertaForMaskedLM(tiny())
    with pytest.raises(ValueError, match="an int64 or int32 tensor of shape"):
        model(torch.ones(1, 4))
    with pytest.raises(ValueError, match="an int64 or int32 tensor of shape"):
        model(torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match="no real tokens"):
        model(torch.full((2, 4), 5), attention_mask=torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="label 1000 is out of range"):
        model(torch.full((1, 4), 5), labels=torch.tensor([[-100, 1000, -100, -100]]))
    with pytest.raises(ValueError, match="labels have shape"):
        model(torch.full((1, 4), 5), labels=torch.tensor([[-100, 3]]))
    cls = RobertaForSequenceClassification(tiny(), num_labels=3)
    with pytest.raises(ValueError, match="label 3 is out of range"):
        cls(torch.full((2, 4), 5), labels=torch.tensor([0, 3]))
    tok = RobertaForTokenClassification(tiny(), num_labels=3)
    with pytest.raises(ValueError, match="labels have shape"):
        tok(torch.full((2, 4), 5), labels=torch.tensor([0, 1]))


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(hidden_size=100, num_attention_heads=3), "not divisible by num_attention_heads"),
        (dict(hidden_act="swish"), "hidden_act 'swish' is not one of"),
        (dict(attention="flash"), "unknown attention implementation 'flash': registered are eager, sdpa, triton"),
        (dict(attention="no_such_module:fn"), "cannot import 'no_such_module'"),
        (dict(hidden_dropout_prob=1.0), "hidden_dropout_prob must be in"),
        (dict(vocab_size=0), "vocab_size must be a positive int"),
        (dict(pad_token_id=60000), r"pad_token_id \(60000\) must be an id"),
        (dict(max_position_embeddings=2), "leaves no room for a real token"),
        (dict(num_labels=2, label_names=["a"]), "label_names has 1 names but num_labels is 2"),
    ],
)
def test_invalid_config_is_a_clear_error(kwargs, message):
    # a kernel name is resolved when the model is built: reading a config imports nothing
    with pytest.raises(ValueError, match=message):
        RobertaForMaskedLM(RobertaConfig.preset("tiny", **kwargs))


def test_presets_and_parameter_counts():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        RobertaConfig.preset("huge")
    with torch.device("meta"):
        assert RobertaForMaskedLM(RobertaConfig.preset("base")).num_parameters() == 124_697_433
        assert RobertaForMaskedLM(RobertaConfig.preset("large")).num_parameters() == 355_412_057
    assert RobertaConfig.preset("tiny", vocab_size=8000).vocab_size == 8000


def test_hf_config_round_trip(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = RobertaConfig.preset("small", num_labels=3, label_names=["a", "b", "c"], hidden_act="gelu_new")
    hf = transformers.RobertaConfig(**cfg.to_hf_dict())
    assert (hf.hidden_size, hf.num_labels, hf.id2label[2], hf.hidden_act) == (512, 3, "c", "gelu_new")
    path = tmp_path / "config.json"
    path.write_text(hf.to_json_string())
    assert RobertaConfig.load(str(path)) == cfg
    assert RobertaConfig.from_hf_dict(json.loads(hf.to_json_string()), attention="eager").attention == "eager"
    cfg.save(str(path))
    assert RobertaConfig.load(str(path)) == cfg


def test_hf_config_with_other_position_type_is_refused():
    with pytest.raises(ValueError, match="position_embedding_type 'relative_key'"):
        RobertaConfig.from_hf_dict({"model_type": "roberta", "position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        RobertaConfig.from_hf_dict({"model_type": "gpt2"})
