"""Fine-tuning end to end on tiny synthetic tasks, input formats and bad rows, windowing, predict,
and a Hugging Face directory that carries a classification head."""

import csv
import dataclasses
import json
import os
import random
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

from roberta_scratch import cli
from roberta_scratch.config import RobertaConfig
from roberta_scratch.errors import TrainingError
from roberta_scratch.finetune.predict import load_finetuned
from roberta_scratch.finetune.readers import DataError
from roberta_scratch.finetune.tasks import align_labels, qa_windows
from roberta_scratch.finetune.trainer import FinetuneArgs, FinetuneTrainer, finetune
from roberta_scratch.model import RobertaForMaskedLM
from roberta_scratch.tokenization.byte_level import ByteLevelBPETokenizer, load_tokenizer

POSITIVE = "good great happy excellent lovely wonderful".split()
NEGATIVE = "bad awful sad terrible poor boring".split()
FILLER = "the movie was a film and plot actors it really quite story with some music scenes".split()
NAMES = ["Alice", "Bob", "Carol", "Dave", "Mary Smith", "John Brown"]
PLACES = ["Paris", "London", "Berlin", "Rome", "New York"]
VERBS = "went to visited left saw loved".split()
COLOURS = "red blue green yellow black white".split()
OBJECTS = "car ball house hat door cup bike box".split()


# ----------------------------------------------------------------------------- synthetic data


def sentiment_rows(n, seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["positive", "negative"])
        words = [rng.choice(FILLER) for _ in range(rng.randint(4, 8))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label == "positive" else NEGATIVE))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def ner_rows(n, seed):
    """Sentences like "Alice went to New York": names are PER, places LOC (multi-word ones B- I-)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tokens, tags = [], []
        for kind, pool in rng.sample([("PER", NAMES), ("LOC", PLACES), (None, None), (None, None)], 4):
            if kind is None:
                words, wtags = [rng.choice(VERBS)], ["O"]
            else:
                words = rng.choice(pool).split()
                wtags = [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
            tokens += words
            tags += wtags
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def colour_squad(n, seed, impossible_every=0, n_facts=3, distractors=0):
    """ "What colour is the X?" over a context of a few "The Y is Z." facts, plus distractors "The Y is
    <not a colour>."; every `impossible_every`-th question asks about an object not in the context."""
    rng = random.Random(seed)
    qas, paragraphs = 0, []
    for i in range(n):
        objects = rng.sample(OBJECTS, n_facts)
        colours = [rng.choice(COLOURS) for _ in objects]
        facts = [f"The {o} is {c}." for o, c in zip(objects, colours, strict=True)]
        others = [o for o in OBJECTS if o not in objects]
        facts += [f"The {o} is {rng.choice(FILLER)}." for o in rng.sample(others, distractors)]
        context = " ".join(rng.sample(facts, len(facts)))
        k = rng.randrange(len(objects))
        if impossible_every and i % impossible_every == 0:
            missing = [o for o in OBJECTS if o not in objects][0]
            qa = {"id": f"q{i}", "question": f"What colour is the {missing}?", "answers": [], "is_impossible": True}
        else:
            start = context.index(f"The {objects[k]} is ") + len(f"The {objects[k]} is ")
            qa = {
                "id": f"q{i}",
                "question": f"What colour is the {objects[k]}?",
                "answers": [{"text": colours[k], "answer_start": start}],
            }
        paragraphs.append({"context": context, "qas": [qa]})
        qas += 1
    return {"version": "v2.0", "data": [{"title": "colours", "paragraphs": paragraphs}]}


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def write_csv(path, rows, fields=("text", "label")):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in fields})
    return str(path)


def write_conll(path, rows):
    with open(path, "w") as f:
        f.write("-DOCSTART- -X- -X- O\n\n")
        for r in rows:
            for t, g in zip(r["tokens"], r["tags"], strict=True):
                f.write(f"{t} NNP B-NP {g}\n")
            f.write("\n")
    return str(path)


def tiny_pretrained(path, texts: list[str]) -> str:
    """A tiny random RobertaForMaskedLM and a BPE tokenizer of `texts` in one dir, as pretraining leaves them."""
    tok = ByteLevelBPETokenizer.train(iter(texts * 3), vocab_size=420, show_progress=False)
    cfg = RobertaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=130,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    RobertaForMaskedLM(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny random MLM model whose tokenizer knows every task's words."""
    texts = [r["text"] for r in sentiment_rows(200, 1)] + [" ".join(r["tokens"]) for r in ner_rows(200, 1)]
    texts += [p["context"] + " " + p["qas"][0]["question"] for p in colour_squad(200, 1)["data"][0]["paragraphs"]]
    return tiny_pretrained(tmp_path_factory.mktemp("finetune") / "pretrained", texts)


def args_for(pretrained, task, train, out, **kw):
    base = dict(
        task=task,
        model=pretrained,
        train=str(train),
        out=str(out),
        epochs=4,
        lr=2e-3,
        batch_size=16,
        warmup_ratio=0.1,
        weight_decay=0.01,
        progress=False,
        log_every=5,
        max_length=64,
    )
    base.update(kw)
    return FinetuneArgs(**base)


def metric_rows(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines() if line.startswith("{")]


# ----------------------------------------------------------------------------- each task learns


def test_seq_cls_learns_sentiment_then_predicts(pretrained, tmp_path, capsys):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(320, 2))
    dev = write_jsonl(tmp_path / "dev.jsonl", sentiment_rows(80, 3))
    assert finetune(args_for(pretrained, "seq-cls", train, tmp_path / "run", eval=dev, epochs=2)) == 0
    evals = [r for r in metric_rows(tmp_path / "run") if "accuracy" in r]
    assert [r["epoch"] for r in evals] == [1.0, 2.0]  # metrics after each epoch
    assert evals[-1]["accuracy"] > 0.9 and evals[-1]["macro_f1"] > 0.9  # chance is 0.5
    for d in ("model", "best"):  # label map and tokenizer travel with the model
        cfg = RobertaConfig.load(str(tmp_path / "run" / d))
        assert cfg.label_names == ["negative", "positive"] and cfg.problem_type == "single_label_classification"
        assert os.path.isfile(tmp_path / "run" / d / "vocab.json")
    inputs = tmp_path / "in.txt"
    inputs.write_text("it was a wonderful film\n\n" + json.dumps({"text": "the story was boring"}) + "\n")
    code, rows = run_cli(capsys, "predict", "--model", tmp_path / "run" / "model", inputs)
    assert code == 0 and [r["label"] for r in rows] == ["positive", "negative"]
    assert all(0.5 < r["probability"] <= 1 and abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows)


def test_seq_cls_numeric_labels_are_regression(pretrained, tmp_path):
    rows = [{"text": r["text"], "label": 1.0 if r["label"] == "positive" else -1.0} for r in sentiment_rows(96, 4)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    assert finetune(args_for(pretrained, "seq-cls", train, tmp_path / "run", eval=train, epochs=1)) == 0
    cfg = RobertaConfig.load(str(tmp_path / "run" / "model"))
    assert cfg.num_labels == 1 and cfg.problem_type == "regression"
    last = metric_rows(tmp_path / "run")[-1]
    assert {"pearson", "spearman"} <= set(last)
    # the folder holds a finished run now: a second one is refused unless asked to continue or start over
    with pytest.raises(TrainingError, match="already holds files"):
        finetune(args_for(pretrained, "seq-cls", train, tmp_path / "run", eval=train, epochs=1))
    assert finetune(args_for(pretrained, "seq-cls", train, tmp_path / "run", eval=train, epochs=1, overwrite=True)) == 0
    assert len(metric_rows(tmp_path / "run")) == len(metric_rows(tmp_path / "run")) and [
        r["step"] for r in metric_rows(tmp_path / "run")
    ] == sorted(r["step"] for r in metric_rows(tmp_path / "run"))


def test_token_cls_learns_names_and_places_then_predicts_char_spans(pretrained, tmp_path, capsys):
    train = write_conll(tmp_path / "train.conll", ner_rows(240, 2))
    dev = write_jsonl(tmp_path / "dev.jsonl", ner_rows(60, 3))
    assert finetune(args_for(pretrained, "token-cls", train, tmp_path / "run", eval=dev, epochs=3)) == 0
    evals = [r for r in metric_rows(tmp_path / "run") if "f1" in r]
    assert len(evals) == 3 and evals[-1]["f1"] > 0.7, evals
    cfg = RobertaConfig.load(str(tmp_path / "run" / "model"))
    assert cfg.label_names == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    inputs = tmp_path / "in.txt"
    inputs.write_text("Bob saw Rome\n")
    code, rows = run_cli(capsys, "predict", "--model", tmp_path / "run" / "best", inputs)
    assert code == 0
    ents = {(e["type"], e["text"], e["start"], e["end"]) for e in rows[0]["entities"]}
    assert ("PER", "Bob", 0, 3) in ents or ("LOC", "Rome", 8, 12) in ents, rows


def test_qa_learns_colours_then_predicts(pretrained, tmp_path, capsys):
    train, dev = tmp_path / "train.json", tmp_path / "dev.json"
    train.write_text(json.dumps(colour_squad(240, 2, n_facts=1, distractors=3)))
    dev.write_text(json.dumps(colour_squad(60, 3, n_facts=1, distractors=3)))
    assert finetune(args_for(pretrained, "qa", train, tmp_path / "run", eval=dev, epochs=2, stride=16)) == 0
    last = metric_rows(tmp_path / "run")[-1]
    assert last["exact_match"] > 0.8 and last["f1"] > 0.8, last  # a random span is almost never right
    code, rows = run_cli(capsys, "predict", "--model", tmp_path / "run" / "model", dev)
    paragraphs = json.loads(dev.read_text())["data"][0]["paragraphs"]
    gold = [p["qas"][0]["answers"][0]["text"] for p in paragraphs]
    assert code == 0 and np.mean([r["answer"] == g for r, g in zip(rows, gold, strict=True)]) > 0.8
    # the SQuAD id stays (the official evaluator reads answers by it); the score is named for what it is
    assert [r["id"] for r in rows] == [p["qas"][0]["id"] for p in paragraphs]
    assert all(0.0 <= r["probability"] <= 1.0 and "logit_score" in r and "score" not in r for r in rows)
    assert np.mean([r["probability"] for r in rows]) > 0.3  # a model this sure of its answers


# ----------------------------------------------------------------------------- alignment and windows


def test_labels_go_on_the_first_sub_token_of_each_word(pretrained):
    tok = load_tokenizer(pretrained)
    words = ["Alice", "zqxjkv", "Paris"]  # an unseen word splits into several tokens
    enc = tok([words], is_split_into_words=True)
    word_ids = enc.word_ids(0)
    assert word_ids.count(1) > 1 and word_ids[0] is None and word_ids[-1] is None
    labels = align_labels(word_ids, [3, 0, 1])
    firsts = [word_ids.index(w) for w in range(3)]
    assert [labels[i] for i in firsts] == [3, 0, 1]
    assert all(lab == -100 for i, lab in enumerate(labels) if i not in firsts)
    assert align_labels([None, 0, 0, 1, None], [5, 7]) == [-100, 5, -100, 7, -100]


def test_qa_windows_overlap_and_map_answers_across_boundaries(pretrained):
    tok = load_tokenizer(pretrained)
    context = " ".join(f"The {o} is {c}." for o, c in zip(OBJECTS, COLOURS + COLOURS, strict=False))
    question = "What colour is the hat?"
    start = context.index("The hat is ") + len("The hat is ")
    colour = context[start:].split(".")[0]
    answer = {"text": colour, "start": start}
    windows = qa_windows(tok, question, context, max_length=24, stride=6, answer=answer)
    assert len(windows) > 2
    n_q = len(tok.encode(question, add_special_tokens=False))
    ctx = [[o for o in w["offsets"] if o is not None] for w in windows]
    for a, b in pairwise(ctx):
        assert a[-6:] == b[:6]  # consecutive windows share `stride` tokens
    assert ctx[0][0][0] == 0 and ctx[-1][-1][1] == len(context)  # the windows cover the whole context
    holding = [w for w in windows if w["start"] > 0]
    assert holding and len(holding) < len(windows)  # windows without the whole answer point at <s>
    for w in windows:
        assert len(w["input_ids"]) <= 24 and w["input_ids"][:1] == [tok.cls_token_id]
        assert w["input_ids"][n_q + 1 : n_q + 3] == [tok.sep_token_id] * 2
        if w["start"]:
            s, e = w["offsets"][w["start"]][0], w["offsets"][w["end"]][1]
            assert context[s:e] == colour
        else:
            assert w["end"] == 0
    unanswerable = qa_windows(tok, question, context, max_length=24, stride=6, answer=None)
    assert all(w["start"] == w["end"] == 0 for w in unanswerable)
    with pytest.raises(ValueError, match="stride"):
        qa_windows(tok, question, context, max_length=16, stride=12)


def test_qa_prediction_reads_answers_from_any_window_and_abstains_for_v2(pretrained, tmp_path):
    """Windows cut mid-context still give the right span back: train on long contexts with small windows."""
    train = tmp_path / "train.json"
    data = colour_squad(120, 2, n_facts=1, distractors=5, impossible_every=4)
    train.write_text(json.dumps(data))
    args = args_for(
        pretrained, "qa", train, tmp_path / "run", eval=str(train), epochs=3, max_length=32, stride=8, progress=False
    )
    trainer = FinetuneTrainer(args)
    assert trainer.task.version_2 and len(trainer.train_set) > 2 * len(trainer.eval_examples) * 0.9
    assert trainer.fit() == 0
    last = metric_rows(tmp_path / "run")[-1]
    assert last["exact_match"] > 0.5, last  # abstaining everywhere scores 0.25, a random span about 0
    task, model = load_finetuned(str(tmp_path / "run" / "model"))
    assert task.name == "qa" and task.version_2 and task.args.max_length == 32 and task.args.stride == 8


# ----------------------------------------------------------------------------- bad input


def test_bad_rows_are_reported_with_file_and_line_then_skipped_or_stopped(pretrained, tmp_path, capsys):
    good = sentiment_rows(40, 5)
    train = tmp_path / "train.jsonl"
    lines = [json.dumps(r) for r in good[:10]] + ['{"label": "positive"}', "not json", json.dumps(good[10])[:-1]]
    train.write_text("\n".join(lines + [json.dumps(r) for r in good[10:]]) + "\n")
    dev = write_csv(tmp_path / "dev.csv", good[:5] + [{"text": "meh", "label": "neutral"}] + good[5:8])
    trainer = FinetuneTrainer(args_for(pretrained, "seq-cls", train, tmp_path / "run", eval=dev, epochs=1))
    assert trainer.skipped == {"train": 3, "eval": 1} and len(trainer.train_set) == 40
    err = capsys.readouterr().err
    assert f"{train}:11: missing field 'text'" in err and f"{train}:12: not valid JSON" in err
    assert f"{dev}:7: label 'neutral' was not seen in training" in err  # header is line 1
    with pytest.raises(DataError, match=rf"{train}:11: missing field 'text'.*--on-bad-row skip"):
        FinetuneTrainer(args_for(pretrained, "seq-cls", train, tmp_path / "run2", on_bad_row="stop"))
    all_bad = write_csv(tmp_path / "all_bad.csv", [{"text": "meh", "label": "neutral"}])
    with pytest.raises(DataError, match=rf"{all_bad}: no usable evaluation examples"):
        FinetuneTrainer(args_for(pretrained, "seq-cls", train, tmp_path / "run2b", eval=all_bad))

    conll = tmp_path / "bad.conll"
    conll.write_text("Alice B-PER\nwent O\n\nBob\nsaw O\n\nRome B-LOC\n")
    ner_dev = write_jsonl(
        tmp_path / "ner_dev.jsonl",
        [
            {"tokens": ["Rome"], "tags": ["B-GPE"]},
            {"tokens": ["a", "b"], "tags": ["O"]},
            {"tokens": ["Bob"], "tags": ["B-PER"]},
        ],
    )
    trainer = FinetuneTrainer(args_for(pretrained, "token-cls", conll, tmp_path / "run3", eval=ner_dev))
    assert trainer.skipped == {"train": 1, "eval": 2} and len(trainer.train_set) == 2
    err = capsys.readouterr().err
    assert f"{conll}:4: expected a token and its tag" in err
    assert f"{ner_dev}:1: tag(s) ['B-GPE'] not seen in training" in err and f"{ner_dev}:2: 2 tokens but 1 tags" in err

    squad = colour_squad(6, 7, n_facts=1)
    squad["data"][0]["paragraphs"][2]["qas"][0]["answers"][0]["text"] = "purple"
    del squad["data"][0]["paragraphs"][4]["qas"][0]["question"]
    qa_file = tmp_path / "bad.json"
    qa_file.write_text(json.dumps(squad, indent=1))
    with pytest.raises(DataError, match=rf"{qa_file}:\d+: question 'q2': answer 'purple' is not found"):
        FinetuneTrainer(args_for(pretrained, "qa", qa_file, tmp_path / "run4", on_bad_row="stop", stride=16))
    trainer = FinetuneTrainer(args_for(pretrained, "qa", qa_file, tmp_path / "run5", stride=16))
    assert trainer.skipped == {"train": 2}
    line = next(n for n, text in enumerate(qa_file.read_text().splitlines(), 1) if '"id": "q2"' in text)
    assert f"{qa_file}:{line}: question 'q2'" in capsys.readouterr().err


def test_values_of_the_wrong_kind_are_bad_rows_while_reading(pretrained, tmp_path, capsys):
    """Caught while reading, with FILE:LINE, before any training: not at the first evaluation."""
    good = sentiment_rows(20, 8)
    train = tmp_path / "train.jsonl"
    odd = [
        {"text": 42, "label": "positive"},
        {"text": "fine", "text_pair": ["x"], "label": "positive"},
        {"text": "fine", "label": ["positive"]},
    ]
    train.write_text("\n".join([json.dumps(r) for r in good] + [json.dumps(r) for r in odd]) + "\n")
    trainer = FinetuneTrainer(args_for(pretrained, "seq-cls", train, tmp_path / "run", epochs=1))
    err = capsys.readouterr().err
    assert trainer.skipped == {"train": 3}
    assert f"{train}:21: 'text' must be a string, got int" in err
    assert f"{train}:22: 'text_pair' must be a string, got list" in err and f"{train}:23: 'label' must be" in err

    ner = write_jsonl(tmp_path / "ner.jsonl", ner_rows(20, 8) + [{"tokens": ["Bob", "ran"], "tags": ["PER", "O"]}])
    with pytest.raises(DataError, match=rf"{ner}:21: tag 'PER' \(word 1\) is not O, B-TYPE or I-TYPE"):
        FinetuneTrainer(args_for(pretrained, "token-cls", ner, tmp_path / "run2", on_bad_row="stop"))
    conll = tmp_path / "bio.conll"
    conll.write_text("Alice B-PER\nwent O\n\nBob PERSON\nsaw O\n\nRome B-LOC\n")
    trainer = FinetuneTrainer(args_for(pretrained, "token-cls", conll, tmp_path / "run3"))
    assert trainer.skipped == {"train": 1} and f"{conll}:4: tag 'PERSON'" in capsys.readouterr().err

    squad = colour_squad(6, 9, n_facts=1)
    squad["data"][0]["paragraphs"][1]["qas"][0]["answers"][0]["answer_start"] = "12"
    squad["data"][0]["paragraphs"][3]["qas"][0]["answers"][0]["answer_start"] = 3.5
    start = squad["data"][0]["paragraphs"][4]["qas"][0]["answers"][0]["answer_start"]
    squad["data"][0]["paragraphs"][4]["qas"][0]["answers"][0]["answer_start"] = float(start)  # 12.0 is fine
    qa_file = tmp_path / "kinds.json"
    qa_file.write_text(json.dumps(squad, indent=1))
    trainer = FinetuneTrainer(args_for(pretrained, "qa", qa_file, tmp_path / "run4", stride=16))
    assert trainer.skipped == {"train": 2}
    err = capsys.readouterr().err
    assert "question 'q1': 'answer_start' must be a whole number of characters, got str '12'" in err
    assert "question 'q3': 'answer_start' must be a whole number of characters, got float 3.5" in err


def test_the_last_evaluation_of_two_epochs_is_labelled_epoch_2(pretrained, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(100, 11))  # 100 / 16: a partial last batch
    assert finetune(args_for(pretrained, "seq-cls", train, tmp_path / "run", eval=train, epochs=2)) == 0
    assert [r["epoch"] for r in metric_rows(tmp_path / "run") if "epoch" in r] == [1.0, 2.0]


def test_finetuning_leaves_the_given_arguments_as_given(pretrained, tmp_path, monkeypatch):
    """Defaults resolved by the run (max_length from the model, eval/save every epoch) are the run's
    own: the caller's FinetuneArgs are unchanged, a checkpoint keeps both, and --resume compares
    the effective ones. The loss curve is labelled with the task's loss."""
    from roberta_scratch.finetune import trainer as trainer_mod

    labels = []
    monkeypatch.setattr(trainer_mod, "plot_metrics", lambda m, png, train, val: labels.append(train) or False)
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(40, 12))
    args = args_for(pretrained, "seq-cls", train, tmp_path / "run", epochs=1, max_length=None, save_every=None)
    given = dataclasses.asdict(args)
    assert finetune(args) == 0
    assert dataclasses.asdict(args) == given  # nothing written back into the caller's object
    ckpt = sorted((tmp_path / "run" / "ckpt").glob("step_*.pt"))[-1]
    state = torch.load(ckpt, weights_only=True)
    assert state["args"]["max_length"] is None and state["args"]["save_every"] is None
    assert state["settings"]["max_length"] == RobertaConfig.load(pretrained).max_tokens
    assert state["settings"]["save_every"] == 3  # an epoch: 40 examples, 16 a step
    assert labels == ["training loss: cross-entropy over the classes"]
    args.resume, args.epochs = True, 2
    assert finetune(args) == 0  # the same effective settings: resumes


def test_a_training_file_with_one_class_is_refused(pretrained, tmp_path):
    rows = [{"text": r["text"], "label": "positive"} for r in sentiment_rows(20, 10)]
    train = write_jsonl(tmp_path / "one.jsonl", rows)
    with pytest.raises(DataError, match=r"every training example has the label \['positive'\].*two classes"):
        FinetuneTrainer(args_for(pretrained, "seq-cls", train, tmp_path / "run"))
    only_o = write_jsonl(tmp_path / "o.jsonl", [{"tokens": ["a", "b"], "tags": ["O", "O"]}] * 5)
    with pytest.raises(DataError, match="every word is tagged O"):
        FinetuneTrainer(args_for(pretrained, "token-cls", only_o, tmp_path / "run2"))


def test_a_regression_target_that_never_varies_is_refused(pretrained, tmp_path):
    """Every label 1: neither two classes nor a target to regress on."""
    train = write_csv(tmp_path / "ones.csv", [{"text": r["text"], "label": 1} for r in sentiment_rows(20, 10)])
    with pytest.raises(DataError, match=r"every training example has the label \['1'\].*two classes"):
        FinetuneTrainer(args_for(pretrained, "seq-cls", train, tmp_path / "run"))  # integers: class ids
    with pytest.raises(DataError, match=r"every training example has the target \[1.0\].*vary"):
        FinetuneTrainer(args_for(pretrained, "seq-cls", train, tmp_path / "run2", label_type="regression"))
    floats = write_csv(tmp_path / "halves.csv", [{"text": r["text"], "label": 0.5} for r in sentiment_rows(20, 10)])
    with pytest.raises(DataError, match=r"every training example has the target \[0.5\].*vary"):
        FinetuneTrainer(args_for(pretrained, "seq-cls", floats, tmp_path / "run3"))


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity"])
def test_regression_labels_that_are_not_finite_are_bad_rows(pretrained, tmp_path, value):
    rows = [{"text": r["text"], "label": i % 5 / 4} for i, r in enumerate(sentiment_rows(20, 10))]
    rows[3]["label"] = value
    train = write_csv(tmp_path / "sts.csv", rows)
    with pytest.raises(DataError, match=rf"sts.csv:5: label '{value}' is not a finite number"):
        FinetuneTrainer(args_for(pretrained, "seq-cls", train, tmp_path / "run", on_bad_row="stop"))


def test_a_csv_with_a_byte_order_mark_reads(pretrained, tmp_path):
    train = write_csv(tmp_path / "excel.csv", sentiment_rows(20, 10))
    Path(train).write_bytes(b"\xef\xbb\xbf" + Path(train).read_bytes())
    trainer = FinetuneTrainer(args_for(pretrained, "seq-cls", train, tmp_path / "run"))
    assert len(trainer.train_set) == 20


def test_predict_gives_one_line_per_input_even_without_words(pretrained, tmp_path, capsys):
    train = write_jsonl(tmp_path / "ner.jsonl", ner_rows(32, 3))
    assert finetune(args_for(pretrained, "token-cls", train, tmp_path / "run", epochs=1)) == 0
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"tokens": ["Alice", "lives", "here"]}\n{"tokens": []}\n{"tokens": ["Bob"]}\n')
    code, results = run_cli(capsys, "predict", "--model", tmp_path / "run" / "model", inputs)
    assert code == 0 and len(results) == 3
    assert results[1] == {"text": "", "entities": []} and results[0]["text"] == "Alice lives here"
    inputs.write_text('{"tokens": []}\n')
    code, results = run_cli(capsys, "predict", "--model", tmp_path / "run" / "model", inputs)
    assert code == 0 and results == [{"text": "", "entities": []}]
    inputs.write_text('{"tokens": ["Bob"]}\n{"tokens": [\n["a list"]\n')  # a cut line, then not an object
    code, results = run_cli(capsys, "predict", "--model", tmp_path / "run" / "model", inputs)
    assert code == 0 and len(results) == 3 and "entities" in results[0]
    assert results[1] == {"error": "line 2: not valid JSON (Expecting value at column 13)"}


# ----------------------------------------------------------------------------- which parameters train


def test_frozen_parameters_get_no_gradient_no_optimizer_state_and_stay_bit_identical(pretrained, tmp_path, capsys):
    """--train-top-layers 1 of 2: layer 0 and the embeddings are frozen. AdamW holds state for the
    trained parameters only (no exp_avg for a frozen one: memory, not just requires_grad), frozen
    weights come out bit for bit as loaded, and the saved model is the whole model, which predict loads."""
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(32, 13))
    trainer = FinetuneTrainer(args_for(pretrained, "seq-cls", train, tmp_path / "run", epochs=1, train_top_layers=1))
    model = trainer.raw_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("roberta.embeddings.", "roberta.layers.0.")) for n in frozen)
    assert {n for n, _ in model.named_parameters()} - frozen == {
        n for n, _ in model.named_parameters() if n.startswith(("roberta.layers.1.", "classifier."))
    }
    assert trainer.fit() == 0
    params = dict(model.named_parameters())
    trained = [p for n, p in params.items() if n not in frozen]
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == {id(p) for p in trained}
    assert set(trainer.optimizer.state) == set(trained)  # keyed by the parameters themselves
    state_numel = sum(t.numel() for s in trainer.optimizer.state.values() for t in s.values() if t.dim() > 0)
    assert state_numel == 2 * sum(p.numel() for p in trained)  # exp_avg and exp_avg_sq, nothing more
    saved = torch.load(sorted((tmp_path / "run" / "ckpt").glob("step_*.pt"))[-1], weights_only=True)["optimizer"]
    assert len(saved["state"]) == len(trained)
    assert all(params[n].grad is None for n in frozen)
    after = model.state_dict()
    assert all(torch.equal(after[n], before[n]) for n in frozen)
    assert all(not torch.equal(after[n], before[n]) for n in params if n not in frozen)
    total, n_trained = sum(p.numel() for p in params.values()), sum(p.numel() for p in trained)
    assert f"training {n_trained:,} of {total:,} parameters ({n_trained / total:.1%})" in capsys.readouterr().out
    assert metric_rows(tmp_path / "run")[0] == {
        "step": 0,
        "tokens": 0,
        "trainable_params": n_trained,
        "total_params": total,
    }
    saved_model = RobertaConfig.load(str(tmp_path / "run" / "model"))  # the whole model, frozen weights too
    assert saved_model.num_hidden_layers == 2
    _, reloaded = load_finetuned(str(tmp_path / "run" / "model"))
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in after.items())


@pytest.mark.parametrize(
    "kw, trains",
    [
        (dict(train_top_layers=0), ("classifier.",)),  # a linear probe
        (dict(train_top_layers=2), ("roberta.", "classifier.")),  # every layer: the embeddings too
        (dict(train_top_layers=2, freeze_embeddings=True), ("roberta.layers.", "classifier.")),
        (dict(freeze_embeddings=True), ("roberta.layers.", "classifier.")),
    ],
)
def test_what_trains_under_each_setting(pretrained, tmp_path, kw, trains):
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(20, 14))
    trainer = FinetuneTrainer(args_for(pretrained, "seq-cls", train, tmp_path / "run", **kw))
    for name, p in trainer.raw_model.named_parameters():
        assert p.requires_grad == name.startswith(trains), name


def test_layerwise_lr_decay_scales_every_group_and_the_schedule_applies_to_all(pretrained, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(32, 15))
    trainer = FinetuneTrainer(args_for(pretrained, "seq-cls", train, tmp_path / "run", layerwise_lr_decay=0.5))
    lr, want = 2e-3, {"roberta.embeddings.": 0.25, "roberta.layers.0.": 0.5, "roberta.layers.1.": 1.0}
    group_of = {id(p): g for g in trainer.optimizer.param_groups for p in g["params"]}
    for name, p in trainer.raw_model.named_parameters():
        scale = next((v for k, v in want.items() if name.startswith(k)), 1.0)  # the head: the peak rate
        group = group_of[id(p)]
        assert group["lr_scale"] == scale and group["initial_lr"] == pytest.approx(lr * scale), name
        assert group["weight_decay"] == (0.01 if p.dim() >= 2 else 0.0), name
    for _ in range(3):  # warmup and decay move every group's rate together
        trainer.optimizer.step()  # no gradients yet: changes nothing, keeps torch's order of calls
        trainer.scheduler.step()
        factor = trainer.schedule(trainer.scheduler.last_epoch)
        for g in trainer.optimizer.param_groups:
            assert g["lr"] == pytest.approx(lr * g["lr_scale"] * factor)
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(lr * factor)  # the logged rate: the head's


def test_bad_freezing_values_are_one_error_line_naming_the_flag(pretrained, tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(20, 16))
    base = ["finetune", "--task", "seq-cls", "--model", pretrained, "--train", train, "--out", tmp_path / "run"]
    for extra, message in [
        (["--train-top-layers", "3"], f"--train-top-layers must be at most 2 (the layers of {pretrained}), got 3"),
        (["--train-top-layers", "-1"], "--train-top-layers must be at least 0, got -1"),
        (["--layerwise-lr-decay", "1.5"], "--layerwise-lr-decay must be at most 1, got 1.5"),
        (["--layerwise-lr-decay", "0"], "--layerwise-lr-decay must be more than 0, got 0.0"),
    ]:
        assert cli.main([str(a) for a in base + extra]) == 1
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert err == [f"error: {message} (--debug shows where)"]


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    "which",
    [
        {},
        {"train_top_layers": 1},
        {"layerwise_lr_decay": 0.7, "freeze_embeddings": True},
        {"lora_r": 2, "lora_dropout": 0.1, "lora_targets": "value,fc2"},
    ],
    ids=["everything", "top-layer", "layerwise-decay", "lora"],
)
def test_resumed_finetuning_matches_an_uninterrupted_run(pretrained, tmp_path, which):
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(64, 6))
    kw = dict(eval=train, epochs=2, batch_size=8, save_every=4, keep_last=10, **which)
    assert finetune(args_for(pretrained, "seq-cls", train, tmp_path / "straight", **kw)) == 0
    assert finetune(args_for(pretrained, "seq-cls", train, tmp_path / "split", **kw)) == 0
    ckpt = tmp_path / "split" / "ckpt"
    for name in os.listdir(ckpt):  # as if the run died just after step 4
        if name != "step_00000004.pt":
            os.remove(ckpt / name)
    assert finetune(args_for(pretrained, "seq-cls", train, tmp_path / "split", resume=True, **kw)) == 0

    def strip(rows):  # everything but the timing
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]

    assert strip(metric_rows(tmp_path / "straight")) == strip(metric_rows(tmp_path / "split"))
    a = torch.load(tmp_path / "straight" / "ckpt" / "step_00000016.pt", weights_only=True)
    b = torch.load(ckpt / "step_00000016.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["extra"]["best"] == b["extra"]["best"]


def test_resume_refuses_other_freezing_and_keeps_layerwise_rates_when_lr_changes(pretrained, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(32, 17))
    kw = dict(epochs=1, batch_size=8, train_top_layers=2, layerwise_lr_decay=0.5)
    assert finetune(args_for(pretrained, "seq-cls", train, tmp_path / "run", **kw)) == 0
    for change, said in [
        ({"train_top_layers": 1}, "--train-top-layers was 2, now 1"),
        ({"train_top_layers": None}, "--train-top-layers was 2, now None"),
        ({"freeze_embeddings": True}, "--freeze-embeddings was False, now True"),
        ({"layerwise_lr_decay": 0.9}, "--layerwise-lr-decay was 0.5, now 0.9"),
    ]:
        with pytest.raises(TrainingError, match=f"cannot resume from .*: {said}\\."):
            finetune(args_for(pretrained, "seq-cls", train, tmp_path / "run", resume=True, **{**kw, **change}))
    # a lower --lr on resume (what the NaN stop advises) keeps each group's share of it
    trainer = FinetuneTrainer(
        args_for(pretrained, "seq-cls", train, tmp_path / "run", resume=True, **{**kw, "epochs": 2, "lr": 1e-3})
    )
    assert trainer.fit() == 0
    assert {g["lr_scale"]: g["initial_lr"] for g in trainer.optimizer.param_groups} == pytest.approx(
        {1.0: 1e-3, 0.5: 5e-4, 0.25: 2.5e-4}
    )


# ----------------------------------------------------------------------------- a Hugging Face directory


def test_hf_directory_with_a_classification_head_keeps_it(pretrained, tmp_path, capsys, recwarn):
    pytest.importorskip("transformers")
    from helpers import random_hf_model

    tok = load_tokenizer(pretrained)
    hf = random_hf_model(
        "RobertaForSequenceClassification",
        vocab_size=tok.vocab_size,
        num_labels=3,
        id2label={0: "neg", 1: "neu", 2: "pos"},
        label2id={"neg": 0, "neu": 1, "pos": 2},
    )
    hf.save_pretrained(tmp_path / "hf")
    tok.save_pretrained(str(tmp_path / "hf"))
    texts = ["it was a wonderful film", "the story was boring and the actors were poor"]
    task, model = load_finetuned(str(tmp_path / "hf"))
    assert task.name == "seq-cls" and task.label_names == ["neg", "neu", "pos"]
    assert not [w for w in recwarn if "newly initialised" in str(w.message)]  # the head was kept
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.softmax(-1)
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    code, rows = run_cli(capsys, "predict", "--model", tmp_path / "hf", tmp_path / "in.txt")
    assert code == 0
    got = torch.tensor([[r["probabilities"][n] for n in ("neg", "neu", "pos")] for r in rows])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert [r["label"] for r in rows] == [["neg", "neu", "pos"][i] for i in want.argmax(-1).tolist()]


# ----------------------------------------------------------------------------- early stopping and --metric


def scripted(monkeypatch, values, name="accuracy"):
    """FinetuneTrainer.evaluate returns values[k] at the k-th evaluation (a function of the step, so a
    resumed run sees the same sequence); the model still trains for real underneath."""

    def evaluate(self):
        k = self.step // self.args.eval_every - 1
        return {"epoch": round(self.step / self.steps_per_epoch, 3), name: values[k]}

    monkeypatch.setattr(FinetuneTrainer, "evaluate", evaluate)


def stop_rows(out):
    """The stop rows of a run, less their token count (which every metrics row carries)."""
    rows = [r for r in metric_rows(out) if "stopped_early" in r]
    assert all(r["tokens"] > 0 for r in rows)
    return [{k: v for k, v in r.items() if k != "tokens"} for r in rows]


def model_weights(path):
    return load_finetuned(str(path))[1].state_dict()


def test_early_stopping_stops_after_patience_and_best_holds_the_best_model(pretrained, tmp_path, monkeypatch, capsys):
    scripted(monkeypatch, [0.5, 0.8, 0.7, 0.8, 0.6, 0.9, 0.9, 0.9])  # a tie is no improvement
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(32, 20))
    kw = dict(eval=train, epochs=8, batch_size=8, eval_every=2, save_every=2, keep_last=20, early_stopping=3)
    trainer = FinetuneTrainer(args_for(pretrained, "seq-cls", train, tmp_path / "run", **kw))
    assert trainer.total_steps == 32 and trainer.fit() == 0
    why = "accuracy has not improved for 3 evaluations (best 0.8 at step 4)"
    assert stop_rows(tmp_path / "run") == [{"step": 10, "stopped_early": why}]
    assert f"stopped early at step 10: {why}" in capsys.readouterr().out
    assert max(r["step"] for r in metric_rows(tmp_path / "run")) == 10 and trainer.step == 10
    assert trainer.best == {"metric": "accuracy", "value": 0.8, "step": 4}
    ckpt = tmp_path / "run" / "ckpt"
    best, final = model_weights(tmp_path / "run" / "best"), model_weights(tmp_path / "run" / "model")
    at = {s: torch.load(ckpt / f"step_{s:08d}.pt", weights_only=True)["model"] for s in (4, 10)}
    assert all(torch.equal(best[k], at[4][k]) for k in at[4])  # OUT/best: the model of step 4
    assert all(torch.equal(final[k], at[10][k]) for k in at[10])  # OUT/model: the model at the stop
    assert not all(torch.equal(best[k], final[k]) for k in best)


def test_metric_and_lower_is_better_pick_best_without_early_stopping(pretrained, tmp_path, monkeypatch):
    from roberta_scratch.finetune import tasks
    from roberta_scratch.finetune.trainer import greater_is_better

    assert not greater_is_better("val_loss") and not greater_is_better("eval_loss") and greater_is_better("f1")
    monkeypatch.setattr(tasks.SequenceClassification, "metric_names", ("accuracy", "macro_f1", "eval_loss"))
    scripted(monkeypatch, [0.9, 0.4, 0.6, 0.5], name="eval_loss")
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(32, 21))
    kw = dict(eval=train, epochs=2, batch_size=8, eval_every=2, metric="eval_loss")
    trainer = FinetuneTrainer(args_for(pretrained, "seq-cls", train, tmp_path / "low", **kw))
    assert trainer.args.greater_is_better is False and trainer.fit() == 0
    assert trainer.best == {"metric": "eval_loss", "value": 0.4, "step": 4} and not stop_rows(tmp_path / "low")
    trainer = FinetuneTrainer(args_for(pretrained, "seq-cls", train, tmp_path / "high", greater_is_better=True, **kw))
    assert trainer.fit() == 0 and trainer.best["value"] == 0.9 and trainer.best["step"] == 2
    scripted(monkeypatch, [0.9, 0.4, 0.6, 0.5])  # accuracy, told lower is better, with patience
    kw.update(metric=None, greater_is_better=False, early_stopping=2)
    trainer = FinetuneTrainer(args_for(pretrained, "seq-cls", train, tmp_path / "neg", **kw))
    assert trainer.fit() == 0 and trainer.step == 8 and trainer.best["value"] == 0.4
    assert stop_rows(tmp_path / "neg") == [
        {"step": 8, "stopped_early": "accuracy has not improved for 2 evaluations (best 0.4 at step 4)"}
    ]


def test_early_stopping_resumed_after_the_first_evaluation_matches_an_uninterrupted_run(
    pretrained, tmp_path, monkeypatch
):
    scripted(monkeypatch, [0.5, 0.7, 0.6, 0.7, 0.65, 0.9])
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(32, 22))
    kw = dict(eval=train, epochs=6, batch_size=8, eval_every=2, save_every=2, keep_last=20, early_stopping=3)
    assert finetune(args_for(pretrained, "seq-cls", train, tmp_path / "straight", **kw)) == 0
    assert finetune(args_for(pretrained, "seq-cls", train, tmp_path / "split", **kw)) == 0
    ckpt = tmp_path / "split" / "ckpt"
    for name in os.listdir(ckpt):  # as if the run died just after its first evaluation (step 2)
        if name != "step_00000002.pt":
            os.remove(ckpt / name)
    assert finetune(args_for(pretrained, "seq-cls", train, tmp_path / "split", resume=True, **kw)) == 0
    with pytest.raises(TrainingError, match="--early-stopping was 3, now 4"):
        finetune(args_for(pretrained, "seq-cls", train, tmp_path / "split", resume=True, **{**kw, "early_stopping": 4}))
    with pytest.raises(TrainingError, match="--metric was 'accuracy', now 'macro_f1'"):
        finetune(args_for(pretrained, "seq-cls", train, tmp_path / "split", resume=True, **kw, metric="macro_f1"))

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]

    rows = strip(metric_rows(tmp_path / "straight"))
    assert (
        rows == strip(metric_rows(tmp_path / "split"))
        and rows[-1]["step"] == 10 == stop_rows(tmp_path / "split")[0]["step"]
    )
    a = torch.load(tmp_path / "straight" / "ckpt" / "step_00000010.pt", weights_only=True)
    b = torch.load(ckpt / "step_00000010.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["extra"] == b["extra"] == {"best": {"metric": "accuracy", "value": 0.7, "step": 4}, "stale": 3}
    for d in ("best", "model"):
        x, y = model_weights(tmp_path / "straight" / d), model_weights(tmp_path / "split" / d)
        assert all(torch.equal(x[k], y[k]) for k in x)
    # resuming a run that stopped early finishes it again without training further
    assert finetune(args_for(pretrained, "seq-cls", train, tmp_path / "split", resume=True, **kw)) == 0
    assert strip(metric_rows(tmp_path / "split")) == rows


def test_a_checkpoint_older_than_early_stopping_resumes_as_nothing_was_counted(pretrained, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(32, 23))
    kw = dict(eval=train, epochs=2, batch_size=8, save_every=2, keep_last=20)
    assert finetune(args_for(pretrained, "seq-cls", train, tmp_path / "run", **kw)) == 0
    path = tmp_path / "run" / "ckpt" / "step_00000002.pt"
    state = torch.load(path, weights_only=True)
    for k in ("metric", "greater_is_better", "early_stopping"):
        del state["settings"][k], state["args"][k]
    del state["extra"]["stale"]
    torch.save(state, path)
    trainer = FinetuneTrainer(args_for(pretrained, "seq-cls", train, tmp_path / "run", resume=True, **kw))
    trainer.load(str(path))
    assert trainer.step == 2 and trainer.stale == 0 and trainer.stop_early is None


def test_bad_early_stopping_and_metric_flags_are_one_error_line(pretrained, tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(20, 24))
    base = ["finetune", "--task", "seq-cls", "--model", pretrained, "--train", train, "--out", tmp_path / "run"]
    for extra, message in [
        (
            ["--early-stopping", "3"],
            "--early-stopping 3 needs --eval: it stops when the eval set's metric stops improving",
        ),
        (["--early-stopping", "0", "--eval", train], "--early-stopping must be at least 1, got 0"),
        (
            ["--metric", "f1", "--eval", train],
            "--metric 'f1' is not a metric of seq-cls evaluation, which gives: accuracy, macro_f1",
        ),
    ]:
        assert cli.main([str(a) for a in base + extra]) == 1
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert err == [f"error: {message} (--debug shows where)"]
    assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")  # refused before any training
    parser_args = cli.build_parser().parse_args([str(a) for a in base + ["--no-greater-is-better"]])
    assert parser_args.greater_is_better is False
