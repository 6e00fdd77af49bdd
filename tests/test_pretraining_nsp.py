"""BERT's pretraining baseline that RoBERTa's ablations remove: token types, RobertaForPreTraining
(MLM + next-sentence prediction), the collator on pair examples, and BERT's static copies."""

import json
import math
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import padded_batch, random_hf_model

from roberta_scratch import (
    DynamicMaskingCollator,
    RobertaForMaskedLM,
    RobertaForPreTraining,
    RobertaForSequenceClassification,
    RobertaModel,
)
from roberta_scratch.checkpoints.formats import read_checkpoint, save_hf
from roberta_scratch.checkpoints.keymaps import hf_to_ours
from roberta_scratch.data.masking import StaticCopies
from roberta_scratch.model import check_state_dict, load_state


def pair_batch(seed=0):
    """Three `<s> A </s></s> B </s>` rows (one padded), their token types, MLM labels and NSP labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 1000, (3, 12), generator=g)
    types = torch.zeros_like(ids)
    for row, (a, n) in enumerate([(5, 12), (3, 9), (6, 12)]):
        ids[row, 0], ids[row, a], ids[row, a + 1], ids[row, n - 1] = 0, 2, 2, 2
        types[row, a + 1 : n] = 1
        ids[row, n:] = 1
    mask = ids.ne(1).long()
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    labels[0, 8] = ids[0, 8]
    return ids, mask, types, labels, torch.tensor([0, 1, 1])


# ----------------------------------------------------------------------------- token types


def test_no_token_types_is_type_zero_everywhere_bit_for_bit(tiny):
    torch.manual_seed(0)
    model = RobertaModel(tiny(type_vocab_size=2)).eval()
    with torch.no_grad():
        model.embeddings.token_type_embeddings.weight.normal_()  # two distinct rows
    ids, mask = padded_batch()
    a = model(ids, attention_mask=mask).last_hidden_state
    b = model(ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
    c = model(ids, attention_mask=mask, token_type_ids=torch.ones_like(ids)).last_hidden_state
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_token_types_match_transformers(tiny):
    hf = random_hf_model("RobertaForMaskedLM", type_vocab_size=2)
    ours = RobertaForMaskedLM(tiny(type_vocab_size=2, num_hidden_layers=3, attention="eager")).eval()
    load_state(ours, hf_to_ours(hf.state_dict(), 3))
    ids, mask, types, _, _ = pair_batch()
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, token_type_ids=types).logits
        b = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_bad_token_types_are_value_errors(tiny):
    model = RobertaModel(tiny(type_vocab_size=2))
    ids = torch.full((2, 5), 7)
    with pytest.raises(ValueError, match="token type id 2 is out of range for type_vocab_size 2"):
        model(ids, token_type_ids=torch.full((2, 5), 2))
    with pytest.raises(ValueError, match="token type id -1 is out of range"):
        model(ids, token_type_ids=torch.full((2, 5), -1))
    with pytest.raises(ValueError, match=r"token_type_ids must be .* shape \(batch, seq_len\) = \(2, 5\)"):
        model(ids, token_type_ids=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="the pair formats need a config with type_vocab_size=2"):
        RobertaModel(tiny(type_vocab_size=1))(ids, token_type_ids=torch.ones_like(ids))


# ----------------------------------------------------------------------------- RobertaForPreTraining


def test_loss_is_mlm_plus_nsp_computed_independently(tiny):
    torch.manual_seed(0)
    model = RobertaForPreTraining(tiny(type_vocab_size=2)).eval()
    ids, mask, types, labels, nsp = pair_batch()
    out = model(ids, attention_mask=mask, token_type_ids=types, labels=labels, next_sentence_label=nsp)

    # by hand: the encoder, the MLM head over the whole vocabulary, BERT's pooler on <s>
    h = model.roberta(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    dense = model.lm_head.dense
    x = F.layer_norm(
        F.gelu(h @ dense.weight.T + dense.bias), (96,), model.lm_head.norm.weight, model.lm_head.norm.bias, eps=1e-5
    )
    full_logits = x @ model.roberta.embeddings.word_embeddings.weight.T + model.lm_head.bias  # (B, T, V)
    mlm = F.cross_entropy(full_logits.view(-1, 1000), labels.view(-1), ignore_index=-100)
    pooled = torch.tanh(h[:, 0] @ model.nsp.pooler.weight.T + model.nsp.pooler.bias)
    nsp_logits = pooled @ model.nsp.classifier.weight.T + model.nsp.classifier.bias
    nsp_loss = F.cross_entropy(nsp_logits, nsp)

    torch.testing.assert_close(out.mlm_loss, mlm, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.nsp_loss, nsp_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, mlm + nsp_loss, rtol=1e-5, atol=1e-6)
    assert out.loss.item() == (out.mlm_loss + out.nsp_loss).item()
    assert out.nsp_logits.shape == (3, 2) and out.logits.shape == (4, 1000)  # the 4 labelled positions
    torch.testing.assert_close(out.logits, full_logits[labels != -100], rtol=1e-5, atol=1e-5)

    only_mlm = model(ids, attention_mask=mask, token_type_ids=types, labels=labels)
    only_nsp = model(ids, attention_mask=mask, token_type_ids=types, next_sentence_label=nsp)
    assert torch.equal(only_mlm.loss, out.mlm_loss) and only_mlm.nsp_loss is None
    assert torch.equal(only_nsp.loss, out.nsp_loss) and only_nsp.mlm_loss is None
    assert only_nsp.logits.shape == (3, 12, 1000)  # no labels: logits everywhere, as RobertaForMaskedLM
    assert model(ids, attention_mask=mask, token_type_ids=types).loss is None
    with pytest.raises(ValueError, match="label 2 is out of range"):
        model(ids, attention_mask=mask, token_type_ids=types, next_sentence_label=torch.tensor([0, 2, 1]))


def test_save_load_round_trip_and_encoder_loads_into_other_heads(tiny, tmp_path):
    torch.manual_seed(0)
    model = RobertaForPreTraining(tiny(type_vocab_size=2)).eval()
    model.save_pretrained(str(tmp_path))
    loaded = RobertaForPreTraining.from_pretrained(str(tmp_path)).eval()
    assert loaded.config == model.config
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert list(sd) == list(sd2) and all(torch.equal(sd[k], sd2[k]) for k in sd)
    ids, mask, types, labels, nsp = pair_batch()
    with torch.no_grad():
        a = model(ids, attention_mask=mask, token_type_ids=types, labels=labels, next_sentence_label=nsp)
        b = loaded(ids, attention_mask=mask, token_type_ids=types, labels=labels, next_sentence_label=nsp)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.nsp_logits, b.nsp_logits)

    with pytest.warns(UserWarning) as record:
        cls = RobertaForSequenceClassification.from_pretrained(str(tmp_path), num_labels=3)
    text = " ".join(str(w.message) for w in record)
    assert "classifier.dense.weight" in text and "newly initialised" in text
    assert "nsp.pooler.weight" in text and "not used" in text
    encoder = {k: v for k, v in sd.items() if k.startswith("roberta.")}
    assert all(torch.equal(cls.state_dict()[k], v) for k, v in encoder.items()) and len(encoder) > 10

    with pytest.warns(UserWarning, match="nsp.classifier.weight"):
        mlm = RobertaForMaskedLM.from_pretrained(str(tmp_path)).eval()
    assert all(torch.equal(mlm.state_dict()[k], v) for k, v in sd.items() if not k.startswith("nsp."))
    with torch.no_grad():
        c = mlm(ids, attention_mask=mask, token_type_ids=types, labels=labels)
    assert torch.equal(c.logits, a.logits) and torch.equal(c.loss, a.mlm_loss)

    # and the other way: an MLM checkpoint gives a pretraining model with a fresh NSP head
    mlm.save_pretrained(str(tmp_path / "mlm"))
    with pytest.warns(UserWarning, match="nsp.pooler.weight.*newly initialised"):
        RobertaForPreTraining.from_pretrained(str(tmp_path / "mlm"))


def test_checkpoint_validation_and_hugging_face_export_drop_only_the_nsp_head(tiny, tmp_path):
    torch.manual_seed(0)
    model = RobertaForPreTraining(tiny(type_vocab_size=2))
    check_state_dict(model.config, model.state_dict())  # the NSP keys are known keys
    with pytest.warns(UserWarning, match=r"dropping \['nsp.classifier.bias'.*no Hugging Face RoBERTa class"):
        save_hf(model.config, model.state_dict(), str(tmp_path))
    cfg, sd = read_checkpoint(str(tmp_path))
    want = {k: v for k, v in model.state_dict().items() if not k.startswith("nsp.")}
    assert sorted(sd) == sorted(want) and all(torch.equal(sd[k], want[k]) for k in want)
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.RobertaForMaskedLM.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    ids, mask, types, labels, _ = pair_batch()
    with torch.no_grad():
        ours = model.eval()(ids, attention_mask=mask, token_type_ids=types).logits
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- the collator on pair examples


def collator(**kw):
    return DynamicMaskingCollator(1000, 999, 1, [0, 1, 2, 3, 999], **kw)


def test_collator_pads_token_types_and_stacks_nsp_labels():
    examples = [
        {
            "input_ids": torch.tensor([0, 5, 6, 2, 2, 7, 2]),
            "token_type_ids": torch.tensor([0, 0, 0, 0, 1, 1, 1]),
            "next_sentence_label": 1,
        },
        {
            "input_ids": torch.tensor([0, 8, 2, 2, 9, 2]),
            "token_type_ids": torch.tensor([0, 0, 0, 1, 1, 1]),
            "next_sentence_label": 0,
        },
    ]
    out = collator(generator=torch.Generator().manual_seed(0))(examples)
    assert sorted(out) == ["attention_mask", "input_ids", "labels", "next_sentence_label", "token_type_ids"]
    assert out["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1, 0]]  # padding: type 0
    assert out["next_sentence_label"].tolist() == [1, 0] and out["next_sentence_label"].dtype == torch.long
    assert out["attention_mask"].tolist() == [[1] * 7, [1] * 6 + [0]]
    # dicts holding only input_ids collate exactly as the plain list does
    rows = [torch.randint(4, 999, (n,), generator=torch.Generator().manual_seed(n)) for n in (30, 17, 25)]
    plain = collator(generator=torch.Generator().manual_seed(3))(rows)
    dicts = collator(generator=torch.Generator().manual_seed(3))([{"input_ids": r} for r in rows])
    assert sorted(dicts) == sorted(plain) and all(torch.equal(plain[k], dicts[k]) for k in plain)


def test_collator_never_masks_the_specials_of_a_pair():
    g = torch.Generator().manual_seed(0)
    examples = []
    for _ in range(200):
        a, b = torch.randint(4, 999, (20,), generator=g), torch.randint(4, 999, (15,), generator=g)
        ids = torch.cat([torch.tensor([0]), a, torch.tensor([2, 2]), b, torch.tensor([2])])
        examples.append(
            {"input_ids": ids, "token_type_ids": (torch.arange(len(ids)) > 21).long(), "next_sentence_label": 0}
        )
    out = collator(generator=g)(examples)
    special = torch.isin(torch.stack([e["input_ids"] for e in examples]), torch.tensor([0, 1, 2, 3, 999]))
    assert not ((out["labels"] != -100) & special).any()
    assert (out["input_ids"][special] == torch.stack([e["input_ids"] for e in examples])[special]).all()
    assert abs((out["labels"] != -100).float().sum().item() / (~special).sum().item() - 0.15) < 0.02


def test_collator_rejects_malformed_dicts():
    with pytest.raises(ValueError, match="example dicts need 'input_ids'"):
        collator()([{"ids": torch.tensor([0, 5, 2])}])
    with pytest.raises(ValueError, match="token_type_ids has 2 entries for 3 input_ids"):
        collator()([{"input_ids": torch.tensor([0, 5, 2]), "token_type_ids": torch.tensor([0, 0])}])
    with pytest.raises(ValueError, match="same keys"):
        collator()(
            [{"input_ids": torch.tensor([0, 5, 2])}, {"input_ids": torch.tensor([0, 5, 2]), "next_sentence_label": 0}]
        )
    with pytest.raises(ValueError, match="pass static=True"):
        collator()([{"input_ids": torch.tensor([0, 5, 2]), "mask_copy": 1}])


# ----------------------------------------------------------------------------- static masking, BERT's way


def masks_seen(collate, dataset, epochs, seed=0):
    """{example index: set of (masked input ids) it was fed with}, over `epochs` shuffled epochs of
    `dataset` (a StaticCopies or a plain list), batched by 4 as a trainer would."""
    n = len(dataset.dataset) if isinstance(dataset, StaticCopies) else len(dataset)
    seen = {i: set() for i in range(n)}
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(dataset), generator=g).tolist()
        for start in range(0, len(order), 4):
            js = order[start : start + 4]
            out = collate([dataset[j] for j in js])
            for row, j in enumerate(js):
                n_real = int(out["attention_mask"][row].sum())
                seen[j % n].add(tuple(out["input_ids"][row, :n_real].tolist()))
    return seen


ROWS = [
    torch.cat(
        [torch.tensor([0]), torch.randint(4, 999, (n,), generator=torch.Generator().manual_seed(n)), torch.tensor([2])]
    )
    for n in range(30, 42)
]


def test_one_static_copy_is_one_fixed_mask_on_every_epoch():
    seen = masks_seen(collator(static=True, static_seed=0), StaticCopies(ROWS, 1), epochs=5)
    assert all(len(masks) == 1 for masks in seen.values())
    # and it is the mask of today's static=True on plain sequences
    plain = masks_seen(collator(static=True, static_seed=0), ROWS, epochs=1)
    assert seen == plain


@pytest.mark.parametrize("k", [2, 4])
def test_k_static_copies_cycle_through_exactly_k_masks(k):
    collate = collator(static=True, static_seed=7)
    copies = StaticCopies(ROWS, k)
    assert len(copies) == k * len(ROWS)
    seen = masks_seen(collate, copies, epochs=3)
    # each example shows exactly its k masks, none other, whatever the batch it lands in
    expected = {
        i: {tuple(collate([copies[c * len(ROWS) + i]])["input_ids"][0].tolist()) for c in range(k)}
        for i in range(len(ROWS))
    }
    assert seen == expected and all(len(m) == k for m in seen.values())
    # another run seed gives other masks; copy c of seed s is not copy c - 1 of seed s + 1
    other = collator(static=True, static_seed=8)
    assert all(tuple(other([copies[i]])["input_ids"][0].tolist()) not in expected[i] for i in range(len(ROWS)))


def test_dynamic_masking_differs_across_epochs():
    seen = masks_seen(collator(generator=torch.Generator().manual_seed(0)), ROWS, epochs=4)
    assert all(len(masks) == 4 for masks in seen.values())


# ----------------------------------------------------------------------------- the trainer: pair formats, static copies


def run_and_resume(prepared, tmp_path, **overrides):
    """An 8-step run, and the same run killed after step 4 and resumed: both metrics rows and final weights."""
    from pretraining_helpers import args_for

    from roberta_scratch.pretrain import pretrain

    assert pretrain(args_for(prepared, tmp_path / "straight", **overrides)) == 0
    assert pretrain(args_for(prepared, tmp_path / "split", **overrides)) == 0
    ckpt = tmp_path / "split" / "ckpt"
    for name in os.listdir(ckpt):
        if name != "step_00000004.pt":
            os.remove(ckpt / name)
    assert pretrain(args_for(prepared, tmp_path / "split", resume=True, **overrides)) == 0
    rows = {}
    for run in ("straight", "split"):
        with open(tmp_path / run / "metrics.jsonl") as f:
            rows[run] = [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"} for line in f]
        state = torch.load(tmp_path / run / "ckpt" / "step_00000008.pt", weights_only=True)["model"]
        rows[run + "_model"] = state
    a, b = rows["straight_model"], rows["split_model"]
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert rows["straight"] == rows["split"]
    return rows["straight"]


@pytest.mark.parametrize("packing", ["segment-pair", "sentence-pair"])
def test_pair_formats_train_log_nsp_and_resume_exactly(prepared, prepared_sentences, tmp_path, packing):
    rows = run_and_resume(prepared, tmp_path, data=prepared_sentences, packing=packing)
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "val_loss" in r]
    assert len(train) == 8 and len(evals) == 3  # at the start, step 4 and step 8
    for r in train:
        assert r["loss"] == pytest.approx(r["mlm_loss"] + r["nsp_loss"], rel=1e-6)
        assert 0.3 < r["nsp_loss"] < 1.2  # about ln 2 this early
    assert all(0 <= r["val_nsp_acc"] <= 1 and r["val_pairs"] > 0 and "val_ppl" in r for r in evals)
    # the pair arm is scored in its own format too (held-out pairs), beside the common FULL-SENTENCES blocks
    assert all(r["val_pair_ppl"] == pytest.approx(math.exp(r["val_pair_loss"])) for r in evals)
    assert all(0 <= r["val_pair_acc"] <= 1 and r["val_pair_loss"] != r["val_loss"] for r in evals)
    assert all(0.3 < r["val_nsp_loss"] < 1.2 for r in evals)  # the NSP term alone, not MLM + NSP
    tokens = [r["tokens"] for r in rows]
    assert tokens == sorted(tokens) and tokens[0] == 0 and tokens[-1] > 0
    model = RobertaForPreTraining.from_pretrained(str(tmp_path / "straight" / "model"))
    assert model.config.type_vocab_size == 2


def test_pair_formats_need_sentence_boundaries(prepared, tmp_path):
    from pretraining_helpers import args_for

    from roberta_scratch.errors import TrainingError
    from roberta_scratch.pretrain import pretrain

    with pytest.raises(TrainingError, match=r"needs sentence boundaries.*prepare --sentences"):
        pretrain(args_for(prepared, tmp_path, packing="segment-pair"))


def test_every_run_is_scored_on_the_same_held_out_blocks(prepared, prepared_sentences, tmp_path):
    from pretraining_helpers import args_for

    from roberta_scratch.pretrain import Trainer

    def held_out(**overrides):
        """The held-out set as one (N, T) batch per key, whatever the batch size."""
        trainer = Trainer(
            args_for(prepared, tmp_path / str(len(os.listdir(tmp_path))), data=prepared_sentences, **overrides)
        )
        batches = trainer.validation_batches()
        assert sorted(batches[0]) == ["attention_mask", "input_ids", "labels"]
        return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}

    reference = held_out()
    assert (reference["labels"] != -100).sum() > 10
    for other in (
        held_out(seed=5),
        held_out(packing="doc"),
        held_out(packing="segment-pair", seed=2),
        held_out(static_copies=3),
        held_out(batch_size=3, grad_accum=1),
        held_out(mlm_probability=0.4, eval_mlm_probability=0.15),
    ):
        assert all(torch.equal(reference[k], other[k]) for k in reference)
    assert not torch.equal(held_out(eval_seed=1)["labels"], reference["labels"])
    # training at another rate moves the held-out rate with it, unless --eval-mlm-probability fixes it
    assert (held_out(mlm_probability=0.4)["labels"] != -100).sum() > 2 * (reference["labels"] != -100).sum()


def test_static_copies_resume_exactly_and_one_copy_is_static_masking(prepared, tmp_path):
    from pretraining_helpers import args_for, losses

    from roberta_scratch.errors import TrainingError
    from roberta_scratch.pretrain import Trainer, pretrain

    run_and_resume(prepared, tmp_path / "k3", static_copies=3)
    trainer = Trainer(args_for(prepared, tmp_path / "t", static_copies=3))
    assert len(trainer.train_set) == 3 * len(trainer.train_set.dataset)
    assert pretrain(args_for(prepared, tmp_path / "one", static_copies=1, steps=4)) == 0
    assert pretrain(args_for(prepared, tmp_path / "flag", static_masking=True, steps=4)) == 0
    assert losses(tmp_path / "one") == losses(tmp_path / "flag")
    with pytest.raises(TrainingError, match="--static-masking is one fixed mask.*--static-copies is 4"):
        Trainer(args_for(prepared, tmp_path / "bad", static_masking=True, static_copies=4))
    with pytest.raises(TrainingError, match="--static-copies must be 0"):
        Trainer(args_for(prepared, tmp_path / "bad", static_copies=-1))
    with pytest.raises(TrainingError, match="static_copies"):
        pretrain(args_for(prepared, tmp_path / "k3" / "straight", static_copies=2, steps=10, resume=True))


def test_metrics_count_the_training_tokens(prepared, tmp_path):
    from pretraining_helpers import args_for

    from roberta_scratch.pretrain import Trainer, pretrain

    assert pretrain(args_for(prepared, tmp_path / "run", packing="doc")) == 0
    trainer = Trainer(args_for(prepared, tmp_path / "count", packing="doc"))
    expected = 0
    per_step = []
    for step in range(8):
        expected += sum(int(b["attention_mask"].sum()) for b in trainer.micro_batches(step))
        per_step.append(expected)
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["tokens"] for r in rows if "loss" in r] == per_step
    assert [r["tokens"] for r in rows if "val_loss" in r] == [0, per_step[3], per_step[7]]
