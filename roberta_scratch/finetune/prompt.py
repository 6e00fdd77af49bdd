"""Prompt-based few-shot classification (LM-BFF, Gao et al. 2021; PET, Schick & Schütze 2021).

    roberta-scratch finetune --task prompt-cls --template '{text} It was <mask>.' \\
        --verbalizer 'positive=great,negative=terrible' --shots 16 ...

Instead of a fresh classifier on <s>, the pretrained MLM head is asked to fill a blank: each
input is put into the template, and each label is a word of the vocabulary (the verbalizer).
The class scores are the MLM logits of the label words at <mask>, and fine-tuning minimises
the cross-entropy over those logits only (LM-BFF's objective). Nothing new is initialised, so
the model starts from what pretraining taught it, which is why prompting helps most when
there are few examples; the fine-tuned folder is still an MLM folder (fill-mask works on it).

    template    '{text} It was <mask>.'   {text}, optional {text_pair}, exactly one <mask>
    verbalizer  'positive=great,...'      one single-token word per label, all distinct
    --shots K   K training examples per class, drawn with --seed (seq-cls too, to compare)

A too long input loses tokens from the end of its text(s), never from the template: the
<mask> is always there to be read.
"""

from __future__ import annotations

import random
import re

import torch
import torch.nn.functional as F

from ..checkpoints.formats import save_ours
from ..errors import TrainingError
from ..model import Output, RobertaForMaskedLM, check_labels
from ..tokenization.byte_level import Tokenizer
from .readers import BadRows, DataError, read_labelled_texts
from .tasks import SequenceClassification, Task, warn_truncated

MASK = "<mask>"
PLACEHOLDERS = ("text", "text_pair")
TRUNCATED = "their text is cut to fit (the template and its <mask> are kept)"


# ----------------------------------------------------------------------------- the flags


def parse_template(template: str) -> list[str]:
    """The template as literal pieces and placeholders ("{text}", "{text_pair}"), checked: {text}
    once, {text_pair} at most once, no other {name}, exactly one <mask> in the literal text.

    >>> parse_template("{text} It was <mask>.")
    ['', '{text}', ' It was <mask>.']
    """
    names = re.findall(r"\{(\w*)\}", template)
    unknown = sorted({n for n in names if n not in PLACEHOLDERS})
    if unknown:
        raise TrainingError(
            f"--template {template!r}: unknown placeholder {{{unknown[0]}}}; a template has {{text}} and "
            "optionally {text_pair}"
        )
    for name in PLACEHOLDERS:
        if names.count(name) > 1:
            raise TrainingError(f"--template {template!r} has {{{name}}} {names.count(name)} times: give it once")
    if "text" not in names:
        raise TrainingError(f"--template {template!r} has no {{text}}: where does the input go?")
    masks = template.count(MASK)
    if masks != 1:
        raise TrainingError(
            f"--template {template!r} has {masks or 'no'} {MASK}{'s' if masks > 1 else ''}: it needs exactly one, "
            "the blank the label word fills"
        )
    return re.split(r"(\{text\}|\{text_pair\})", template)


def parse_verbalizer(verbalizer: str) -> dict[str, str]:
    """'positive=great,negative=terrible' -> {"positive": "great", "negative": "terrible"}: at
    least two labels, each named once, each with its own non-empty word."""
    words: dict[str, str] = {}
    for item in verbalizer.split(","):
        label, eq, word = item.partition("=")
        label, word = label.strip(), word.strip()
        if not eq or not label or not word:
            raise TrainingError(
                f"--verbalizer {verbalizer!r}: {item.strip()!r} is not LABEL=WORD "
                "(e.g. 'positive=great,negative=terrible')"
            )
        if label in words:
            raise TrainingError(f"--verbalizer {verbalizer!r} names the label {label!r} twice")
        words[label] = word
    if len(words) < 2:
        raise TrainingError(f"--verbalizer {verbalizer!r}: a classifier needs at least two labels, each with a word")
    same = [w for w in set(words.values()) if list(words.values()).count(w) > 1]
    if same:
        raise TrainingError(
            f"--verbalizer {verbalizer!r}: the word {same[0]!r} stands for several labels: each needs its own"
        )
    return words


def check_prompt_flags(args) -> None:
    """FinetuneArgs' checks of --template, --verbalizer and --shots, before any file is read."""
    prompt = args.task == "prompt-cls"
    for flag in ("template", "verbalizer"):
        given = getattr(args, flag) is not None
        if prompt and not given:
            example = "'{text} It was <mask>.'" if flag == "template" else "'positive=great,negative=terrible'"
            raise TrainingError(f"--task prompt-cls needs --{flag}, e.g. --{flag} {example}")
        if given and not prompt:
            raise TrainingError(f"--{flag} is for --task prompt-cls only (this run is --task {args.task})")
    if prompt:
        parse_template(args.template)
        parse_verbalizer(args.verbalizer)
        if args.label_type == "regression":
            raise TrainingError("--task prompt-cls classifies: --label-type regression is for seq-cls")
    if args.shots is not None and args.task not in ("seq-cls", "prompt-cls"):
        raise TrainingError(f"--shots samples examples per class: it is for seq-cls and prompt-cls, not {args.task}")


def sample_shots(examples: list[dict], k: int, seed: int) -> tuple[list[dict], list[str]]:
    """K examples of each class (by label), drawn with `seed`: the same K for the same seed and
    file, in file order. A class with fewer than K gives all it has, with a note.

    Returns (the examples, the notes)."""
    by_class: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_class.setdefault(str(e["label"]), []).append(i)
    rng, picked, notes = random.Random(seed), [], []
    for label in sorted(by_class):  # a fixed order, so each class's draw does not depend on the file's
        idx = by_class[label]
        if len(idx) < k:
            notes.append(f"class {label!r} has {len(idx)} training example(s), fewer than --shots {k}: all are used")
        picked += rng.sample(idx, min(k, len(idx)))
    return [examples[i] for i in sorted(picked)], notes


# ----------------------------------------------------------------------------- the model


class RobertaForPromptClassification(RobertaForMaskedLM):
    """RobertaForMaskedLM read as a classifier: the logits of the label words at <mask>.

    Its weights are exactly RobertaForMaskedLM's (it adds none), so a fine-tuned folder loads as
    either. Given mask_positions (B,) and label_word_ids (C,), the LM head runs at one position
    per sequence and only for the C label words' rows of the tied decoder, so logits is (B, C)
    and loss (with labels (B,) in [0, C)) their cross-entropy: the full head restricted to the
    label words gives the same numbers for (B x T x V) times the work. Without mask_positions it
    is the plain MLM model (fill-mask)."""

    def forward(
        self, input_ids, attention_mask=None, labels=None, mask_positions=None, label_word_ids=None, **kwargs
    ) -> Output:
        if mask_positions is None:
            return super().forward(input_ids, attention_mask, labels, **kwargs)
        if label_word_ids is None:
            raise ValueError("mask_positions needs label_word_ids: the vocabulary ids of the label words")
        h = self.roberta(input_ids, attention_mask).last_hidden_state  # (B, T, H)
        at_mask = h[torch.arange(h.shape[0], device=h.device), mask_positions]  # (B, H)
        logits = self.label_word_logits(at_mask, label_word_ids)  # (B, C)
        loss = None
        if labels is not None:
            check_labels(labels, (h.shape[0],), logits.shape[1])
            loss = F.cross_entropy(logits.float(), labels)
        return Output(loss=loss, logits=logits, last_hidden_state=h)

    def label_word_logits(self, h: torch.Tensor, word_ids: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., H) -> the logits (..., C) of the words `word_ids` (C,): predict()'s
        math with the decoder cut to those rows."""
        h = self.lm_head.norm(self.act(self.lm_head.dense(h)))
        return F.linear(h, self.roberta.embeddings.word_embeddings.weight[word_ids], self.lm_head.bias[word_ids])

    def save_pretrained(self, path: str) -> None:
        """An MLM folder: the weights are RobertaForMaskedLM's, and the file says so."""
        save_ours(self.config, self.state_dict(), path, model_class=RobertaForMaskedLM.__name__)


# ----------------------------------------------------------------------------- the task


class PromptClassification(SequenceClassification):
    """seq-cls's data, labels, metrics and results, scored by the label words at <mask>."""

    name, model_class = "prompt-cls", RobertaForPromptClassification
    loss_name = "cross-entropy over the label words' logits at <mask>"
    runs_in_onnx = False  # the exported graph is the MLM head over every position, without the verbalizer

    def __init__(self, args, tok: Tokenizer, label_names: list | None = None):
        super().__init__(args, tok)
        self.words = parse_verbalizer(args.verbalizer)
        self.label_names = list(self.words)  # the verbalizer's order
        self.plain = tok.plain_text()  # a "<mask>" written in an input is text, never a second blank
        self.pieces = self._encode_template(parse_template(args.template))
        self.word_ids = [self._word_id(w) for w in self.words.values()]

    def _encode_template(self, parts: list[str]) -> list:
        """Token ids of each literal piece; a placeholder stays a name, with a leading space when
        the template has one before it. subtle: pieces are encoded apart and joined, which is the
        whole string's encoding because byte-level BPE never merges across a space; the one space
        before a placeholder goes with the text, where the whole string's encoding puts it."""
        pieces, space = [], False
        for part in parts:
            if part in ("{text}", "{text_pair}"):
                pieces.append((part[1:-1], space))
                continue
            space = part.endswith(" ")
            literal = part[:-1] if space else part
            pieces.append(self.tok.encode(literal, add_special_tokens=False) if literal else [])
        return pieces

    def _word_id(self, word: str) -> int:
        """The id of `word` as it reads at the template's <mask>: after a space when one precedes
        the <mask> (the <mask> token swallows it), so 'great' is RoBERTa's 'Ġgreat'."""
        before = self.args.template.split(MASK)[0]
        text = (" " if before[-1:].isspace() else "") + word
        ids = self.plain.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            shown = ", ".join(repr(self.tok.decode([i])) for i in ids)
            raise TrainingError(
                f"verbalizer word {word!r} is {len(ids)} tokens here ({shown}): pick a word this model's "
                "vocabulary holds whole"
            )
        return ids[0]

    # ---- labels and what is saved --------------------------------------------------

    def fit_labels(self, examples: list[dict]) -> Task:
        """The labels are the verbalizer's; every training label must have a word."""
        missing = sorted({str(e["label"]) for e in examples} - set(self.words))
        if missing:
            raise DataError(
                f"{self.args.train}: label {missing[0]!r} has no word in --verbalizer {self.args.verbalizer!r}"
                + (f" (nor do {missing[1:]})" if len(missing) > 1 else "")
                + f": add {missing[0]}=WORD"
            )
        return self

    def describe_labels(self) -> str:
        pairs = ", ".join(
            f"{label} -> {self.tok.decode([i])!r}" for label, i in zip(self.words, self.word_ids, strict=True)
        )
        return f"labels: {len(self.words)} classes by their words at {MASK} ({pairs})"

    def config_overrides(self) -> dict:
        return {}  # no head to size: the config stays the MLM model's

    def info(self) -> dict:
        return {
            **Task.info(self),
            "template": self.args.template,
            "verbalizer": {
                label: {"word": w, "token_id": i}
                for (label, w), i in zip(self.words.items(), self.word_ids, strict=True)
            },
            "label_names": self.label_names,
        }

    @classmethod
    def saved_args(cls, info: dict) -> dict:
        return {
            "template": info["template"],
            "verbalizer": ",".join(f"{label}={v['word']}" for label, v in info["verbalizer"].items()),
        }

    @classmethod
    def from_saved(cls, info: dict, args, tok: Tokenizer, cfg) -> Task:
        task = cls(args, tok)
        saved = [v["token_id"] for v in info["verbalizer"].values()]
        if saved != task.word_ids:
            raise TrainingError(
                f"{args.model}: finetune.json's label word ids {saved} are not what its tokenizer gives "
                f"({task.word_ids}): the folder's tokenizer is not the one it was trained with"
            )
        return task

    # ---- reading and features ---------------------------------------------------------

    def read(self, path: str, bad: BadRows) -> list[dict]:
        """seq-cls's rows; one without a text_pair is bad when the template has {text_pair}, and a
        pair the template has no place for stops the run (the template is what is wrong)."""
        good = []
        for e in read_labelled_texts(path, bad):
            problem = self._pair_problem(e)
            if problem and e["text_pair"]:
                raise DataError(f"{path}:{e['line']}: {problem}")
            if problem:
                bad(e["line"], problem)
            else:
                good.append(e)
        return good

    def _pair_problem(self, row: dict) -> str | None:
        wants = "{text_pair}" in self.args.template
        if row.get("text_pair") and not wants:
            return "this row has a 'text_pair' but --template has no {text_pair} to put it in"
        if wants and not row.get("text_pair"):
            return "--template has {text_pair} but this row has no 'text_pair'"
        return None

    def encode(self, text: str, pair: str | None) -> tuple[list[int], int, int]:
        """(input_ids `<s> template with the texts </s>`, the <mask>'s position, the untruncated
        length). The texts lose tokens from their ends, the longer first, until it fits."""
        budget = self.args.max_length - 2 - sum(len(p) for p in self.pieces if isinstance(p, list))
        if budget < 1:
            raise DataError(
                f"--template {self.args.template!r} takes {self.args.max_length - 2 - budget} tokens: --max-length "
                f"{self.args.max_length} leaves no room for the text"
            )
        texts = {"text": text, "text_pair": pair or ""}
        ids = {
            name: self.plain.encode((" " if space else "") + texts[name], add_special_tokens=False)
            for name, space in (p for p in self.pieces if isinstance(p, tuple))
        }
        full = sum(map(len, ids.values()))
        keep = {name: len(v) for name, v in ids.items()}
        while sum(keep.values()) > budget:  # longest first, as the tokenizer's pair truncation
            longest = max(keep, key=keep.__getitem__)
            keep[longest] -= 1
        out = [self.tok.cls_token_id]
        for p in self.pieces:
            out += p if isinstance(p, list) else ids[p[0]][: keep[p[0]]]
        out.append(self.tok.sep_token_id)
        return out, out.index(self.tok.mask_token_id), len(out) + full - sum(keep.values())

    def features(self, examples: list[dict]) -> list[dict]:
        """The features of training or eval examples, with a warning when texts were cut."""
        feats = self._features(examples)
        warn_truncated([f["length"] for f in feats], self.args.max_length, TRUNCATED)
        return feats

    def _features(self, examples: list[dict]) -> list[dict]:
        feats = []
        for e in examples:
            ids, mask, length = self.encode(e["text"], e.get("text_pair"))
            feats.append({"input_ids": ids, "mask": mask, "label": e.get("target"), "length": length})
        return feats

    def model_kwargs(self, features: list[dict], device) -> dict:
        return {
            "mask_positions": torch.tensor([f["mask"] for f in features], device=device),
            "label_word_ids": torch.tensor(self.word_ids, device=device),
        }

    def collate_labels(self, features: list[dict]) -> dict:
        return {**super().collate_labels(features), **self.model_kwargs(features, "cpu")}

    def prepare(self, rows: list[dict], warn: bool = True) -> list[dict]:
        for r in rows:
            r.setdefault("text_pair", None)
            if not isinstance(r.get("text"), str) or not isinstance(r["text_pair"], (str, type(None))):
                raise DataError(f"a prompt-cls input needs a string 'text' (and optionally 'text_pair'), got {r}"[:300])
            problem = self._pair_problem(r)
            if problem:
                raise DataError(f"{problem.replace('this row', 'this input')}: {r['text'][:100]!r}")
        features = self._features(rows)
        if warn:
            warn_truncated([f["length"] for f in features], self.args.max_length, TRUNCATED)
        for f in features:
            f["truncated"] = f["length"] > self.args.max_length
        return features
