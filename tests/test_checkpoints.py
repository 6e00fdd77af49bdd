"""save_pretrained / from_pretrained, Hugging Face round trips, and every bad checkpoint."""

import json
import os

import pytest
import torch
from helpers import padded_batch, random_hf_model
from safetensors.torch import load_file, save_file

import checkpoints_convert
from roberta_scratch import (
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
)
from roberta_scratch.checkpoints import converter
from roberta_scratch.model import MODEL_CLASSES


@pytest.mark.parametrize("name", sorted(MODEL_CLASSES))
def test_save_load_round_trip_every_class(tiny, name, tmp_path):
    cls = MODEL_CLASSES[name]
    torch.manual_seed(0)
    model = cls(tiny(num_labels=3)).eval()
    model.save_pretrained(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    loaded = cls.from_pretrained(str(tmp_path)).eval()
    assert loaded.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    ids, mask = padded_batch()
    with torch.no_grad():
        a, b = model(ids, attention_mask=mask), loaded(ids, attention_mask=mask)
    for field in ("logits", "start_logits", "last_hidden_state"):
        if getattr(a, field) is not None:
            assert torch.equal(getattr(a, field), getattr(b, field))


def test_seeded_init_is_reproducible_and_padding_rows_are_zero(tiny):
    torch.manual_seed(123)
    a = RobertaForMaskedLM(tiny())
    torch.manual_seed(123)
    b = RobertaForMaskedLM(tiny())
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), k
    emb = a.roberta.embeddings
    assert torch.count_nonzero(emb.word_embeddings.weight[1]) == 0
    assert torch.count_nonzero(emb.position_embeddings.weight[1]) == 0
    w = a.roberta.layers[0].ffn.fc1.weight
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002
    assert torch.all(a.lm_head.bias == 0) and torch.all(a.roberta.layers[0].attn_norm.weight == 1)


def test_classifier_on_mlm_checkpoint_is_fresh_with_a_warning(tiny, tmp_path):
    RobertaForMaskedLM(tiny()).save_pretrained(str(tmp_path))
    with pytest.warns(UserWarning) as record:
        model = RobertaForSequenceClassification.from_pretrained(str(tmp_path), num_labels=4)
    text = " ".join(str(w.message) for w in record)
    assert "classifier.dense.weight" in text and "newly initialised" in text  # the fresh head, by name
    assert "lm_head.dense.weight" in text and "not used" in text  # the head it ignored, by name
    assert model.classifier.out_proj.weight.shape == (4, 96)


def test_bare_model_loads_any_head_checkpoint_and_heads_load_a_bare_one(tiny, tmp_path):
    mlm = RobertaForMaskedLM(tiny()).eval()
    mlm.save_pretrained(str(tmp_path / "mlm"))
    with pytest.warns(UserWarning, match="lm_head"):
        bare = RobertaModel.from_pretrained(str(tmp_path / "mlm")).eval()
    ids, mask = padded_batch()
    with torch.no_grad():
        assert torch.equal(bare(ids, mask).last_hidden_state, mlm(ids, mask).last_hidden_state)
    bare.save_pretrained(str(tmp_path / "bare"))
    with pytest.warns(UserWarning, match="qa_outputs.weight"):
        qa = RobertaForQuestionAnswering.from_pretrained(str(tmp_path / "bare"))
    assert torch.equal(qa.roberta.layers[1].attn.qkv.weight, mlm.roberta.layers[1].attn.qkv.weight)


def _edit_checkpoint(path, edit):
    sd = load_file(os.path.join(path, "model.safetensors"))
    edit(sd)
    save_file(sd, os.path.join(path, "model.safetensors"))


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda sd: sd.pop("roberta.layers.1.ffn.fc2.weight"), r"missing keys: \['roberta.layers.1.ffn.fc2.weight'\]"),
        (
            lambda sd: sd.update({"roberta.layers.2.attn.qkv.weight": torch.zeros(3)}),
            r"unexpected keys: \['roberta.layers.2.attn.qkv.weight'\]",
        ),
        (
            lambda sd: sd.update({"roberta.layers.0.attn.proj.bias": torch.zeros(95)}),
            r"mis-shaped keys: \['roberta.layers.0.attn.proj.bias: checkpoint \(95,\) vs model \(96,\)'\]",
        ),
        (lambda sd: sd.update({"lm_head.bias": torch.zeros(999)}), r"lm_head.bias: checkpoint \(999,\)"),
    ],
)
def test_bad_checkpoints_name_the_key(tiny, edit, message, tmp_path):
    RobertaForMaskedLM(tiny()).save_pretrained(str(tmp_path))
    _edit_checkpoint(str(tmp_path), edit)
    with pytest.raises(ValueError, match=message):
        RobertaForMaskedLM.from_pretrained(str(tmp_path))


def test_missing_files_are_clear_errors(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        RobertaForMaskedLM.from_pretrained(str(tmp_path))
    tiny().save(str(tmp_path / "config.json"))
    with pytest.raises(FileNotFoundError, match="model.safetensors or pytorch_model.bin"):
        RobertaForMaskedLM.from_pretrained(str(tmp_path))


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("filename", ["pytorch_model.bin", "model.pt"])
def test_pickle_carrying_code_is_refused_and_never_runs(tiny, filename, tmp_path):
    marker = tmp_path / "pwned"
    if filename == "pytorch_model.bin":
        tiny().save(str(tmp_path / "config.json"))
    torch.save(
        {"model": {"embeddings.word_embeddings.weight": torch.zeros(2)}, "evil": _Payload(str(marker))},
        tmp_path / filename,
    )
    with pytest.raises(ValueError, match=f"refusing to load .*{filename}"):
        RobertaForMaskedLM.from_pretrained(str(tmp_path))
    assert not marker.exists()


def test_hf_pytorch_model_bin_loads_with_weights_only(tmp_path):
    theirs = random_hf_model("RobertaForMaskedLM", num_hidden_layers=1)
    torch.save(theirs.state_dict(), tmp_path / "pytorch_model.bin")
    with open(tmp_path / "config.json", "w") as f:
        json.dump(theirs.config.to_dict(), f)
    ours = RobertaForMaskedLM.from_pretrained(str(tmp_path), attention="eager").eval()
    ids, mask = padded_batch()
    with torch.no_grad():
        diff = (ours(ids, mask).logits - theirs(input_ids=ids, attention_mask=mask).logits).abs().max()
    assert diff <= 1e-5


@pytest.mark.parametrize(
    "arch",
    [
        "RobertaForMaskedLM",
        "RobertaForSequenceClassification",
        "RobertaForTokenClassification",
        "RobertaForQuestionAnswering",
    ],
)
def test_ours_to_hf_to_ours_is_bit_identical_and_transformers_loads_it(tiny, arch, tmp_path):
    cls = MODEL_CLASSES[arch]
    torch.manual_seed(1)
    ours = cls(tiny(num_labels=3, label_names=["neg", "neu", "pos"])).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.2)
    ours.save_pretrained(str(tmp_path / "ours"))
    assert checkpoints_convert.main([str(tmp_path / "ours"), str(tmp_path / "hf"), "--to", "hf", "--verify"]) == 0
    assert checkpoints_convert.main([str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    a = load_file(tmp_path / "ours" / "model.safetensors")
    b = load_file(tmp_path / "back" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if arch != "RobertaForQuestionAnswering":  # its HF config carries 2 labels, for start and end
        assert RobertaConfig.load(str(tmp_path / "back")) == ours.config

    import transformers

    theirs = getattr(transformers, arch).from_pretrained(str(tmp_path / "hf")).eval()
    ids, mask = padded_batch()
    with torch.no_grad():
        x, y = ours(ids, attention_mask=mask), theirs(input_ids=ids, attention_mask=mask)
    name = "start_logits" if arch.endswith("Answering") else "logits"
    assert (getattr(x, name) - getattr(y, name)).abs().max() <= 1e-5
    if arch == "RobertaForSequenceClassification":
        assert theirs.config.id2label == {0: "neg", 1: "neu", 2: "pos"}


def test_verify_fails_loudly_when_weights_disagree(tiny, tmp_path, monkeypatch, capsys):
    RobertaForMaskedLM(tiny()).save_pretrained(str(tmp_path / "ours"))
    real = converter.save_hf

    def corrupt(cfg, sd, path):  # what transformers sees differs from what we run
        sd = dict(sd)
        sd["roberta.layers.0.ffn.fc1.bias"] = sd["roberta.layers.0.ffn.fc1.bias"] + 1.0
        real(cfg, sd, path)

    monkeypatch.setattr(converter, "save_hf", corrupt)
    assert checkpoints_convert.main([str(tmp_path / "ours"), str(tmp_path / "out"), "--verify"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_convert_cli_reports_bad_source(tmp_path, capsys):
    assert checkpoints_convert.main([str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert "neither a model directory nor a fairseq .pt file" in capsys.readouterr().err


def test_head_classes_accept_num_labels(tiny):
    assert RobertaForTokenClassification(tiny(), num_labels=7).classifier.out_features == 7
    assert RobertaForSequenceClassification(tiny(), 5).config.num_labels == 5


def test_a_head_for_another_label_count_is_an_error_unless_reinitialised(tiny, tmp_path):
    torch.manual_seed(0)
    old = RobertaForSequenceClassification(tiny(), num_labels=3)
    old.save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match=r"classifier.out_proj.weight: checkpoint \(3, 96\) vs model \(5, 96\)"):
        RobertaForSequenceClassification.from_pretrained(str(tmp_path), num_labels=5)
    with pytest.warns(
        UserWarning,
        match=r"of another shape are newly initialised: \['classifier.out_proj.bias: "
        r"checkpoint \(3,\) vs model \(5,\)', 'classifier.out_proj.weight",
    ):
        new = RobertaForSequenceClassification.from_pretrained(
            str(tmp_path), num_labels=5, reinit_mismatched_heads=True
        )
    assert new.classifier.out_proj.weight.shape == (5, 96)
    assert torch.equal(new.classifier.dense.weight, old.classifier.dense.weight)  # the rest of the head is kept
    assert torch.equal(new.roberta.layers[1].ffn.fc1.weight, old.roberta.layers[1].ffn.fc1.weight)


def test_sharded_hf_checkpoint_loads(tmp_path):
    theirs = random_hf_model("RobertaForMaskedLM", num_hidden_layers=2)
    theirs.save_pretrained(str(tmp_path), max_shard_size="200KB")
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    ours = RobertaForMaskedLM.from_pretrained(str(tmp_path), attention="eager").eval()
    ids, mask = padded_batch()
    with torch.no_grad():
        diff = (ours(ids, mask).logits - theirs(input_ids=ids, attention_mask=mask).logits).abs().max()
    assert diff <= 1e-5
