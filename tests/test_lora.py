"""LoRA: parity with peft on the same weights and the same A and B, fine-tuning with --lora-r, the
adapter folder (small, only what trained, tied to its base by fingerprint), `lora merge`, and
every command that reads a model taking an adapter folder."""

import json
import math
import os
import shutil

import pytest
import test_finetune
import torch
from helpers import padded_batch, random_hf_model
from test_finetune import NEGATIVE, POSITIVE, args_for, metric_rows, run_cli, sentiment_rows, write_jsonl

from roberta_scratch import cli
from roberta_scratch.checkpoints.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, TARGETS
from roberta_scratch.checkpoints.formats import read_checkpoint
from roberta_scratch.finetune.predict import load_finetuned
from roberta_scratch.finetune.trainer import FinetuneTrainer, finetune
from roberta_scratch.lora import add_lora, load_unmerged, lora_tensors
from roberta_scratch.model import RobertaForSequenceClassification

peft = pytest.importorskip("peft")
pretrained = test_finetune.pretrained  # the tiny random MLM model fixture, shared


# ----------------------------------------------------------------------------- parity with peft


def peft_pair(tmp_path, targets, r=4, alpha=8):
    """The same random transformers classifier twice: wrapped by peft, and loaded into ours with
    add_lora; peft's A and B (B made non-zero, so every gradient is) copied into ours."""
    theirs = random_hf_model("RobertaForSequenceClassification", num_labels=3)
    theirs.save_pretrained(tmp_path)
    ours = RobertaForSequenceClassification.from_pretrained(str(tmp_path), attention="eager").eval()
    hf_names = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value"}
    hf_names.update({"proj": "attention.output.dense", "fc1": "intermediate.dense", "fc2": "output.dense"})
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=[hf_names[t] for t in targets])
    theirs = peft.get_peft_model(theirs, config).eval()
    add_lora(ours, r, alpha, targets)
    torch.manual_seed(1)
    pairs = []
    for i, layer in enumerate(ours.roberta.layers):
        for t in targets:
            module = theirs.base_model.model.roberta.encoder.layer[i].get_submodule(hf_names[t])
            A, B = module.lora_A["default"].weight, module.lora_B["default"].weight
            with torch.no_grad():
                B.normal_(0.0, 0.1)
            mine = layer.get_submodule(TARGETS[t][0]).lora[t]
            with torch.no_grad():
                mine.A.copy_(A)
                mine.B.copy_(B)
            pairs.append((f"layer {i} {t}", (A, B), (mine.A, mine.B)))
    return theirs, ours, pairs


@pytest.mark.parametrize("targets", [["query", "value"], ["key", "proj", "fc1", "fc2"]])
def test_lora_matches_peft_logits_and_gradients(tmp_path, targets):
    theirs, ours, pairs = peft_pair(tmp_path, targets)
    trainable = sum(p.numel() for n, p in ours.named_parameters() if p.requires_grad and ".lora." in n)
    assert trainable == sum(p.numel() for n, p in theirs.named_parameters() if "lora_" in n)
    ids, mask = padded_batch(1000, lengths=[12, 7, 3], seed=2)
    labels = torch.tensor([0, 2, 1])
    a = theirs(input_ids=ids, attention_mask=mask, labels=labels)
    b = ours(ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-5, rtol=0)
    a.loss.backward()
    b.loss.backward()
    for where, theirs_pair, ours_pair in pairs:
        for name, want, got in zip("AB", theirs_pair, ours_pair, strict=True):
            # within 1e-5, and within 1e-4 of the gradient's own size (some are small: 1e-6 at the bottom)
            scale = want.grad.abs().max().item()
            assert scale > 0, f"{name} of {where} got no gradient"
            torch.testing.assert_close(
                got.grad, want.grad, atol=min(1e-5, 1e-4 * scale), rtol=0, msg=f"{name} of {where}"
            )


def test_lora_starts_as_the_pretrained_model_and_freezes_the_encoder(tmp_path):
    theirs = random_hf_model("RobertaForSequenceClassification", num_labels=3)
    theirs.save_pretrained(tmp_path)
    model = RobertaForSequenceClassification.from_pretrained(str(tmp_path), attention="eager").eval()
    ids, mask = padded_batch(1000, lengths=[9, 4], seed=3)
    before = model(ids, attention_mask=mask).logits
    keys = set(model.state_dict())
    added = add_lora(model, 8, 16, ["query", "value"])
    assert torch.equal(model(ids, attention_mask=mask).logits, before)  # B starts at zero
    assert added == 3 * 2 * (8 * 96 + 96 * 8)
    assert keys < set(model.state_dict())  # the base weights keep their names
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n in lora_tensors(model) if ".lora." in n or n.startswith("classifier.")
    }
    assert all(
        not p.requires_grad for n, p in model.named_parameters() if ".lora." not in n and n.startswith("roberta.")
    )


# ----------------------------------------------------------------------------- fine-tuning with --lora-r


def three_way_rows(n, seed):
    """sentiment_rows plus a third class, "neutral": the same texts without their sentiment word."""
    rows = sentiment_rows(n, seed)
    for i, r in enumerate(rows):
        if i % 3 == 0:
            words = [w for w in r["text"].split() if w not in POSITIVE + NEGATIVE]
            rows[i] = {"text": " ".join(words), "label": "neutral"}
    return rows


@pytest.fixture(scope="module")
def lora_base(pretrained, tmp_path_factory):
    """A base with something to adapt: LoRA leaves the embeddings frozen, and the random `pretrained`
    model's own are not enough to tell one word from another through a frozen encoder (its full
    fine-tuning with --freeze-embeddings stays at chance too). Two epochs of full fine-tuning on
    two-way sentiment stands in for pretraining; the LoRA task below has three classes, so the head
    starts afresh."""
    root = tmp_path_factory.mktemp("lora-base")
    train = write_jsonl(root / "train.jsonl", sentiment_rows(256, 20))
    assert finetune(args_for(pretrained, "seq-cls", train, root / "run", epochs=2)) == 0
    return str(root / "run" / "model")


@pytest.fixture(scope="module")
def lora_run(lora_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    train = write_jsonl(root / "train.jsonl", three_way_rows(256, 21))
    dev = write_jsonl(root / "dev.jsonl", three_way_rows(64, 22))
    args = args_for(lora_base, "seq-cls", train, root / "run", eval=dev, epochs=3, lr=2e-3, lora_r=4, lora_alpha=8)
    assert finetune(args) == 0
    return root


def test_lora_finetuning_learns_and_saves_only_what_trained(lora_base, lora_run):
    rows = metric_rows(lora_run / "run")
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < 0.75 * math.log(3)  # from chance (ln 3): the frozen encoder adapts to the task
    assert max(r["accuracy"] for r in rows if "accuracy" in r) > 0.6  # held out; chance is 0.33
    folder = lora_run / "run" / "model"
    files = set(os.listdir(folder))
    assert {ADAPTER_CONFIG, ADAPTER_WEIGHTS, "finetune.json", "vocab.json", "merges.txt"} <= files
    assert not files & {"config.json", "model.safetensors"}  # the base's weights are not copied
    meta = json.loads((folder / ADAPTER_CONFIG).read_text())
    assert meta["r"] == 4 and meta["alpha"] == 8 and meta["targets"] == ["query", "value"]
    assert meta["base_model"] == os.path.abspath(lora_base)
    tensors = read_tensors_names(folder)
    assert {k for k in tensors if ".lora." not in k} == {
        "classifier.dense.weight",
        "classifier.dense.bias",
        "classifier.out_proj.weight",
        "classifier.out_proj.bias",
    }
    assert len([k for k in tensors if ".lora." in k]) == 2 * 2 * 2  # 2 layers x (query, value) x (A, B)
    first = metric_rows(lora_run / "run")[0]
    lora_numel = 2 * 2 * (4 * 64 + 64 * 4)
    head_numel = 64 * 64 + 64 + 64 * 3 + 3
    assert first["trainable_params"] == lora_numel + head_numel


def read_tensors_names(folder):
    from safetensors import safe_open

    with safe_open(str(folder / ADAPTER_WEIGHTS), "pt") as f:
        return list(f.keys())


def test_predict_takes_the_adapter_and_merge_gives_the_same_outputs(lora_run, tmp_path, capsys):
    adapter = lora_run / "run" / "model"
    unmerged = load_unmerged(str(adapter))
    _, merged_on_load = load_finetuned(str(adapter))  # read_checkpoint folds the adapter in
    code = cli.main(["lora", "merge", "--adapter", str(adapter), "--out", str(tmp_path / "merged")])
    assert code == 0 and "largest output change from base + adapter is" in capsys.readouterr().out
    assert (tmp_path / "merged" / "config.json").exists() and not (tmp_path / "merged" / ADAPTER_CONFIG).exists()
    _, merged = load_finetuned(str(tmp_path / "merged"))
    ids, mask = padded_batch(unmerged.config.vocab_size, lengths=[20, 9, 4], seed=4)
    want = unmerged(ids, attention_mask=mask).logits
    for model in (merged_on_load, merged):
        torch.testing.assert_close(model(ids, attention_mask=mask).logits, want, atol=1e-5, rtol=0)
    inputs = tmp_path / "in.txt"
    inputs.write_text("it was a wonderful film\nthe story was boring\nthe story was a film\n")
    _, from_adapter = run_cli(capsys, "predict", "--model", adapter, inputs)
    _, from_merged = run_cli(capsys, "predict", "--model", tmp_path / "merged", inputs)
    assert [r["label"] for r in from_adapter][:2] == ["positive", "negative"]
    for a, b in zip(from_adapter, from_merged, strict=True):
        assert a["label"] == b["label"] and a["probability"] == pytest.approx(b["probability"], abs=1e-5)


def test_an_adapter_refuses_a_changed_base_and_finds_a_moved_one(lora_base, lora_run, tmp_path, capsys):
    moved = tmp_path / "tree"
    shutil.copytree(lora_base, moved / "base")
    shutil.copytree(lora_run / "run" / "model", moved / "adapter")
    meta_path = moved / "adapter" / ADAPTER_CONFIG
    meta = json.loads(meta_path.read_text())
    meta["base_model"] = str(tmp_path / "gone")
    meta["base_model_relative"] = "../base"
    meta_path.write_text(json.dumps(meta))
    cfg, _ = read_checkpoint(str(moved / "adapter"))  # found beside it, as it was at training time
    assert cfg.label_names == ["negative", "neutral", "positive"]
    changed = moved / "base" / "model.safetensors"
    _, sd = read_checkpoint(str(moved / "base"))
    sd["roberta.layers.0.attn.qkv.weight"] = sd["roberta.layers.0.attn.qkv.weight"] + 1e-3
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(changed), metadata={"format": "pt"})
    (tmp_path / "in.txt").write_text("a good film\n")
    code = cli.main(["predict", "--model", str(moved / "adapter"), str(tmp_path / "in.txt")])
    err = capsys.readouterr().err
    assert code == 1 and "is not the model the adapter" in err and "weights differ" in err
    (moved / "base").rename(moved / "elsewhere")
    code = cli.main(["lora", "merge", "--adapter", str(moved / "adapter"), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 1 and "which is not there any more: pass the base model's folder" in err
    assert not (tmp_path / "m").exists()


def test_lora_flags_are_checked_with_one_error_line(pretrained, tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(20, 23))
    base = ["finetune", "--task", "seq-cls", "--model", pretrained, "--train", train, "--out", tmp_path / "run"]
    for extra, message in [
        (["--lora-r", "4", "--lora-targets", "query,dense"], "--lora-targets 'query,dense': no module is called dense"),
        (["--lora-alpha", "16"], "--lora-alpha needs --lora-r R, the rank of the LoRA update"),
        (["--lora-r", "0"], "--lora-r must be at least 1, got 0"),
        (["--lora-r", "4", "--train-top-layers", "1"], "--lora-r freezes the whole encoder already"),
    ]:
        assert cli.main([str(a) for a in base + extra]) == 1
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


def test_lora_keeps_optimizer_state_for_the_adapter_and_head_only(pretrained, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(32, 24))
    trainer = FinetuneTrainer(args_for(pretrained, "seq-cls", train, tmp_path / "run", epochs=1, lora_r=2))
    base = {k: v.clone() for k, v in trainer.raw_model.state_dict().items() if ".lora." not in k}
    assert trainer.fit() == 0
    trained = [p for p in trainer.raw_model.parameters() if p.requires_grad]
    state_numel = sum(t.numel() for s in trainer.optimizer.state.values() for t in s.values() if t.dim() > 0)
    assert state_numel == 2 * sum(p.numel() for p in trained)
    after = trainer.raw_model.state_dict()
    frozen = [k for k in base if k.startswith("roberta.")]
    assert frozen and all(torch.equal(after[k], base[k]) for k in frozen)


def test_serve_answers_predict_from_an_adapter_folder(lora_run, tmp_path):
    """The server loads the adapter's base, folds the adapter in, and answers as predict does."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from test_serve import assert_same_results, serving

    adapter = str(lora_run / "run" / "model")
    texts = ["it was a wonderful film", "the story was boring"]
    with serving(adapter) as (url, _):
        answer = httpx.post(f"{url}/predict", json={"inputs": texts}, timeout=60)
        info = httpx.get(f"{url}/info", timeout=60).json()
    assert answer.status_code == 200, answer.text
    unmerged = load_unmerged(adapter)
    task, _ = load_finetuned(adapter)
    offline = task.predict(unmerged, [{"text": t} for t in texts], 8, "cpu")  # base + adapter, unmerged
    assert_same_results(answer.json(), offline)
    assert "predict" in info["routes"]
