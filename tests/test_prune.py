"""Structured pruning (roberta_scratch/deploy/prune.py): the surgery is exact, the importance is
Michel et al.'s gradient, prunings compose, and `roberta-scratch prune` end to end, bad input
included; a pruned model's Hugging Face export."""

import csv
import json
import os
import shutil

import pytest
import torch
from helpers import padded_batch, tiny_model_folder
from safetensors.torch import load_file

from roberta_scratch import RobertaConfig, cli
from roberta_scratch.checkpoints import converter
from roberta_scratch.deploy.prune import (
    choose_layers,
    drop_layers,
    head_importance,
    head_masks,
    keep_top_heads,
    prune_heads,
    remove_least_important,
)
from roberta_scratch.finetune.predict import predict
from roberta_scratch.model import (
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
)


def random_model(cls, cfg, seed=0):
    """Every parameter random (LayerNorms and biases too), so a wrong slice cannot hide."""
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def zeroed(cfg, off: dict) -> list:
    """Head masks for the unpruned model: 0 for the heads `off` names ({layer: [heads]}), else 1."""
    masks = [torch.ones(cfg.num_attention_heads) for _ in range(cfg.num_hidden_layers)]
    for layer, heads in off.items():
        masks[layer][heads] = 0.0
    return masks


# ----------------------------------------------------------------------------- the surgery


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize(
    "cls, attention",
    [(RobertaForMaskedLM, a) for a in ("eager", "sdpa", "triton", "flex")]  # triton: its torch fallback on CPU
    + [(RobertaForSequenceClassification, "sdpa"), (RobertaModel, "eager")],
)
def test_pruned_model_equals_the_model_with_those_heads_masked(tiny, attention, cls):
    cfg = tiny(attention=attention)
    model = random_model(cls, cfg)
    pruned = prune_heads(model, {0: [1], 1: [0, 2]})
    assert pruned.config.pruned_heads == {0: [1], 1: [0, 2]}
    layers = pruned.roberta.layers if hasattr(pruned, "roberta") else pruned.layers
    assert layers[0].attn.qkv.weight.shape == (3 * 2 * 32, 96) and layers[0].attn.proj.weight.shape == (96, 64)
    assert layers[1].attn.qkv.weight.shape == (3 * 1 * 32, 96) and layers[1].attn.proj.weight.shape == (96, 32)
    ids, mask = padded_batch()
    with torch.no_grad(), head_masks(model, zeroed(cfg, {0: [1], 1: [0, 2]})):
        want = model(ids, attention_mask=mask)
    with torch.no_grad():
        got = pruned(ids, attention_mask=mask)
    name = "last_hidden_state" if cls is RobertaModel else "logits"
    assert (getattr(got, name) - getattr(want, name)).abs().max() <= 1e-6
    per_head = 3 * 32 * 96 + 3 * 32 + 96 * 32  # its q, k, v rows (weights and biases), its output columns
    assert pruned.num_parameters() == model.num_parameters() - 3 * per_head


def test_pruning_composes_with_an_earlier_pruning(tiny):
    model = random_model(RobertaForMaskedLM, tiny())
    once = prune_heads(model, {0: [0, 2]})
    twice = prune_heads(prune_heads(model, {0: [2]}), {0: [0]})  # position 0 is still head 0
    assert twice.config.pruned_heads == once.config.pruned_heads == {0: [0, 2]}
    a, b = once.state_dict(), twice.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # in the original numbering: after removing head 0, position 1 is head 2
    third = prune_heads(prune_heads(model, {1: [0]}), {1: [1]})
    assert third.config.pruned_heads == {1: [0, 2]}
    ids, mask = padded_batch()
    with torch.no_grad(), head_masks(model, zeroed(model.config, {1: [0, 2]})):
        want = model(ids, attention_mask=mask).logits
    with torch.no_grad():
        assert (third(ids, attention_mask=mask).logits - want).abs().max() <= 1e-6


def test_pruning_every_head_of_a_layer_is_refused(tiny):
    model = random_model(RobertaForMaskedLM, tiny())
    with pytest.raises(ValueError, match="every head of layer 1"):
        prune_heads(model, {1: [0, 1, 2]})
    with pytest.raises(ValueError, match="every head of layer 0"):
        prune_heads(prune_heads(model, {0: [0, 1]}), {0: [0]})
    with pytest.raises(ValueError, match="removes all 3 heads of layer 0"):
        tiny(pruned_heads={"0": [0, 1, 2]})


def test_dropping_layers_matches_a_model_built_from_those_layers(tiny):
    model = random_model(RobertaForSequenceClassification, tiny(num_hidden_layers=4))
    model = prune_heads(model, {2: [1], 3: [0]})
    small = drop_layers(model, [0, 2])
    assert small.config.num_hidden_layers == 2
    assert small.config.pruned_heads == {1: [1]}  # layer 2's pruning follows it to its new number

    built = RobertaForSequenceClassification(small.config).eval()
    built.roberta.embeddings.load_state_dict(model.roberta.embeddings.state_dict())
    built.roberta.layers[0].load_state_dict(model.roberta.layers[0].state_dict())
    built.roberta.layers[1].load_state_dict(model.roberta.layers[2].state_dict())
    built.classifier.load_state_dict(model.classifier.state_dict())
    ids, mask = padded_batch()
    with torch.no_grad():
        assert torch.equal(small(ids, attention_mask=mask).logits, built(ids, attention_mask=mask).logits)


def test_a_pruned_model_saves_and_loads(tiny, tmp_path):
    model = drop_layers(prune_heads(random_model(RobertaForMaskedLM, tiny(num_hidden_layers=3)), {2: [0, 1]}), [1, 2])
    model.save_pretrained(str(tmp_path))
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["pruned_heads"] == {"1": [0, 1]}
    back = RobertaForMaskedLM.from_pretrained(str(tmp_path)).eval()
    assert back.config == model.config and back.config.pruned_heads == {1: [0, 1]}
    ids, mask = padded_batch()
    with torch.no_grad():
        assert torch.equal(back(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)


# ----------------------------------------------------------------------------- importance


def labelled_batches(cls, vocab=1000):
    """Two padded batches with labels for `cls`: class labels, or tags with ignored positions."""
    g = torch.Generator().manual_seed(3)
    batches = []
    for B, T in ((3, 9), (2, 6)):
        ids = torch.randint(4, vocab, (B, T), generator=g)
        ids[0, T - 3 :] = 1  # padding
        if cls is RobertaForTokenClassification:
            labels = torch.randint(0, 2, (B, T), generator=g)
            labels[ids.eq(1)] = -100
            labels[1, :2] = -100
        else:
            labels = torch.randint(0, 2, (B,), generator=g)
        batches.append({"input_ids": ids, "attention_mask": ids.ne(1).long(), "labels": labels})
    return batches


@pytest.mark.parametrize("cls", [RobertaForSequenceClassification, RobertaForTokenClassification])
def test_importance_is_the_mean_of_every_examples_own_gradient(tiny, cls):
    """One backward pass per batch with a (B, n_head) mask == one example at a time, unpadded."""
    model = random_model(cls, tiny())
    batches = labelled_batches(cls)
    raw, normalised, n = head_importance(model, batches, show_progress=False)
    assert n == 5
    want = [torch.zeros(3, dtype=torch.float64) for _ in range(2)]
    for batch in batches:
        for b in range(batch["input_ids"].shape[0]):
            real = batch["attention_mask"][b].bool()
            ids = batch["input_ids"][b][real][None]
            labels = (
                batch["labels"][b][real][None] if cls is RobertaForTokenClassification else batch["labels"][b : b + 1]
            )
            masks = [torch.ones(3, requires_grad=True) for _ in range(2)]
            with head_masks(model, masks):
                loss = model(ids, labels=labels).loss
            for w, g in zip(want, torch.autograd.grad(loss, masks), strict=True):
                w += g.abs().double()
    for r, w in zip(raw, want, strict=True):
        torch.testing.assert_close(r, w / 5, rtol=1e-4, atol=1e-7)
    for x in normalised:
        assert abs(float(x.norm()) - 1.0) < 1e-9
    assert all(p.requires_grad for p in model.parameters())  # the weights are given back trainable


def test_importance_is_the_derivative_of_the_loss_by_a_finite_difference(tiny):
    model = random_model(RobertaForSequenceClassification, tiny()).double()
    batch = labelled_batches(RobertaForSequenceClassification)[1]
    batch = {k: v[:1] for k, v in batch.items()}
    raw, _, _ = head_importance(model, [batch], show_progress=False)
    eps = 1e-6
    for layer, head in ((0, 0), (1, 2)):
        losses = []
        for sign in (1, -1):
            masks = [torch.ones(3, dtype=torch.float64) for _ in range(2)]
            masks[layer][head] += sign * eps
            with torch.no_grad(), head_masks(model, masks):
                losses.append(float(model(**batch).loss))
        assert abs(abs(losses[0] - losses[1]) / (2 * eps) - float(raw[layer][head])) < 1e-6


def test_flops_count_the_heads_a_layer_has(tiny):
    from roberta_scratch.flops import flops_per_token

    full, pruned = tiny(), tiny(pruned_heads={0: [1], 1: [0, 2]})
    per_head = 2 * 4 * 96 * 32 + 2 * 2 * 16 * 32  # its share of qkv + out proj, and of QK^T and PV at T=16
    assert flops_per_token(full, 16)["attention"] - flops_per_token(pruned, 16)["attention"] == 3 * per_head


def test_choosing_heads_and_layers():
    imp = [torch.tensor([0.5, 0.1, 0.9]), torch.tensor([0.2, 0.3, 0.25])]
    assert keep_top_heads(imp, 1) == {0: [0, 1], 1: [0, 2]}
    assert keep_top_heads(imp, 3) == {}
    assert remove_least_important(imp, 0.5) == {0: [1], 1: [0, 2]}  # 3 of 6: 0.1, 0.2, 0.25
    # layer 1 would lose its last head at 0.3: skipped, the next least important goes instead
    assert remove_least_important(imp, 0.7) == {0: [0, 1], 1: [0, 2]}
    assert choose_layers(12, 6, "even") == [0, 2, 4, 7, 9, 11]
    assert choose_layers(12, 2, "even") == [0, 11] and choose_layers(5, 1, "even") == [0]
    assert choose_layers(12, 3, "first") == [0, 1, 2]
    raw = [torch.tensor([1.0, 1.0]), torch.tensor([5.0, 0.0]), torch.tensor([0.1, 0.1])]
    assert choose_layers(3, 2, "importance", raw) == [0, 1]


# ----------------------------------------------------------------------------- the command

POSITIVE = "good great happy lovely".split()
NEGATIVE = "bad awful sad poor".split()
FILLER = "the movie was a film and plot it really quite story".split()


def sentiment_rows(n):
    import random

    rng = random.Random(0)
    rows = []
    for _ in range(n):
        label = rng.choice(["positive", "negative"])
        words = [rng.choice(FILLER) for _ in range(5)]
        words.insert(2, rng.choice(POSITIVE if label == "positive" else NEGATIVE))
        rows.append({"text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="module")
def seq_cls(tmp_path_factory):
    """A tiny seq-cls model folder as `finetune` leaves one (2 layers of 4 heads of 8; random
    weights), and a CSV of its task."""
    root = tmp_path_factory.mktemp("prune")
    rows = sentiment_rows(40)
    tiny_model_folder(
        root / "model",
        RobertaForSequenceClassification,
        texts=[r["text"] for r in rows],
        num_hidden_layers=2,
        num_attention_heads=4,
        num_labels=2,
        label_names=["negative", "positive"],
        problem_type="single_label_classification",
    )
    with open(root / "model" / "finetune.json", "w") as f:
        json.dump({"task": "seq-cls", "max_length": 32}, f)
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)
    return root


def run(*argv) -> int:
    return cli.main(["prune", *map(str, argv)])


def test_prune_heads_end_to_end(seq_cls, tmp_path, capsys):
    out, report = tmp_path / "pruned", tmp_path / "report.json"
    model, data = seq_cls / "model", seq_cls / "train.csv"
    assert run("--model", model, "--data", data, "--heads", 1, "--out", out, "--report", "--report-json", report) == 0
    text = capsys.readouterr().out
    assert "head importance (Michel et al. 2019)" in text and "least important:" in text
    assert "heads 8 -> 2, layers 2 -> 2" in text and "accuracy:" in text and "after pruning" in text
    cfg = RobertaConfig.load(str(out))
    assert all(len(cfg.pruned_heads[i]) == 3 for i in (0, 1))
    scores = json.loads(report.read_text())
    assert [len(layer["importance"]) for layer in scores["layers"]] == [4, 4] and scores["examples"] == 40
    for layer in scores["layers"]:  # the head kept is the layer's most important
        best = max(range(4), key=lambda h: layer["importance"][h])
        assert best not in cfg.pruned_heads[layer["layer"]]
    assert sorted(os.listdir(out)) == sorted(
        ["config.json", "model.safetensors", "finetune.json", "merges.txt", "vocab.json", "tokenizer_config.json"]
    )
    assert sorted(os.listdir(tmp_path)) == ["pruned", "report.json"]  # no work folder left behind
    results = predict(str(out), ["a good film", "a sad story"])
    assert [set(r["probabilities"]) for r in results] == [{"negative", "positive"}] * 2

    # prune the pruned model again: drop a layer, chosen by importance; pruned_heads follows
    again = tmp_path / "again"
    assert run("--model", out, "--data", data, "--layers", 1, "--layer-choice", "importance", "--out", again) == 0
    cfg2 = RobertaConfig.load(str(again))
    assert cfg2.num_hidden_layers == 1 and len(cfg2.pruned_heads[0]) == 3
    assert "heads 2 -> 1, layers 2 -> 1" in capsys.readouterr().out


def test_prune_by_fraction_with_a_recovery_fine_tune(seq_cls, tmp_path, capsys):
    out = tmp_path / "pruned"
    argv = ["--model", seq_cls / "model", "--data", seq_cls / "train.csv", "--heads-by-importance", 0.5]
    assert run(*argv, "--out", out, "--finetune-epochs", 1, "--batch-size", 8, "--lr", 1e-3) == 0
    text = capsys.readouterr().out
    assert "heads 8 -> 4" in text and "after 1 epoch(s) of recovery" in text
    # --out holds the fine-tune's result: the same shapes as pruning alone gives, other weights
    assert run(*argv, "--out", tmp_path / "untuned") == 0
    tuned, untuned = load_file(out / "model.safetensors"), load_file(tmp_path / "untuned" / "model.safetensors")
    assert {k: v.shape for k, v in tuned.items()} == {k: v.shape for k, v in untuned.items()}
    assert not torch.equal(tuned["roberta.layers.0.attn.qkv.weight"], untuned["roberta.layers.0.attn.qkv.weight"])
    assert RobertaConfig.load(str(out)) == RobertaConfig.load(str(tmp_path / "untuned"))
    shutil.rmtree(tmp_path / "untuned")
    assert json.loads((out / "finetune.json").read_text())["task"] == "seq-cls"
    assert len(predict(str(out), ["a good film"])) == 1
    assert sorted(os.listdir(tmp_path)) == ["pruned"]


def test_prune_an_mlm_model_then_fill_mask_and_features(tmp_path, capsys):
    texts = [" ".join(r["text"] for r in sentiment_rows(3))] * 10
    model = tiny_model_folder(tmp_path / "mlm", texts=texts, num_hidden_layers=2, num_attention_heads=4)
    (tmp_path / "text.txt").write_text("\n".join(r["text"] for r in sentiment_rows(30)) + "\n")
    out = tmp_path / "pruned"
    assert run("--model", model, "--data", tmp_path / "text.txt", "--heads", 2, "--out", out) == 0
    text = capsys.readouterr().out
    assert "heads 8 -> 4" in text and "before, " in text and "after pruning" in text and "loss: " in text
    assert cli.main(["fill-mask", "--model", str(out), "the movie was <mask> good"]) == 0
    assert cli.main(["features", "--model", str(out), "the movie", "--out", str(tmp_path / "f.npy")]) == 0
    # layers by position need no data
    assert run("--model", model, "--layers", 1, "--layer-choice", "first", "--out", tmp_path / "one") == 0
    assert RobertaConfig.load(str(tmp_path / "one")).num_hidden_layers == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--heads", 0], "--heads 0: every layer keeps at least one head"),
        (["--heads", 5], "--heads 5: the model has 4 heads per layer"),
        (["--layers", 0], "--layers 0: a model keeps at least one layer"),
        (["--layers", 3], "--layers 3: the model has 2 layers"),
        (["--layers", 2, "--layer-choice", "first"], "keeps every layer: nothing to prune"),
        (["--heads-by-importance", 0], "must be in \\(0, 1\\)"),
        (["--heads-by-importance", 1.5], "must be in \\(0, 1\\)"),
        (["--heads-by-importance", 0.01], "remove no head"),
        (["--heads", 2, "--no-data"], "--data FILE is needed"),
        (["--layers", 1, "--layer-choice", "importance", "--no-data"], "--data FILE is needed"),
        ([], "say what to remove"),
        (["--heads", 2, "--quantized"], "prune the float model, then quantize"),
        (["--heads", 2, "--out-exists"], "already exists: name a new folder"),
    ],
)
def test_bad_input_is_one_error_line_and_writes_nothing(seq_cls, tmp_path, capsys, argv, message):
    model = seq_cls / "model"
    if "--quantized" in argv:
        model = tmp_path / "int8"
        assert cli.main(["quantize", "--model", str(seq_cls / "model"), "--out", str(model)]) == 0
        capsys.readouterr()
    out = tmp_path / "out"
    if "--out-exists" in argv:
        os.makedirs(out)
    data = [] if "--no-data" in argv else ["--data", seq_cls / "train.csv"]
    argv = [a for a in argv if a not in ("--no-data", "--quantized", "--out-exists")]
    before = sorted(os.listdir(tmp_path))
    assert run("--model", model, *data, *argv, "--out", out) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and pytest.importorskip("re").search(message, err[-1]), err
    assert sorted(os.listdir(tmp_path)) == before


def test_the_pruning_flags_exclude_one_another(seq_cls, capsys):
    with pytest.raises(SystemExit):
        run("--model", seq_cls / "model", "--heads", 1, "--layers", 1, "--out", "x")
    assert "not allowed with argument" in capsys.readouterr().err


# ----------------------------------------------------------------------------- Hugging Face export


def test_a_layer_pruned_model_exports_to_transformers_5(tiny, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    model = drop_layers(random_model(RobertaForSequenceClassification, tiny(num_hidden_layers=3)), [0, 2])
    model.save_pretrained(str(tmp_path / "ours"))
    assert converter.convert(str(tmp_path / "ours"), str(tmp_path / "hf"), "hf", verify=True) == 0
    assert "OK: worst" in capsys.readouterr().out
    theirs = transformers.RobertaForSequenceClassification.from_pretrained(str(tmp_path / "hf")).eval()
    assert theirs.config.num_hidden_layers == 2
    ids, mask = padded_batch()
    with torch.no_grad():
        diff = (model(ids, attention_mask=mask).logits - theirs(input_ids=ids, attention_mask=mask).logits).abs()
    assert diff.max() <= 1e-5


def test_a_head_pruned_model_round_trips_through_the_hf_layout(tiny, tmp_path, capsys):
    model = prune_heads(random_model(RobertaForMaskedLM, tiny()), {0: [1], 1: [0, 2]})
    model.save_pretrained(str(tmp_path / "ours"))
    assert converter.convert(str(tmp_path / "ours"), str(tmp_path / "hf"), "hf", verify=True) == 0
    text = capsys.readouterr().out
    assert "transformers >= 5 cannot load a head-pruned model" in text
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        assert "--verify skipped" in text
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_config["pruned_heads"] == {"0": [1], "1": [0, 2]}
    hf = load_file(tmp_path / "hf" / "model.safetensors")
    # transformers 4.x's layout: each kept head's rows in query/key/value, its columns in the output dense
    assert hf["roberta.encoder.layer.0.attention.self.query.weight"].shape == (64, 96)
    assert hf["roberta.encoder.layer.1.attention.output.dense.weight"].shape == (96, 32)
    assert converter.convert(str(tmp_path / "hf"), str(tmp_path / "back")) == 0
    a, b = load_file(tmp_path / "ours" / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert RobertaConfig.load(str(tmp_path / "back")) == model.config


@pytest.mark.slow
def test_transformers_4_loads_a_head_pruned_export(tiny, tmp_path):
    """transformers 4.x builds the smaller heads from config.json's pruned_heads. Needs a 4.x
    install in a folder named by TRANSFORMERS_4_DIR (pip install --target DIR 'transformers<5'
    'huggingface_hub<1' 'tokenizers<0.23'), run in a child process beside the pinned 5.x."""
    import subprocess
    import sys

    target = os.environ.get("TRANSFORMERS_4_DIR")
    if not target or not os.path.isdir(target):
        pytest.skip("TRANSFORMERS_4_DIR does not name a transformers 4.x install")
    model = prune_heads(random_model(RobertaForMaskedLM, tiny()), {0: [1], 1: [0, 2]})
    model.save_pretrained(str(tmp_path / "ours"))
    assert converter.convert(str(tmp_path / "ours"), str(tmp_path / "hf"), "hf") == 0
    ids, mask = padded_batch()
    torch.save({"ids": ids, "mask": mask}, tmp_path / "batch.pt")
    script = (
        "import sys, torch, transformers\n"
        "assert transformers.__version__.startswith('4.'), transformers.__version__\n"
        "m = transformers.RobertaForMaskedLM.from_pretrained(sys.argv[1], attn_implementation='eager').eval()\n"
        "b = torch.load(sys.argv[2])\n"
        "with torch.no_grad():\n"
        "    torch.save(m(input_ids=b['ids'], attention_mask=b['mask']).logits, sys.argv[3])\n"
    )
    env = {**os.environ, "PYTHONPATH": target}
    subprocess.run(
        [sys.executable, "-c", script, tmp_path / "hf", tmp_path / "batch.pt", tmp_path / "theirs.pt"],
        check=True,
        env=env,
    )
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits
    assert (ours - torch.load(tmp_path / "theirs.pt")).abs().max() <= 1e-5
