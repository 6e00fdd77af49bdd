"""Fine-tuning: sequence classification, token classification (NER) and extractive QA.

    roberta-scratch finetune --task seq-cls --model PRETRAINED --train train.csv --eval dev.csv --out RUN
    roberta-scratch predict --model RUN/model texts.txt

Each task is a small object that reads its input format, turns examples into model inputs
(features), pads them into batches, and scores predictions with the metrics in metrics.py.
FinetuneTrainer plugs a task into trainer.BaseTrainer, so fine-tuning shares pretraining's
loop, checkpoints, exact resume, NaN stop, SIGINT save, metrics.jsonl and progress bar.

The defaults follow the RoBERTa paper's GLUE recipe: AdamW (0.9, 0.98, eps 1e-6), lr 2e-5
(the paper searched 1e-5..3e-5), batch 16 (16/32), weight decay 0.1, linear warmup over the
first 6% of steps then linear decay to 0, 10 epochs keeping the best checkpoint on the dev set.

Input formats (every bad row is reported as FILE:LINE and skipped, or stops the run, per --on-bad-row):
  seq-cls    CSV with a header, or JSONL: `text`, optional `text_pair`, `label`. String labels
             are classes (their names are saved with the model); numbers mean regression.
  token-cls  CoNLL (a token and its tag per line, the tag last; a blank line between sentences;
             -DOCSTART- lines skipped) or JSONL with `tokens` and `tags`. BIO / IOB2 tags.
  qa         SQuAD JSON, v1.1 or v2.0 (`is_impossible` questions with no answers).
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from . import metrics as M
from .model import (
    IGNORE_INDEX,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
)
from .tokenizer import Tokenizer
from .trainer import BaseTrainer, TrainingError

TASK_FILE = "finetune.json"  # written next to config.json: which task a model dir was trained for


@dataclass
class FinetuneArgs:
    task: str  # seq-cls | token-cls | qa
    model: str  # a pretrained model dir (ours or Hugging Face) that also holds its tokenizer
    train: str
    out: str
    eval: Optional[str] = None
    epochs: float = 10.0
    lr: float = 2e-5
    batch_size: int = 16
    grad_accum: int = 1
    warmup_ratio: float = 0.06
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.98)
    eps: float = 1e-6
    clip: float = 0.0  # fairseq's GLUE recipe does not clip
    max_length: Optional[int] = None  # default: 512 (qa: 384), at most what the model's positions hold
    stride: int = 128  # qa: tokens shared by consecutive windows of a long context
    max_answer_length: int = 30  # qa: the longest answer span considered, in tokens
    label_type: str = "auto"  # seq-cls: auto (string labels = classes, numbers = regression), class, regression
    on_bad_row: str = "skip"  # skip (with a count) or stop
    seed: int = 0
    attention: str = "sdpa"
    compile: bool = False
    log_every: int = 10
    eval_every: Optional[int] = None  # default: once per epoch
    save_every: Optional[int] = None  # default: once per epoch
    keep_last: int = 2
    resume: bool = False
    device: Optional[str] = None
    progress: bool = True

    RESUME_KEYS = ("task", "model", "train", "eval", "epochs", "lr", "batch_size", "grad_accum", "warmup_ratio",
                   "weight_decay", "betas", "eps", "clip", "max_length", "stride", "label_type", "seed")


class DataError(TrainingError):
    """A bad row under --on-bad-row stop, or an input file that cannot be read at all."""


class BadRows:
    """Collects the bad rows of one file: each is reported as FILE:LINE: problem, then skipped
    (counted) or, with on_bad_row="stop", raised as a DataError."""

    def __init__(self, path: str, on_bad_row: str):
        if on_bad_row not in ("skip", "stop"):
            raise ValueError(f"on_bad_row must be 'skip' or 'stop', got {on_bad_row!r}")
        self.path, self.stop, self.rows = path, on_bad_row == "stop", []

    def __call__(self, line: int, problem: str) -> None:
        message = f"{self.path}:{line}: {problem}"
        if self.stop:
            raise DataError(message + " (use --on-bad-row skip to skip bad rows)")
        if len(self.rows) < 20:
            print(f"skipping {message}", file=sys.stderr)
        self.rows.append(message)

    def summary(self) -> Optional[str]:
        return f"skipped {len(self.rows)} bad row(s) of {self.path}" if self.rows else None


def _jsonl(path: str, bad: BadRows):
    """(line number, object) for each non-blank line of a JSONL file."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                bad(n, f"not valid JSON ({e.msg})")
                continue
            if not isinstance(obj, dict):
                bad(n, f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield n, obj


def _is_number(v, parse_strings: bool) -> bool:
    """A JSON number; with parse_strings (CSV, where every value is a string), one written as a number."""
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    if not parse_strings:
        return False
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _pad(rows: list[list], value) -> torch.Tensor:
    T = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (T - len(r)) for r in rows])


# ----------------------------------------------------------------------------- tasks

class Task:
    """What a task provides: reading, labels, features, batches, metrics and predictions."""

    name: str
    model_class: type
    best_metric: str  # the metric that picks the best checkpoint (higher is better)

    def __init__(self, args: FinetuneArgs, tok: Tokenizer, label_names=None, regression=False):
        self.args, self.tok = args, tok
        self.label_names, self.regression = label_names, regression

    def config_overrides(self) -> dict:
        return {}

    def info(self) -> dict:
        """What predict needs to know besides the model: saved in finetune.json."""
        return {"task": self.name, "max_length": self.args.max_length}

    def collate(self, features: list[dict]) -> dict:
        ids = _pad([f["input_ids"] for f in features], self.tok.pad_token_id)
        batch = {"input_ids": ids, "attention_mask": ids.ne(self.tok.pad_token_id).long()}
        batch.update(self.collate_labels(features))
        return batch

    def logits(self, model, features: list[dict], batch_size: int, device) -> list:
        """Run the model over features in batches; one output object per batch, on the CPU."""
        outs = []
        for i in range(0, len(features), batch_size):
            chunk = features[i:i + batch_size]
            ids = _pad([f["input_ids"] for f in chunk], self.tok.pad_token_id).to(device)
            out = model(ids, attention_mask=ids.ne(self.tok.pad_token_id).long())
            outs.append(out)
        return outs


class SequenceClassification(Task):
    name, model_class = "seq-cls", RobertaForSequenceClassification

    @property
    def best_metric(self):
        return "pearson" if self.regression else "accuracy"

    def read(self, path: str, bad: BadRows) -> list[dict]:
        if path.endswith(".csv"):
            with open(path, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                missing = {"text", "label"} - set(reader.fieldnames or [])
                if missing:
                    raise DataError(f"{path}:1: the CSV header {reader.fieldnames} lacks {sorted(missing)}")
                rows = [(reader.line_num, dict(row)) for row in reader]
        else:
            rows = _jsonl(path, bad)  # lazily, so problems are reported in line order
        examples = []
        for n, row in rows:
            text, label = row.get("text"), row.get("label")
            if not isinstance(text, str) or not text.strip():
                bad(n, "missing field 'text'")
            elif label is None or label == "":
                bad(n, "missing field 'label'")
            else:
                examples.append({"text": text, "text_pair": row.get("text_pair") or None, "label": label,
                                 "line": n})
        return examples

    def fit_labels(self, examples: list[dict]) -> None:
        """auto: numbers (JSON numbers, or CSV values that all parse as numbers) mean regression;
        anything else, JSON strings like "1" included, is a class name. --label-type class|regression
        says so explicitly."""
        kind = self.args.label_type
        if kind == "auto":
            parse = self.args.train.endswith(".csv")
            kind = "regression" if all(_is_number(e["label"], parse) for e in examples) else "class"
        self.regression = kind == "regression"
        if not self.regression:
            self.label_names = sorted({str(e["label"]) for e in examples})

    def check_labels(self, examples: list[dict], bad: BadRows) -> list[dict]:
        good = []
        for e in examples:
            if self.regression:
                try:
                    e["target"] = float(e["label"])
                except (TypeError, ValueError):
                    bad(e["line"], f"label {e['label']!r} is not a number (this is a regression task)")
                    continue
            elif str(e["label"]) not in self.label_names:
                bad(e["line"], f"label {e['label']!r} was not seen in training (known: {self.label_names})")
                continue
            else:
                e["target"] = self.label_names.index(str(e["label"]))
            good.append(e)
        return good

    def config_overrides(self) -> dict:
        if self.regression:
            return dict(num_labels=1, label_names=None, problem_type="regression")
        return dict(num_labels=len(self.label_names), label_names=self.label_names,
                    problem_type="single_label_classification")

    def features(self, examples: list[dict]) -> list[dict]:
        if not examples:
            return []
        workers = 1 if len(examples) < 10_000 else None  # a process pool only pays off on big files
        pairs = [e["text_pair"] for e in examples]
        if any(pairs) and not all(pairs):  # some rows have a pair and some do not: encode one by one
            rows = [self.tok(e["text"], e["text_pair"], truncation=True, max_length=self.args.max_length)["input_ids"]
                    for e in examples]
        else:
            rows = self.tok([e["text"] for e in examples], pairs if any(pairs) else None, truncation=True,
                            max_length=self.args.max_length, num_workers=workers)["input_ids"]
        return [{"input_ids": ids, "label": e.get("target")} for ids, e in zip(rows, examples)]

    def collate_labels(self, features: list[dict]) -> dict:
        labels = [f["label"] for f in features]
        return {"labels": torch.tensor(labels, dtype=torch.float32 if self.regression else torch.long)}

    @torch.no_grad()
    def predictions(self, model, features, batch_size, device) -> list:
        outs = self.logits(model, features, batch_size, device)
        logits = torch.cat([o.logits.float().cpu() for o in outs])
        return logits[:, 0].tolist() if self.regression else logits.softmax(-1).tolist()

    def evaluate(self, model, examples, features, batch_size, device) -> dict:
        preds = self.predictions(model, features, batch_size, device)
        gold = [f["label"] for f in features]
        if self.regression:
            return {"pearson": M.pearson(preds, gold), "spearman": M.spearman(preds, gold), "examples": len(gold)}
        argmax = [max(range(len(p)), key=p.__getitem__) for p in preds]
        return {"accuracy": M.accuracy(argmax, gold), "macro_f1": M.macro_f1(argmax, gold), "examples": len(gold)}

    def predict(self, model, rows: list[dict], batch_size, device) -> list[dict]:
        for r in rows:
            r.setdefault("text_pair", None)
        feats = self.features(rows)
        out = []
        for r, p in zip(rows, self.predictions(model, feats, batch_size, device)):
            res = {"text": r["text"]} if not r.get("text_pair") else {"text": r["text"], "text_pair": r["text_pair"]}
            if self.regression:
                res["value"] = p
            else:
                best = max(range(len(p)), key=p.__getitem__)
                res.update(label=self.label_names[best], probability=p[best],
                           probabilities=dict(zip(self.label_names, p)))
            out.append(res)
        return out

    def parse_input(self, line: str) -> dict:
        return {"text": line}


class TokenClassification(Task):
    """NER: a tag per word; each word's tag goes on its first sub-token, the others get -100."""

    name, model_class, best_metric = "token-cls", RobertaForTokenClassification, "f1"

    def read(self, path: str, bad: BadRows) -> list[dict]:
        if path.endswith(".jsonl") or path.endswith(".json"):
            examples = []
            for n, row in _jsonl(path, bad):
                tokens, tags = row.get("tokens"), row.get("tags")
                if not isinstance(tokens, list) or not tokens:
                    bad(n, "missing field 'tokens'")
                elif not isinstance(tags, list):
                    bad(n, "missing field 'tags'")
                elif len(tokens) != len(tags):
                    bad(n, f"{len(tokens)} tokens but {len(tags)} tags")
                else:
                    examples.append({"tokens": [str(t) for t in tokens], "tags": [str(t) for t in tags], "line": n})
            return examples
        examples, tokens, tags, start, broken = [], [], [], 1, False
        with open(path, encoding="utf-8") as f:
            lines = list(enumerate(f, 1)) + [(None, "")]
        for n, line in lines:
            parts = line.split()
            if not parts:  # the end of a sentence
                if tokens and not broken:
                    examples.append({"tokens": tokens, "tags": tags, "line": start})
                tokens, tags, broken = [], [], False
                continue
            if parts[0] == "-DOCSTART-":
                continue
            if not tokens and not broken:
                start = n
            if len(parts) < 2:
                bad(n, f"expected a token and its tag, got {line.strip()!r} (the sentence is skipped)")
                broken = True
                continue
            tokens.append(parts[0])
            tags.append(parts[-1])
        return examples

    def fit_labels(self, examples: list[dict]) -> None:
        names = sorted({t for e in examples for t in e["tags"]} - {"O"}, key=lambda t: (t[2:], t))
        self.label_names = ["O"] + names  # O first, then B-/I- of each type side by side

    def check_labels(self, examples: list[dict], bad: BadRows) -> list[dict]:
        good = []
        for e in examples:
            unseen = sorted({t for t in e["tags"] if t not in self.label_names})
            if unseen:
                bad(e["line"], f"tag(s) {unseen} not seen in training (known: {self.label_names})")
            else:
                good.append(e)
        return good

    def config_overrides(self) -> dict:
        return dict(num_labels=len(self.label_names), label_names=self.label_names)

    def features(self, examples: list[dict]) -> list[dict]:
        if not examples:
            return []
        enc = self.tok([e["tokens"] for e in examples], is_split_into_words=True, truncation=True,
                       max_length=self.args.max_length)
        feats = []
        for i, e in enumerate(examples):
            words = enc.word_ids(i)
            labels = align_labels(words, [self.label_names.index(t) for t in e["tags"]] if "tags" in e else None)
            feats.append({"input_ids": enc["input_ids"][i], "labels": labels, "word_ids": words})
        return feats

    def collate_labels(self, features: list[dict]) -> dict:
        return {"labels": _pad([f["labels"] for f in features], IGNORE_INDEX)}

    @torch.no_grad()
    def word_predictions(self, model, examples, features, batch_size, device) -> list[list[tuple[str, float]]]:
        """(tag, probability) per word; a word cut off by truncation is O."""
        outs = self.logits(model, features, batch_size, device)
        probs = [row for o in outs for row in o.logits.float().softmax(-1).cpu()]
        result = []
        for e, f, p in zip(examples, features, probs):
            tags = [("O", 1.0)] * len(e["tokens"])
            seen = set()
            for t, w in enumerate(f["word_ids"]):
                if w is not None and w not in seen:
                    seen.add(w)
                    k = int(p[t].argmax())
                    tags[w] = (self.label_names[k], float(p[t, k]))
            result.append(tags)
        return result

    def evaluate(self, model, examples, features, batch_size, device) -> dict:
        pred = self.word_predictions(model, examples, features, batch_size, device)
        scores = M.entity_prf([e["tags"] for e in examples], [[t for t, _ in p] for p in pred])
        return {**scores, "sentences": len(examples)}

    def predict(self, model, rows: list[dict], batch_size, device) -> list[dict]:
        for r in rows:
            if "tokens" not in r:  # plain text: split into words, keeping each word's characters
                spans = [(m.start(), m.end()) for m in re.finditer(r"\w+|[^\w\s]", r["text"])]
                r["tokens"], r["spans"] = [r["text"][a:b] for a, b in spans], spans
        rows = [r for r in rows if r["tokens"]]
        preds = self.word_predictions(model, rows, self.features(rows), batch_size, device)
        out = []
        for r, p in zip(rows, preds):
            ents = []
            for kind, a, b in M.entity_spans([t for t, _ in p]):
                ent = {"type": kind, "words": [a, b], "text": " ".join(r["tokens"][a:b]),
                       "score": min(s for _, s in p[a:b])}
                if "spans" in r:
                    ent["start"], ent["end"] = r["spans"][a][0], r["spans"][b - 1][1]
                    ent["text"] = r["text"][ent["start"]:ent["end"]]
                ents.append(ent)
            out.append({"text": r.get("text", " ".join(r["tokens"])), "entities": ents})
        return out

    def parse_input(self, line: str) -> dict:
        return {"text": line}


def align_labels(word_ids: list, word_labels: Optional[list]) -> list[int]:
    """Each word's label on its first sub-token; IGNORE_INDEX on its other sub-tokens and on
    special tokens and padding (word id None).

    >>> align_labels([None, 0, 0, 1, None], [5, 7])
    [-100, 5, -100, 7, -100]
    """
    labels, previous = [], None
    for w in word_ids:
        first = w is not None and w != previous
        labels.append(word_labels[w] if first and word_labels is not None else IGNORE_INDEX)
        previous = w
    return labels


class QuestionAnswering(Task):
    """Extractive QA. A long context is cut into windows of max_length tokens that overlap by
    `stride` tokens, each `<s> question </s></s> context piece </s>`. A window that holds the
    whole answer points at it; one that does not (and an unanswerable question) points at <s>.
    At prediction, the best span over all windows wins; for SQuAD v2.0-trained models, ""
    when <s> (the "no answer" score) beats it."""

    name, model_class, best_metric = "qa", RobertaForQuestionAnswering, "f1"
    max_question_tokens = 64

    def __init__(self, *a, version_2=False, **kw):
        super().__init__(*a, **kw)
        self.version_2 = version_2

    def info(self) -> dict:
        return {**super().info(), "stride": self.args.stride, "max_answer_length": self.args.max_answer_length,
                "version_2": self.version_2}

    def read(self, path: str, bad: BadRows) -> list[dict]:
        with open(path, encoding="utf-8") as f:
            raw = f.read()
        try:
            data = json.loads(raw)["data"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{path}: not a SQuAD JSON file with a top-level 'data' list ({e})") from None

        def line_of(key) -> int:  # JSON keeps no line numbers: find where this question's id is written
            i = raw.find(json.dumps(key)) if key is not None else -1
            return raw.count("\n", 0, i) + 1 if i >= 0 else 1

        examples = []
        for article in data:
            for para in article.get("paragraphs", []):
                context = para.get("context")
                for qa in para.get("qas", []):
                    qid = qa.get("id")
                    n = line_of(qid if qid is not None else qa.get("question"))
                    if not isinstance(context, str) or not context.strip():
                        bad(n, f"question {qid!r}: its paragraph has no 'context'")
                        continue
                    if not isinstance(qa.get("question"), str) or not qa["question"].strip():
                        bad(n, f"question {qid!r}: missing field 'question'")
                        continue
                    impossible = bool(qa.get("is_impossible", False))
                    answers, problem = [], None
                    for a in qa.get("answers", []):
                        text, start = a.get("text"), a.get("answer_start")
                        if not isinstance(text, str) or not text:
                            problem = "an answer has no 'text'"
                        elif start is None:
                            start = context.find(text)
                        if problem is None and (start is None or start < 0
                                                or context[start:start + len(text)] != text):
                            where = f"at character {start}" if start is not None and start >= 0 else "anywhere"
                            problem = f"answer {text!r} is not found {where} in its context"
                        if problem:
                            break
                        answers.append({"text": text, "start": start})
                    if problem is None and not answers and not impossible:
                        problem = "no answers and not marked is_impossible"
                    if problem:
                        bad(n, f"question {qid!r}: {problem}")
                        continue
                    examples.append({"id": qid, "question": qa["question"], "context": context,
                                     "answers": answers, "line": n})
        return examples

    def fit_labels(self, examples: list[dict]) -> None:
        self.version_2 = any(not e["answers"] for e in examples)

    def check_labels(self, examples, bad):
        return examples

    def features(self, examples: list[dict]) -> list[dict]:
        feats = []
        for k, e in enumerate(examples):
            try:
                windows = qa_windows(self.tok, e["question"], e["context"], self.args.max_length, self.args.stride,
                                     self.max_question_tokens, e["answers"][0] if e.get("answers") else None)
            except ValueError as err:
                raise DataError(f"--max-length / --stride: {err}") from None
            feats += [{**f, "example": k} for f in windows]
        return feats

    def collate_labels(self, features: list[dict]) -> dict:
        return {"start_positions": torch.tensor([f["start"] for f in features]),
                "end_positions": torch.tensor([f["end"] for f in features])}

    @torch.no_grad()
    def answers(self, model, examples, features, batch_size, device) -> list[dict]:
        """The best answer of each example over its windows: text, character span, score."""
        outs = self.logits(model, features, batch_size, device)
        starts = [row for o in outs for row in o.start_logits.float().cpu()]
        ends = [row for o in outs for row in o.end_logits.float().cpu()]
        best = [{"answer": "", "start": None, "end": None, "score": -math.inf, "null": math.inf} for _ in examples]
        L = self.args.max_answer_length
        for f, s, e in zip(features, starts, ends):
            b = best[f["example"]]
            b["null"] = min(b["null"], float(s[0] + e[0]))
            ctx = [i for i, o in enumerate(f["offsets"]) if o is not None]
            lo, hi = ctx[0], ctx[-1] + 1
            # every span of at most L tokens inside the context: (T, T) scores, masked
            scores = s[lo:hi, None] + e[None, lo:hi]
            i, j = torch.meshgrid(torch.arange(hi - lo), torch.arange(hi - lo), indexing="ij")
            scores = scores.masked_fill((j < i) | (j - i >= L), -math.inf)
            flat = int(scores.argmax())
            a, z = divmod(flat, hi - lo)
            score = float(scores.view(-1)[flat])
            if score > b["score"]:
                context = examples[f["example"]]["context"]
                cs, ce = f["offsets"][lo + a][0], f["offsets"][lo + z][1]
                b.update(answer=context[cs:ce], start=cs, end=ce, score=score)
        for b in best:
            if self.version_2 and b["null"] > b["score"]:
                b.update(answer="", start=None, end=None, score=b["null"])
            del b["null"]
        return best

    def evaluate(self, model, examples, features, batch_size, device) -> dict:
        preds = self.answers(model, examples, features, batch_size, device)
        scores = M.squad_scores([[a["text"] for a in e["answers"]] for e in examples], [p["answer"] for p in preds])
        return {**scores, "questions": len(examples)}

    def predict(self, model, rows: list[dict], batch_size, device) -> list[dict]:
        for r in rows:
            if not isinstance(r.get("question"), str) or not isinstance(r.get("context"), str):
                raise DataError(f"a QA input needs 'question' and 'context', got keys {sorted(r)}")
        preds = self.answers(model, rows, self.features(rows), batch_size, device)
        return [{"question": r["question"], **p} for r, p in zip(rows, preds)]

    def parse_input(self, line: str) -> dict:
        raise DataError("QA input lines must be JSON objects with 'question' and 'context'")


def qa_windows(tok: Tokenizer, question: str, context: str, max_length: int, stride: int,
               max_question_tokens: int = 64, answer: Optional[dict] = None) -> list[dict]:
    """Overlapping windows over a long context, each `<s> question </s></s> piece </s>`.

    Returns per window: input_ids, offsets (the context character span of each token, None
    for the question and special tokens), and start/end token positions of `answer`
    ({"text", "start"} in characters) when the window holds all of it, else 0 (<s>).
    """
    q = tok.encode(question, add_special_tokens=False)[:max_question_tokens]
    enc = tok(context, add_special_tokens=False, return_offsets_mapping=True)
    ids, offs = enc["input_ids"], enc["offset_mapping"]
    budget = max_length - len(q) - 4  # <s> q </s></s> ... </s>
    if budget <= stride:
        raise ValueError(f"max_length {max_length} leaves {budget} context tokens per window after a "
                         f"{len(q)}-token question; that must be more than the stride ({stride})")
    first = last = None
    if answer is not None:
        a0, a1 = answer["start"], answer["start"] + len(answer["text"])
        inside = [i for i, (s, e) in enumerate(offs) if s < a1 and e > a0]
        if inside:
            first, last = inside[0], inside[-1]
    windows, start = [], 0
    while True:
        end = min(start + budget, len(ids))
        windows.append((start, end))
        if end >= len(ids):
            break
        start = end - stride
    head = [tok.cls_token_id] + q + [tok.sep_token_id, tok.sep_token_id]
    out = []
    for s, e in windows:
        shift = len(head) - s  # context token i sits at position i + shift
        pos = (first + shift, last + shift) if first is not None and s <= first and last < e else (0, 0)
        out.append({"input_ids": head + ids[s:e] + [tok.sep_token_id],
                    "offsets": [None] * len(head) + [tuple(o) for o in offs[s:e]] + [None],
                    "start": pos[0], "end": pos[1]})
    return out


TASKS = {t.name: t for t in (SequenceClassification, TokenClassification, QuestionAnswering)}


# ----------------------------------------------------------------------------- the trainer

class FinetuneTrainer(BaseTrainer):
    """A task on top of the shared loop: the data are the task's features; an epoch is
    len(train features) / global batch steps (rounded up); evaluation and a checkpoint after
    each epoch; OUT/best holds the best model on the eval set and OUT/model the final one."""

    desc = "fine-tuning"
    extra_state_keys = ("best",)

    def build(self) -> torch.nn.Module:
        a = self.args
        if a.task not in TASKS:
            raise TrainingError(f"--task {a.task!r} is not one of {sorted(TASKS)}")
        try:
            self.tok = Tokenizer.from_pretrained(a.model)
        except (FileNotFoundError, OSError, ValueError) as e:
            raise TrainingError(f"--model {a.model}: no tokenizer there ({e}); a model dir holds its "
                                "tokenizer files too") from None
        self.task = TASKS[a.task](a, self.tok)
        self.skipped = {}
        train = self._read(a.train, "train", fit=True)
        if not train:
            raise DataError(f"{a.train}: no usable training examples")
        self.eval_examples = self._read(a.eval, "eval") if a.eval else []
        if a.eval and not self.eval_examples:
            raise DataError(f"{a.eval}: no usable evaluation examples (every row was bad)")

        torch.manual_seed(a.seed)  # the fresh head starts the same on every rank and every run
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # a head trained for another label set starts afresh, with a warning naming it
            model = self.task.model_class.from_pretrained(a.model, reinit_mismatched_heads=True,
                                                          attention=a.attention, **self.task.config_overrides())
        for w in caught:
            self._log(f"note: {w.message}")
        limit = model.config.max_tokens
        default = 384 if a.task == "qa" else 512
        a.max_length = min(a.max_length or default, limit)

        self.train_set = self.task.features(train)
        self.eval_features = self.task.features(self.eval_examples)
        self.steps_per_epoch = math.ceil(len(self.train_set) / self.global_batch)
        self.total_steps = max(1, math.ceil(a.epochs * len(self.train_set) / self.global_batch))
        self.warmup_steps = round(a.warmup_ratio * self.total_steps)
        a.eval_every = a.eval_every or self.steps_per_epoch
        a.save_every = a.save_every or self.steps_per_epoch
        self.best = None
        self._log(f"{a.task}: {len(train)} training examples ({len(self.train_set)} features), "
                  f"{len(self.eval_examples)} eval; {self.total_steps} steps of {self.global_batch}, "
                  f"{self.steps_per_epoch} per epoch")
        return model

    def _read(self, path: str, split: str, fit: bool = False) -> list[dict]:
        if not os.path.isfile(path):
            raise DataError(f"--{split} {path}: no such file")
        bad = BadRows(path, self.args.on_bad_row)
        examples = self.task.read(path, bad)
        if fit:
            self.task.fit_labels(examples)
        examples = self.task.check_labels(examples, bad)
        self.skipped[split] = len(bad.rows)
        if bad.summary():
            self._log(bad.summary())
        return examples

    def collate(self, examples: list, step: int, micro_batch: int) -> dict:
        return self.task.collate(examples)

    def evaluate(self) -> Optional[dict]:
        if not self.eval_examples:
            return None
        self.raw_model.eval()
        try:
            with self._autocast():
                m = self.task.evaluate(self.raw_model, self.eval_examples, self.eval_features,
                                       self.args.batch_size * 2, self.device)
        finally:
            self.raw_model.train()
        return {"epoch": round(self.step / self.steps_per_epoch, 3), **m}

    def on_evaluated(self, metrics: dict) -> None:
        key = self.task.best_metric
        if self.best is None or metrics[key] > self.best["value"]:
            self.best = {"metric": key, "value": metrics[key], "step": self.step}
            if self.rank == 0:
                self.save_model(os.path.join(self.args.out, "best"))

    def save_model(self, path: str) -> None:
        """A model dir predict can use: weights, config (with label names), tokenizer, task info."""
        self.raw_model.save_pretrained(path)
        self.tok.save_pretrained(path)
        with open(os.path.join(path, TASK_FILE), "w") as f:
            json.dump(self.task.info(), f, indent=2)

    def export(self) -> None:
        path = os.path.join(self.args.out, "model")
        self.save_model(path)
        best = f"; the best on the eval set ({self.best['metric']} {self.best['value']:.4g} at step " \
               f"{self.best['step']}) is in {os.path.join(self.args.out, 'best')}" if self.best else ""
        self._log(f"saved the fine-tuned model and its tokenizer to {path}{best}")


def finetune(args: FinetuneArgs) -> int:
    return FinetuneTrainer(args).fit()


# ----------------------------------------------------------------------------- using a fine-tuned model

def load_finetuned(path: str, device=None):
    """(task, model) from a directory written by finetune (or a Hugging Face one with a head)."""
    from .config import RobertaConfig

    info = {}
    if os.path.isfile(os.path.join(path, TASK_FILE)):
        with open(os.path.join(path, TASK_FILE)) as f:
            info = json.load(f)
    else:  # not ours: guess the task from the model class the weights were saved as
        from safetensors import safe_open

        st = os.path.join(path, "model.safetensors")
        cls_name = ""
        if os.path.isfile(st):
            with safe_open(st, "pt") as f:
                cls_name = (f.metadata() or {}).get("model_class", "")
        cfg = RobertaConfig.load(path)
        task = {"RobertaForTokenClassification": "token-cls", "RobertaForQuestionAnswering": "qa"}.get(cls_name)
        info = {"task": task or "seq-cls", "max_length": cfg.max_tokens}
    task_cls = TASKS[info["task"]]
    model = task_cls.model_class.from_pretrained(path, attention="sdpa").eval().to(device or "cpu")
    cfg = model.config
    args = FinetuneArgs(task=info["task"], model=path, train="", out="",
                        max_length=min(info.get("max_length") or cfg.max_tokens, cfg.max_tokens),
                        stride=info.get("stride", 128), max_answer_length=info.get("max_answer_length", 30))
    task = task_cls(args, Tokenizer.from_pretrained(path),
                    label_names=cfg.label_names or [f"LABEL_{i}" for i in range(cfg.num_labels)],
                    regression=cfg.problem_type == "regression" or (info["task"] == "seq-cls" and cfg.num_labels == 1))
    if info["task"] == "qa":
        task.version_2 = info.get("version_2", False)
    return task, model


def read_inputs(task: Task, lines: list[str]) -> list[dict]:
    """predict's input: one input per line, plain text or a JSON object; or a whole SQuAD file."""
    text = "".join(lines)
    if task.name == "qa" and text.lstrip().startswith("{") and '"data"' in text[:200]:
        try:
            data = json.loads(text)["data"]
            return [{"id": qa.get("id"), "question": qa["question"], "context": p["context"]}
                    for art in data for p in art["paragraphs"] for qa in p["qas"]]
        except (json.JSONDecodeError, KeyError):
            pass
    rows = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        rows.append(json.loads(line) if line.lstrip().startswith("{") else task.parse_input(line))
    return rows


def predict(path: str, lines: list[str], batch_size: int = 32, device=None) -> list[dict]:
    task, model = load_finetuned(path, device)
    return task.predict(model, read_inputs(task, lines), batch_size, device or "cpu")
