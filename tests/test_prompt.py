"""Prompt-based few-shot classification (--task prompt-cls) and --shots: the flags' errors, the
template's encoding and truncation, the label-word loss against a hand computation, a tiny
model that learns, predict and serve on the result, and exact resume."""

import dataclasses
import json
import os
from collections import Counter

import httpx
import pytest
import torch
import torch.nn.functional as F
from test_finetune import (
    args_for,
    metric_rows,
    ner_rows,
    run_cli,
    sentiment_rows,
    tiny_pretrained,
    write_csv,
    write_jsonl,
)
from test_user_errors import one_error_line

from roberta_scratch import cli
from roberta_scratch.errors import TrainingError
from roberta_scratch.finetune.predict import load_finetuned
from roberta_scratch.finetune.prompt import (
    PromptClassification,
    RobertaForPromptClassification,
    parse_template,
    parse_verbalizer,
    sample_shots,
)
from roberta_scratch.finetune.readers import DataError
from roberta_scratch.finetune.trainer import FinetuneTrainer, finetune
from roberta_scratch.model import RobertaForMaskedLM
from roberta_scratch.tokenization.byte_level import load_tokenizer

TEMPLATE = "{text} It was <mask>."
VERBALIZER = "positive=good,negative=bad"  # single tokens ('Ġgood', 'Ġbad') of the fixture's tokenizer
PROMPT = dict(template=TEMPLATE, verbalizer=VERBALIZER)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """test_finetune's tiny random MLM, with a tokenizer of the sentiment texts: 'good' and 'bad'
    are single tokens of it, 'terrible' is not."""
    texts = [r["text"] for r in sentiment_rows(200, 1)] + [" ".join(r["tokens"]) for r in ner_rows(200, 1)]
    return tiny_pretrained(tmp_path_factory.mktemp("prompt") / "pretrained", texts)


def prompt_args(pretrained, train, out, **kw):
    return args_for(pretrained, "prompt-cls", train, out, **{**PROMPT, **kw})


# ----------------------------------------------------------------------------- the flags


@pytest.mark.parametrize(
    "flags, said",
    [
        (["--template", "{text} It was good."], "has no <mask>: it needs exactly one"),
        (["--template", "<mask> {text} <mask>"], "has 2 <mask>s: it needs exactly one"),
        (["--template", "It was <mask>."], "has no {text}"),
        (["--template", "{text} {label} <mask>"], "unknown placeholder {label}"),
        (["--verbalizer", "positive=good"], "at least two labels"),
        (["--verbalizer", "positive=good,negative=good"], "the word 'good' stands for several labels"),
        (["--verbalizer", "positive:good,negative=bad"], "'positive:good' is not LABEL=WORD"),
        (["--verbalizer", "positive=good,negative=terrible"], "verbalizer word 'terrible' is 5 tokens here (' t', "),
        (["--verbalizer", "positive=good,neutral=bad"], "label 'negative' has no word in --verbalizer"),
        (["--shots", "0"], "--shots must be at least 1"),
        (["--label-type", "regression"], "--label-type regression is for seq-cls"),
    ],
)
def test_bad_prompt_flags_are_one_error_line(pretrained, tmp_path, capsys, flags, said):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(20, 1))
    given = dict(zip(flags[::2], flags[1::2], strict=True))
    argv = {"--task": "prompt-cls", "--template": TEMPLATE, "--verbalizer": VERBALIZER, **given}
    argv.update({"--model": pretrained, "--train": train, "--out": tmp_path / "run"})
    assert cli.main(["finetune", *[str(x) for kv in argv.items() for x in kv]]) != 0
    assert said in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "task, flags, said",
    [
        ("seq-cls", ["--template", TEMPLATE], "--template is for --task prompt-cls only (this run is --task seq-cls)"),
        ("qa", ["--verbalizer", VERBALIZER], "--verbalizer is for --task prompt-cls only"),
        ("prompt-cls", ["--verbalizer", VERBALIZER], "--task prompt-cls needs --template"),
        ("prompt-cls", ["--template", TEMPLATE], "--task prompt-cls needs --verbalizer"),
        ("token-cls", ["--shots", "4"], "--shots samples examples per class: it is for seq-cls and prompt-cls"),
    ],
)
def test_prompt_flags_belong_to_prompt_cls(pretrained, tmp_path, capsys, task, flags, said):
    argv = ["finetune", "--task", task, "--model", pretrained, "--train", "x", "--out", tmp_path / "run", *flags]
    assert cli.main([str(a) for a in argv]) != 0
    assert said in one_error_line(capsys.readouterr().err)


def test_shots_need_classes(pretrained, tmp_path):
    rows = [{"text": r["text"], "label": 0.5 if r["label"] == "positive" else -1.5} for r in sentiment_rows(20, 1)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(TrainingError, match="has no classes"):
        FinetuneTrainer(args_for(pretrained, "seq-cls", train, tmp_path / "run", shots=2))


def test_parsing_the_template_and_the_verbalizer():
    assert parse_template(TEMPLATE) == ["", "{text}", " It was <mask>."]
    assert parse_template("{text} ? <mask> , {text_pair}") == ["", "{text}", " ? <mask> , ", "{text_pair}", ""]
    assert parse_verbalizer(" a = x , b=y") == {"a": "x", "b": "y"}


# ----------------------------------------------------------------------------- --shots


def test_shots_sample_k_per_class_the_same_for_the_same_seed():
    rows = [{"text": str(i), "label": "abc"[i % 3] if i < 60 else "a"} for i in range(100)]
    rows.append({"text": "rare", "label": "d"})
    picked, notes = sample_shots(rows, 8, seed=0)
    assert Counter(r["label"] for r in picked) == {"a": 8, "b": 8, "c": 8, "d": 1}
    assert notes == ["class 'd' has 1 training example(s), fewer than --shots 8: all are used"]
    assert picked == sample_shots(rows, 8, seed=0)[0]  # deterministic
    assert picked != sample_shots(rows, 8, seed=1)[0]
    assert [int(r["text"]) for r in picked[:-1]] == sorted(int(r["text"]) for r in picked[:-1])  # file order


@pytest.mark.parametrize("task", ["seq-cls", "prompt-cls"])
def test_shots_train_on_k_per_class_and_evaluate_on_everything(pretrained, tmp_path, task):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(100, 2))
    dev = write_jsonl(tmp_path / "dev.jsonl", sentiment_rows(30, 3))
    kw = PROMPT if task == "prompt-cls" else {}
    trainer = FinetuneTrainer(args_for(pretrained, task, train, tmp_path / "run", eval=dev, shots=4, **kw))
    assert len(trainer.train_set) == 8 and Counter(f["label"] for f in trainer.train_set) == {0: 4, 1: 4}
    assert len(trainer.eval_features) == 30


# ----------------------------------------------------------------------------- encoding and the loss


def make_task(pretrained, template=TEMPLATE, max_length=64):
    args = args_for(pretrained, "prompt-cls", "", "", template=template, verbalizer=VERBALIZER, max_length=max_length)
    return PromptClassification(args, load_tokenizer(pretrained))


def test_the_template_encodes_as_the_whole_string_and_keeps_its_mask_when_cut(pretrained):
    tok = load_tokenizer(pretrained)
    task = make_task(pretrained, "Review: {text} It was <mask>!")
    ids, mask, length = task.encode("the movie was a good film", None)
    assert ids == tok.encode("Review: the movie was a good film It was <mask>!")
    assert ids[mask] == tok.mask_token_id and length == len(ids)
    assert task.word_ids == [tok.token_to_id("Ġgood"), tok.token_to_id("Ġbad")]
    with pytest.raises(DataError, match="takes 12 tokens: --max-length 12 leaves no room for the text"):
        make_task(pretrained, "Review: {text} It was <mask>!", max_length=12).encode("a film", None)
    short = make_task(pretrained, "Review: {text} It was <mask>!", max_length=18)
    with pytest.warns(UserWarning, match="their text is cut to fit"):
        [f] = short.features([{"text": "the movie was a good film " * 5, "text_pair": None}])
    assert len(f["input_ids"]) == 18 and f["input_ids"][f["mask"]] == tok.mask_token_id
    head, tail = (
        tok.encode("Review:", add_special_tokens=False),
        tok.encode(" It was <mask>!", add_special_tokens=False),
    )
    assert f["input_ids"][1 : 1 + len(head)] == head and f["input_ids"][-1 - len(tail) : -1] == tail  # kept whole
    assert f["length"] > 18
    # a <mask> written in a text is text, not a second blank
    ids, mask, _ = task.encode("a <mask> here", None)
    assert ids.count(tok.mask_token_id) == 1


def test_pairs_go_where_the_template_puts_them_and_are_cut_longest_first(pretrained):
    tok = load_tokenizer(pretrained)
    args = args_for(pretrained, "prompt-cls", "", "", template="{text} ? <mask> , {text_pair}", verbalizer=VERBALIZER)
    task = PromptClassification(dataclasses.replace(args, max_length=14), tok)
    ids, mask, length = task.encode("the movie was a good film and the plot", "a film")
    texts = [t for t in ids if t not in (tok.cls_token_id, tok.sep_token_id)]
    assert len(ids) == 14 and ids[mask] == tok.mask_token_id and length > 14
    assert tok.decode(texts) == "the movie was a ?<mask> , a film"  # the longer text cut, the short pair whole
    with pytest.raises(DataError, match="has {text_pair} but this input has no 'text_pair'"):
        task.prepare([{"text": "a film"}])


def test_the_loss_is_cross_entropy_of_the_mlm_logits_at_the_mask_over_the_label_words(pretrained):
    task = make_task(pretrained)
    examples = [{**r, "target": ["positive", "negative"].index(r["label"])} for r in sentiment_rows(6, 5)]
    batch = task.collate(task.features(examples))
    torch.manual_seed(0)
    model = RobertaForPromptClassification.from_pretrained(pretrained).eval()
    out = model(**batch)
    assert out.logits.shape == (6, 2)
    mlm = RobertaForMaskedLM.from_pretrained(pretrained).eval()
    full = mlm(batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
    at_mask = full[torch.arange(6), batch["mask_positions"]][:, task.word_ids]  # (B, 2)
    torch.testing.assert_close(out.logits, at_mask, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, F.cross_entropy(at_mask, batch["labels"]), atol=1e-6, rtol=1e-5)
    assert model.state_dict().keys() == mlm.state_dict().keys()  # no weights of its own


# ----------------------------------------------------------------------------- end to end


def test_prompt_cls_learns_sentiment_then_predicts_serves_and_fills_masks(pretrained, tmp_path, capsys):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(320, 2))
    dev = write_jsonl(tmp_path / "dev.jsonl", sentiment_rows(80, 3))
    # a random model's <mask> has to learn to find the word first: slower than seq-cls's <s>
    assert finetune(prompt_args(pretrained, train, tmp_path / "run", eval=dev, epochs=4)) == 0
    evals = [r for r in metric_rows(tmp_path / "run") if "accuracy" in r]
    assert evals[-1]["accuracy"] > 0.85 and evals[-1]["macro_f1"] > 0.85  # chance is 0.5
    model_dir = tmp_path / "run" / "model"
    info = json.loads((model_dir / "finetune.json").read_text())
    tok = load_tokenizer(model_dir)
    assert info["task"] == "prompt-cls" and info["template"] == TEMPLATE
    assert info["verbalizer"] == {
        "positive": {"word": "good", "token_id": tok.token_to_id("Ġgood")},
        "negative": {"word": "bad", "token_id": tok.token_to_id("Ġbad")},
    }
    RobertaForMaskedLM.from_pretrained(str(model_dir))  # still an MLM folder, loaded strictly
    inputs = tmp_path / "in.txt"
    inputs.write_text("it was a wonderful film\n" + json.dumps({"text": "the story was boring"}) + "\n")
    code, rows = run_cli(capsys, "predict", "--model", model_dir, inputs)
    assert code == 0 and [r["label"] for r in rows] == ["positive", "negative"]
    assert set(rows[0]) == {"text", "label", "probability", "probabilities"}
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows)
    code, _ = run_cli(capsys, "fill-mask", "--model", model_dir, "the movie was <mask>")
    assert code == 0
    from test_serve import serving

    with serving(str(model_dir)) as (url, _):
        c = httpx.Client(base_url=url, timeout=60)
        assert c.get("/info").json()["routes"] == ["predict", "embed", "fill-mask"]
        served = c.post("/predict", json={"inputs": ["it was a wonderful film", "the story was boring"]}).json()
        assert [r["label"] for r in served] == ["positive", "negative"]
        for s, r in zip(served, rows, strict=True):
            assert abs(s["probability"] - r["probability"]) < 1e-5
        assert c.post("/fill-mask", json={"inputs": "the movie was <mask>"}).status_code == 200
    with pytest.raises(TrainingError, match="runs in torch only"):
        load_finetuned(str(model_dir), backend="onnx")


def test_resumed_prompt_finetuning_matches_an_uninterrupted_run(pretrained, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(64, 6))
    kw = dict(eval=train, epochs=2, batch_size=4, save_every=2, keep_last=10, shots=8)
    assert finetune(prompt_args(pretrained, train, tmp_path / "straight", **kw)) == 0
    assert finetune(prompt_args(pretrained, train, tmp_path / "split", **kw)) == 0
    ckpt = tmp_path / "split" / "ckpt"
    for name in os.listdir(ckpt):  # as if the run died just after step 2
        if name != "step_00000002.pt":
            os.remove(ckpt / name)
    assert finetune(prompt_args(pretrained, train, tmp_path / "split", resume=True, **kw)) == 0

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]

    assert strip(metric_rows(tmp_path / "straight")) == strip(metric_rows(tmp_path / "split"))
    a = torch.load(tmp_path / "straight" / "ckpt" / "step_00000008.pt", weights_only=True)
    b = torch.load(ckpt / "step_00000008.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for change, said in [({"shots": 4}, "--shots was 8, now 4"), ({"verbalizer": "positive=bad,negative=good"}, "")]:
        with pytest.raises(TrainingError, match=f"cannot resume from .*{said}"):
            finetune(prompt_args(pretrained, train, tmp_path / "split", resume=True, **{**kw, **change}))


def test_prompt_cls_with_lora_saves_an_adapter_of_the_mlm_head_and_predicts_through_it(pretrained, tmp_path, capsys):
    """LoRA composes with prompting: the adapter holds the A and B pairs and the MLM head's own
    weights (its dense layer, LayerNorm and bias; the decoder is tied to the frozen word embeddings),
    and predict through the adapter equals base + adapter unmerged."""
    from roberta_scratch.checkpoints.adapter import ADAPTER_WEIGHTS
    from roberta_scratch.lora import load_unmerged

    train = write_csv(tmp_path / "train.csv", sentiment_rows(96, 4))
    assert finetune(prompt_args(pretrained, train, tmp_path / "run", epochs=1, lora_r=2, lr=5e-3)) == 0
    adapter = tmp_path / "run" / "model"
    from safetensors import safe_open

    with safe_open(str(adapter / ADAPTER_WEIGHTS), "pt") as f:
        heads = sorted(k for k in f.keys() if ".lora." not in k)
    assert heads and all(k.startswith("lm_head.") for k in heads)
    assert "roberta.embeddings.word_embeddings.weight" not in heads
    task, merged = load_finetuned(str(adapter))
    rows = [{"text": "it was a wonderful film"}, {"text": "the story was boring"}]
    unmerged = load_unmerged(str(adapter), cls=RobertaForPromptClassification)
    want, got = task.predict(unmerged, rows, 8, "cpu"), task.predict(merged, rows, 8, "cpu")
    for a, b in zip(got, want, strict=True):
        assert a["label"] == b["label"] and a["probability"] == pytest.approx(b["probability"], abs=1e-5)
