"""Fine-tuning tasks: what each one reads, learns, feeds the model, scores and predicts.

A task is a subclass of `Task` that fills in the hooks below; the trainer (finetune/trainer.py)
and `predict` (predict.py) call only these, so adding a task means writing one class
and naming it in TASKS (registry.py). The four here (prompt-cls is in prompt.py):

    seq-cls    SequenceClassification  classes from the <s> token (accuracy, macro F1)
               SequenceRegression      one number from the <s> token (Pearson, Spearman);
                                       seq-cls becomes it when the labels are numbers
    token-cls  TokenClassification     a BIO tag per word (entity-level F1, conlleval's rules)
    qa         QuestionAnswering       an answer span in a context (SQuAD exact match and F1)
"""

from __future__ import annotations

import json
import math
import re
import warnings

import torch

from ..config import IGNORE_INDEX, RobertaConfig
from ..model import RobertaForQuestionAnswering, RobertaForSequenceClassification, RobertaForTokenClassification
from ..tokenization.byte_level import Tokenizer
from . import metrics as M
from .readers import BadRows, DataError, is_number, read_labelled_texts, read_squad, read_tagged_words


def warn_truncated(lengths: list[int], limit: int, consequence: str = "only their beginning is used") -> None:
    """A warning when inputs are longer than the model takes: never cut text without a word."""
    long = [i for i, n in enumerate(lengths) if n > limit]
    if long:
        warnings.warn(
            f"{len(long)} input(s) are longer than the {limit} tokens this model takes "
            f"(the first: input {long[0] + 1}); {consequence}",
            stacklevel=3,
        )


def pad_rows(rows: list[list], value) -> torch.Tensor:
    """A (len(rows), longest) tensor, each row right-padded with `value`."""
    T = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (T - len(r)) for r in rows])


class Task:
    """The contract of a fine-tuning task. `args` are the run's FinetuneArgs (max_length,
    stride, label_type, ...); `tok` the model's tokenizer.

    Fields a subclass sets: `name` (the --task value), `model_class` (the head it trains),
    `best_metric` (the eval metric, higher is better, that picks OUT/best unless --metric says),
    `metric_names` (the scores evaluate() returns, what --metric may name) and
    `default_max_length` (tokens per example when --max-length is not given).
    """

    name: str
    model_class: type
    best_metric: str
    metric_names: tuple
    loss_name: str  # what the model's loss is, for the loss curve's label
    default_max_length: int = 512
    runs_in_onnx: bool = True  # whether `predict --backend onnx` can run it from the exported graph

    def __init__(self, args, tok: Tokenizer):
        self.args, self.tok = args, tok

    # ---- reading -----------------------------------------------------------------

    def read(self, path: str, bad: BadRows) -> list[dict]:
        """The examples of a training or eval file, one dict each with its "line"; bad rows go
        to `bad` as (line, problem)."""
        raise NotImplementedError

    def fit_labels(self, examples: list[dict]) -> Task:
        """Learn the label set from the training examples. Returns the task to train: this one,
        or a more specific one the data calls for (seq-cls with numeric labels -> regression)."""
        return self

    def check_labels(self, examples: list[dict], bad: BadRows) -> list[dict]:
        """The examples whose labels the fitted label set knows, each given its training target;
        the others go to `bad`."""
        return examples

    def describe_labels(self) -> str | None:
        """What fit_labels chose, said at the start of every run (None: nothing to say)."""
        names = getattr(self, "label_names", None)
        if not names:
            return None
        shown = ", ".join(map(str, names[:8])) + (" ..." if len(names) > 8 else "")
        return f"labels: {len(names)} classes ({shown})"

    # ---- the model ---------------------------------------------------------------

    def config_overrides(self) -> dict:
        """Config fields the head needs (num_labels, label names, problem_type)."""
        return {}

    def info(self) -> dict:
        """What predict needs besides the model and its config: saved as finetune.json."""
        return {"task": self.name, "max_length": self.args.max_length}

    @classmethod
    def saved_args(cls, info: dict) -> dict:
        """FinetuneArgs fields, besides max_length, that finetune.json `info` gives back at predict."""
        return {}

    @classmethod
    def from_saved(cls, info: dict, args, tok: Tokenizer, cfg: RobertaConfig) -> Task:
        """The task a saved model was trained for, from its finetune.json `info` and config."""
        return cls(args, tok)

    # ---- features and batches ----------------------------------------------------

    def features(self, examples: list[dict]) -> list[dict]:
        """Model inputs of the examples: dicts with "input_ids" and the targets (an example may
        give several features, as QA's windows do)."""
        raise NotImplementedError

    def collate_labels(self, features: list[dict]) -> dict:
        """The targets of a batch, as the model's keyword arguments (labels=..., ...)."""
        raise NotImplementedError

    def loss_weight(self, batch: dict) -> torch.Tensor:
        """How many items the model's loss on `batch` is the mean over (the trainer weights
        micro-batches by it): one per example here."""
        return torch.tensor(batch["input_ids"].shape[0])

    def collate(self, features: list[dict]) -> dict:
        """One training batch: padded input_ids, attention_mask and collate_labels()."""
        ids = pad_rows([f["input_ids"] for f in features], self.tok.pad_token_id)
        batch = {"input_ids": ids, "attention_mask": ids.ne(self.tok.pad_token_id).long()}
        batch.update(self.collate_labels(features))
        return batch

    def model_inputs(self, features: list[dict], device) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids and attention_mask of one inference batch."""
        ids = pad_rows([f["input_ids"] for f in features], self.tok.pad_token_id).to(device)
        return ids, ids.ne(self.tok.pad_token_id).long()

    def model_kwargs(self, features: list[dict], device) -> dict:
        """Model keyword arguments of one inference batch besides input_ids and attention_mask
        (prompt-cls: where the <mask> is, and the label words)."""
        return {}

    @torch.no_grad()
    def outputs(self, model, features: list[dict], batch_size: int, device) -> list:
        """Run the model over features in batches: what each feature gives (split_outputs), cut
        to its own length, so that no result depends on which features shared its batch."""
        outs = []
        for i in range(0, len(features), batch_size):
            chunk = features[i : i + batch_size]
            ids, mask = self.model_inputs(chunk, device)
            out = model(ids, attention_mask=mask, **self.model_kwargs(chunk, device))
            outs += self.split_outputs(out, [len(f["input_ids"]) for f in chunk])
        return outs

    def split_outputs(self, out, lengths: list[int]) -> list:
        """One batch's model output as one item per feature, float32 on the CPU."""
        raise NotImplementedError

    # ---- evaluation and prediction -----------------------------------------------

    def evaluate(self, model, examples: list[dict], features: list[dict], batch_size: int, device) -> dict:
        """Held-out metrics, `best_metric` among them."""
        raise NotImplementedError

    # Prediction runs in three steps, so that the server (serve/) can batch the model step across
    # requests: prepare (check and tokenize) -> outputs (the model) -> finish (shape the results).

    def prepare(self, rows: list[dict], warn: bool = True) -> list[dict]:
        """The features of predict's input rows, each with "input_ids" and "truncated" (it lost
        tokens to max_length; warn=True says so in a warning). A DataError names a bad row."""
        raise NotImplementedError

    def finish(self, rows: list[dict], features: list[dict], outputs: list) -> list[dict]:
        """One JSON-able result per row (labels, entities or answers), from its features' outputs."""
        raise NotImplementedError

    def predict(self, model, rows: list[dict], batch_size: int, device) -> list[dict]:
        """One JSON-able result per input row."""
        features = self.prepare(rows)
        return self.finish(rows, features, self.outputs(model, features, batch_size, device))

    def parse_input(self, line: str) -> dict:
        """An input row from a plain-text line of predict's input."""
        return {"text": line}

    def read_inputs(self, lines: list[str]) -> list[dict]:
        """predict's input rows: one a non-blank line, a JSON object or plain text (parse_input).
        A line that starts like JSON but is not a JSON object is a row {"_unreadable": why} in its place,
        so that every input still gets its one output line."""
        rows = []
        for n, line in enumerate(lines, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if not line.lstrip().startswith("{"):
                rows.append(self.parse_input(line))
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                row = {"_unreadable": f"line {n}: not valid JSON ({e.msg} at column {e.colno})"}
            rows.append(row if isinstance(row, dict) else {"_unreadable": f"line {n}: not a JSON object"})
        return rows


# ----------------------------------------------------------------------------- sequence classification


def _whole_number(label) -> bool:
    """An int (never a bool), or a string that writes one: "0", "-3"; not 1.0 or "1.0"."""
    if isinstance(label, bool):
        return False
    return isinstance(label, int) or (isinstance(label, str) and re.fullmatch(r"\s*[+-]?\d+\s*", label) is not None)


class SequenceClassification(Task):
    """Classes from the <s> token; string labels are class names, saved with the model."""

    name, model_class, best_metric = "seq-cls", RobertaForSequenceClassification, "accuracy"
    metric_names = ("accuracy", "macro_f1")
    loss_name = "cross-entropy over the classes"

    def __init__(self, args, tok: Tokenizer, label_names: list | None = None):
        super().__init__(args, tok)
        self.label_names = label_names

    def read(self, path: str, bad: BadRows) -> list[dict]:
        return read_labelled_texts(path, bad)

    def fit_labels(self, examples: list[dict]) -> Task:
        """auto: whole numbers are class ids (GLUE's and SST-2's 0/1, as Hugging Face reads them);
        numbers with a fraction or an exponent (JSON floats, CSV values such as 0.25) mean
        regression; anything else is a class name. --label-type class|regression says so
        explicitly."""
        kind = self.args.label_type
        if kind == "auto":
            parse = self.args.train.endswith(".csv")
            numbers = all(is_number(e["label"], parse) for e in examples)
            kind = "regression" if numbers and not all(_whole_number(e["label"]) for e in examples) else "class"
        if kind == "regression":
            targets = {float(e["label"]) for e in examples if is_number(e["label"], True)}
            targets = {t for t in targets if math.isfinite(t)}
            if len(targets) < 2:
                raise DataError(
                    f"{self.args.train}: every training example has the target "
                    f"{sorted(targets) or 'none that is a finite number'}: a regression needs targets "
                    "that vary (for class names, pass --label-type class)"
                )
            return SequenceRegression(self.args, self.tok)
        self.label_names = sorted({str(e["label"]) for e in examples})
        if len(self.label_names) < 2:
            raise DataError(
                f"{self.args.train}: every training example has the label {self.label_names}: a "
                "classifier needs at least two classes (for a numeric target, pass --label-type "
                "regression)"
            )
        return self

    def check_labels(self, examples: list[dict], bad: BadRows) -> list[dict]:
        good = []
        for e in examples:
            if str(e["label"]) not in self.label_names:
                bad(e["line"], f"label {e['label']!r} was not seen in training (known: {self.label_names})")
                continue
            e["target"] = self.label_names.index(str(e["label"]))
            good.append(e)
        return good

    def config_overrides(self) -> dict:
        return dict(
            num_labels=len(self.label_names), label_names=self.label_names, problem_type="single_label_classification"
        )

    @classmethod
    def from_saved(cls, info: dict, args, tok: Tokenizer, cfg: RobertaConfig) -> Task:
        if info.get("label_type") == "regression" or cfg.problem_type == "regression" or cfg.num_labels == 1:
            return SequenceRegression(args, tok)
        return cls(args, tok, cfg.label_names or [f"LABEL_{i}" for i in range(cfg.num_labels)])

    def features(self, examples: list[dict]) -> list[dict]:
        if not examples:
            return []
        workers = 1 if len(examples) < 10_000 else None  # a process pool only pays off on big files
        pairs = [e["text_pair"] for e in examples]
        if any(pairs) and not all(pairs):  # some rows have a pair and some do not: encode one by one
            rows = [
                self.tok(e["text"], e["text_pair"], truncation=True, max_length=self.args.max_length)["input_ids"]
                for e in examples
            ]
        else:
            rows = self.tok(
                [e["text"] for e in examples],
                pairs if any(pairs) else None,
                truncation=True,
                max_length=self.args.max_length,
                num_workers=workers,
            )["input_ids"]
        return [{"input_ids": ids, "label": e.get("target")} for ids, e in zip(rows, examples, strict=True)]

    def collate_labels(self, features: list[dict]) -> dict:
        return {"labels": torch.tensor([f["label"] for f in features], dtype=torch.long)}

    def split_outputs(self, out, lengths: list[int]) -> list:
        return list(out.logits.float().cpu())

    def predictions(self, model, features, batch_size, device) -> list:
        """Per feature: the probability of each class."""
        return self.scores(self.outputs(model, features, batch_size, device))

    def scores(self, outputs: list) -> list:
        return torch.stack(outputs).softmax(-1).tolist()

    def evaluate(self, model, examples, features, batch_size, device) -> dict:
        preds = self.predictions(model, features, batch_size, device)
        gold = [f["label"] for f in features]
        argmax = [max(range(len(p)), key=p.__getitem__) for p in preds]
        return {"accuracy": M.accuracy(argmax, gold), "macro_f1": M.macro_f1(argmax, gold), "examples": len(gold)}

    def finish(self, rows: list[dict], features: list[dict], outputs: list) -> list[dict]:
        out = []
        for r, p in zip(rows, self.scores(outputs), strict=True):
            best = max(range(len(p)), key=p.__getitem__)
            out.append(
                {
                    **self._echo(r),
                    "label": self.label_names[best],
                    "probability": p[best],
                    "probabilities": dict(zip(self.label_names, p, strict=True)),
                }
            )
        return out

    def prepare(self, rows: list[dict], warn: bool = True) -> list[dict]:
        for r in rows:
            r.setdefault("text_pair", None)
            if not isinstance(r.get("text"), str) or not isinstance(r["text_pair"], (str, type(None))):
                raise DataError(f"a seq-cls input needs a string 'text' (and optionally 'text_pair'), got {r}"[:300])
        if not rows:
            return []
        lengths = [len(ids) for ids in self.tok([r["text"] for r in rows], num_workers=1)["input_ids"]]
        lengths = [n + (2 if r["text_pair"] else 0) for n, r in zip(lengths, rows, strict=True)]
        if warn:
            warn_truncated(lengths, self.args.max_length)
        features = self.features(rows)
        for f, n in zip(features, lengths, strict=True):
            f["truncated"] = n > self.args.max_length
        return features

    @staticmethod
    def _echo(row: dict) -> dict:
        """The input as it is repeated in the result: text, and text_pair when there is one."""
        return {"text": row["text"], **({"text_pair": row["text_pair"]} if row.get("text_pair") else {})}


class SequenceRegression(SequenceClassification):
    """One number from the <s> token (STS-B), trained with mean squared error."""

    best_metric = "pearson"
    metric_names = ("pearson", "spearman")
    loss_name = "mean squared error"

    def __init__(self, args, tok: Tokenizer, label_names: list | None = None):
        super().__init__(args, tok, None)

    def info(self) -> dict:
        return {**super().info(), "label_type": "regression"}

    def describe_labels(self) -> str:
        why = (
            "chosen by --label-type"
            if self.args.label_type == "regression"
            else "numbers with a fraction; --label-type class makes them class ids"
        )
        return f"labels: regression ({why})"

    def check_labels(self, examples: list[dict], bad: BadRows) -> list[dict]:
        good = []
        for e in examples:
            try:
                e["target"] = float(e["label"])
            except (TypeError, ValueError):
                bad(e["line"], f"label {e['label']!r} is not a number (this is a regression task)")
                continue
            if not math.isfinite(e["target"]):
                bad(e["line"], f"label {e['label']!r} is not a finite number (this is a regression task)")
                continue
            good.append(e)
        return good

    def config_overrides(self) -> dict:
        return dict(num_labels=1, label_names=None, problem_type="regression")

    def collate_labels(self, features: list[dict]) -> dict:
        return {"labels": torch.tensor([f["label"] for f in features], dtype=torch.float32)}

    def scores(self, outputs: list) -> list:
        """Per feature: the predicted number."""
        return torch.stack(outputs)[:, 0].tolist()

    def evaluate(self, model, examples, features, batch_size, device) -> dict:
        preds = self.predictions(model, features, batch_size, device)
        gold = [f["label"] for f in features]
        return {"pearson": M.pearson(preds, gold), "spearman": M.spearman(preds, gold), "examples": len(gold)}

    def finish(self, rows: list[dict], features: list[dict], outputs: list) -> list[dict]:
        values = self.scores(outputs)
        return [{**self._echo(r), "value": v} for r, v in zip(rows, values, strict=True)]


# ----------------------------------------------------------------------------- token classification


class TokenClassification(Task):
    """NER: a tag per word; each word's tag goes on its first sub-token, the others get -100."""

    name, model_class, best_metric = "token-cls", RobertaForTokenClassification, "f1"
    metric_names = ("precision", "recall", "f1")
    loss_name = "cross-entropy over the tags of words' first sub-tokens"

    def __init__(self, args, tok: Tokenizer, label_names: list | None = None):
        super().__init__(args, tok)
        self.label_names = label_names

    @classmethod
    def from_saved(cls, info: dict, args, tok: Tokenizer, cfg: RobertaConfig) -> Task:
        return cls(args, tok, cfg.label_names or [f"LABEL_{i}" for i in range(cfg.num_labels)])

    def read(self, path: str, bad: BadRows) -> list[dict]:
        return read_tagged_words(path, bad)

    def fit_labels(self, examples: list[dict]) -> Task:
        names = sorted({t for e in examples for t in e["tags"]} - {"O"}, key=lambda t: (t[2:], t))
        self.label_names = ["O"] + names  # O first, then B-/I- of each type side by side
        if not names:
            raise DataError(f"{self.args.train}: every word is tagged O: there is no entity type to learn")
        return self

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
        enc = self.tok(
            [e["tokens"] for e in examples], is_split_into_words=True, truncation=True, max_length=self.args.max_length
        )
        feats = []
        for i, e in enumerate(examples):
            words = enc.word_ids(i)
            labels = align_labels(words, [self.label_names.index(t) for t in e["tags"]] if "tags" in e else None)
            feats.append({"input_ids": enc["input_ids"][i], "labels": labels, "word_ids": words})
        return feats

    def collate_labels(self, features: list[dict]) -> dict:
        return {"labels": pad_rows([f["labels"] for f in features], IGNORE_INDEX)}

    def loss_weight(self, batch: dict) -> torch.Tensor:
        """The labelled tokens (each word's first sub-token): the loss is their mean."""
        return (batch["labels"] != IGNORE_INDEX).sum()

    def split_outputs(self, out, lengths: list[int]) -> list:
        logits = out.logits.float().cpu()
        return [logits[i, :n] for i, n in enumerate(lengths)]

    def word_predictions(self, examples, features, outputs) -> list[list[tuple[str, float]]]:
        """(tag, probability) per word; a word cut off by truncation is O."""
        result = []
        for e, f, logits in zip(examples, features, outputs, strict=True):
            p = logits.softmax(-1)
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
        pred = self.word_predictions(examples, features, self.outputs(model, features, batch_size, device))
        scores = M.entity_prf([e["tags"] for e in examples], [[t for t, _ in p] for p in pred])
        return {**scores, "sentences": len(examples)}

    def prepare(self, rows: list[dict], warn: bool = True) -> list[dict]:
        """One feature per row that has words (a row without words gets an empty result)."""
        for r in rows:
            if "tokens" not in r:  # plain text: split into words, keeping each word's characters
                if not isinstance(r.get("text"), str):
                    raise DataError(f"a token-cls input needs a string 'text' or a list 'tokens', got {r}"[:300])
                spans = [(m.start(), m.end()) for m in re.finditer(r"\w+|[^\w\s]", r["text"])]
                r["tokens"], r["spans"] = [r["text"][a:b] for a, b in spans], spans
            elif not isinstance(r["tokens"], list) or not all(isinstance(t, str) for t in r["tokens"]):
                raise DataError(f"a token-cls input's 'tokens' must be a list of strings, got {r['tokens']!r}"[:300])
        rows = [r for r in rows if r["tokens"]]
        features = self.features(rows)
        for r, f in zip(rows, features, strict=True):  # a row whose last word has no token left was cut short
            f["truncated"] = len(r["tokens"]) - 1 not in f["word_ids"]
        if warn:
            warn_truncated(
                [self.args.max_length + 1 if f["truncated"] else 0 for f in features],
                self.args.max_length,
                "the words past the end are tagged O",
            )
        return features

    def finish(self, rows: list[dict], features: list[dict], outputs: list) -> list[dict]:
        every, rows = rows, [r for r in rows if r["tokens"]]
        preds = self.word_predictions(rows, features, outputs)
        out = []
        for r, p in zip(rows, preds, strict=True):
            ents = []
            for kind, a, b in M.entity_spans([t for t, _ in p]):
                ent = {
                    "type": kind,
                    "words": [a, b],
                    "text": " ".join(r["tokens"][a:b]),
                    "score": min(s for _, s in p[a:b]),
                }
                if "spans" in r:
                    ent["start"], ent["end"] = r["spans"][a][0], r["spans"][b - 1][1]
                    ent["text"] = r["text"][ent["start"] : ent["end"]]
                ents.append(ent)
            out.append({"text": r.get("text", " ".join(r["tokens"])), "entities": ents})
        found = iter(out)
        return [next(found) if r["tokens"] else {"text": r.get("text", ""), "entities": []} for r in every]


def align_labels(word_ids: list, word_labels: list | None) -> list[int]:
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


# ----------------------------------------------------------------------------- question answering


class QuestionAnswering(Task):
    """Extractive QA. A long context is cut into windows of max_length tokens that overlap by
    `stride` tokens, each `<s> question </s></s> context piece </s>`. A window that holds the
    whole answer points at it; one that does not (and an unanswerable question) points at <s>.
    At prediction, the best span over all windows wins; for SQuAD v2.0-trained models, ""
    when <s> (the "no answer" score) beats it."""

    name, model_class, best_metric = "qa", RobertaForQuestionAnswering, "f1"
    metric_names = ("exact_match", "f1")
    loss_name = "cross-entropy of the answer's start and end"
    default_max_length = 384
    max_question_tokens = 64

    def __init__(self, args, tok: Tokenizer, version_2: bool = False):
        super().__init__(args, tok)
        self.version_2 = version_2

    def info(self) -> dict:
        return {
            **super().info(),
            "stride": self.args.stride,
            "max_answer_length": self.args.max_answer_length,
            "version_2": self.version_2,
        }

    @classmethod
    def from_saved(cls, info: dict, args, tok: Tokenizer, cfg: RobertaConfig) -> Task:
        return cls(args, tok, version_2=info.get("version_2", False))

    def read(self, path: str, bad: BadRows) -> list[dict]:
        return read_squad(path, bad)

    def fit_labels(self, examples: list[dict]) -> Task:
        self.version_2 = any(not e["answers"] for e in examples)
        return self

    def features(self, examples: list[dict]) -> list[dict]:
        feats = []
        for k, e in enumerate(examples):
            try:
                windows = qa_windows(
                    self.tok,
                    e["question"],
                    e["context"],
                    self.args.max_length,
                    self.args.stride,
                    self.max_question_tokens,
                    e["answers"][0] if e.get("answers") else None,
                )
            except ValueError as err:
                raise DataError(f"--max-length / --stride: {err}") from None
            feats += [{**f, "example": k} for f in windows]
        return feats

    def collate_labels(self, features: list[dict]) -> dict:
        return {
            "start_positions": torch.tensor([f["start"] for f in features]),
            "end_positions": torch.tensor([f["end"] for f in features]),
        }

    def split_outputs(self, out, lengths: list[int]) -> list:
        starts, ends = out.start_logits.float().cpu(), out.end_logits.float().cpu()
        return [(starts[i, :n], ends[i, :n]) for i, n in enumerate(lengths)]

    def answers(self, examples, features, outputs) -> list[dict]:
        """The best answer of each example over its windows: text, character span, its probability
        in its window (softmax of the start logits at its start times softmax of the end logits
        at its end, over the window's own tokens) and logit_score, the sum of those two logits
        that picks the answer."""
        best = [
            {
                "answer": "",
                "start": None,
                "end": None,
                "score": -math.inf,
                "null": math.inf,
                "probability": 0.0,
                "null_probability": 0.0,
            }
            for _ in examples
        ]
        L = self.args.max_answer_length
        for f, (s, e) in zip(features, outputs, strict=True):
            b = best[f["example"]]
            p_start, p_end = s.softmax(-1), e.softmax(-1)
            if float(s[0] + e[0]) < b["null"]:
                b["null"], b["null_probability"] = float(s[0] + e[0]), float(p_start[0] * p_end[0])
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
                b.update(
                    answer=context[cs:ce],
                    start=cs,
                    end=ce,
                    score=score,
                    probability=float(p_start[lo + a] * p_end[lo + z]),
                )
        for b in best:
            if self.version_2 and b["null"] > b["score"]:
                b.update(answer="", start=None, end=None, score=b["null"], probability=b["null_probability"])
            b["logit_score"] = b.pop("score")  # a sum of logits, not a probability: named for what it is
            del b["null"], b["null_probability"]
        return best

    def evaluate(self, model, examples, features, batch_size, device) -> dict:
        preds = self.answers(examples, features, self.outputs(model, features, batch_size, device))
        scores = M.squad_scores([[a["text"] for a in e["answers"]] for e in examples], [p["answer"] for p in preds])
        return {**scores, "questions": len(examples)}

    def prepare(self, rows: list[dict], warn: bool = True) -> list[dict]:
        """The windows of each row; a long context is windowed, never truncated."""
        for r in rows:
            if not isinstance(r.get("question"), str) or not isinstance(r.get("context"), str):
                raise DataError(f"a QA input needs 'question' and 'context', got keys {sorted(r)}")
        return [{**f, "truncated": False} for f in self.features(rows)]

    def finish(self, rows: list[dict], features: list[dict], outputs: list) -> list[dict]:
        preds = self.answers(rows, features, outputs)
        # a SQuAD question keeps its id, so the official evaluator can read the answers
        return [
            {**({"id": r["id"]} if r.get("id") is not None else {}), "question": r["question"], **p}
            for r, p in zip(rows, preds, strict=True)
        ]

    def parse_input(self, line: str) -> dict:
        raise DataError("QA input lines must be JSON objects with 'question' and 'context'")

    def read_inputs(self, lines: list[str]) -> list[dict]:
        """One JSON object with 'question' and 'context' per line, or a whole SQuAD file."""
        text = "".join(lines)
        if text.lstrip().startswith("{") and '"data"' in text[:200]:
            try:
                data = json.loads(text)["data"]
                return [
                    {"id": qa.get("id"), "question": qa["question"], "context": p["context"]}
                    for art in data
                    for p in art["paragraphs"]
                    for qa in p["qas"]
                ]
            except (json.JSONDecodeError, KeyError):
                pass
        return super().read_inputs(lines)


def qa_windows(
    tok: Tokenizer,
    question: str,
    context: str,
    max_length: int,
    stride: int,
    max_question_tokens: int = 64,
    answer: dict | None = None,
) -> list[dict]:
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
        raise ValueError(
            f"max_length {max_length} leaves {budget} context tokens per window after a "
            f"{len(q)}-token question; that must be more than the stride ({stride})"
        )
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
        out.append(
            {
                "input_ids": head + ids[s:e] + [tok.sep_token_id],
                "offsets": [None] * len(head) + [tuple(o) for o in offs[s:e]] + [None],
                "start": pos[0],
                "end": pos[1],
            }
        )
    return out
