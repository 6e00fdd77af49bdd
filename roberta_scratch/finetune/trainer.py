"""Fine-tuning: sequence classification, token classification (NER) and extractive QA.

    roberta-scratch finetune --task seq-cls --model PRETRAINED --train train.csv --eval dev.csv --out RUN
    roberta-scratch predict --model RUN/model texts.txt

Each task (tasks.py) reads its input format (finetune/readers.py), turns examples into model
inputs (features), pads them into batches, and scores predictions with the metrics in
metrics.py. FinetuneTrainer plugs a task into training.BaseTrainer, so fine-tuning shares
pretraining's loop, checkpoints, exact resume, NaN stop, SIGINT save, metrics.jsonl and
progress bar. Using the result is predict.py's job.

The defaults follow the RoBERTa paper's GLUE recipe: AdamW (0.9, 0.98, eps 1e-6), lr 2e-5
(the paper searched 1e-5..3e-5), batch 16 (16/32), weight decay 0.1, linear warmup over the
first 6% of steps then linear decay to 0, 10 epochs keeping the best checkpoint on the dev set.

Input formats (every bad row is reported as FILE:LINE and skipped, or stops the run, per --on-bad-row):
  seq-cls    CSV with a header, or JSONL: `text`, optional `text_pair`, `label`. String labels
             are classes (their names are saved with the model); numbers mean regression.
  token-cls  CoNLL (a token and its tag per line, the tag last; a blank line between sentences;
             -DOCSTART- lines skipped) or JSONL with `tokens` and `tags`. BIO / IOB2 tags.
  qa         SQuAD JSON, v1.1 or v2.0 (`is_impossible` questions with no answers).
  prompt-cls seq-cls's files, put into --template and scored by --verbalizer's words (prompt.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass

import torch

from ..checkpoints.adapter import describe as describe_adapter
from ..checkpoints.adapter import save_adapter
from ..checkpoints.formats import read_checkpoint, weights_fingerprint
from ..errors import TrainingError
from ..lora import add_lora, lora_tensors, parse_targets
from ..plots import plot_metrics
from ..run_args import RunArgs, option
from ..run_files import read_training_checkpoint
from ..tokenization.byte_level import load_tokenizer
from ..training import BaseTrainer, Built
from .prompt import check_prompt_flags, sample_shots
from .readers import BadRows, DataError
from .registry import TASKS

TASK_FILE = "finetune.json"  # written next to config.json: which task a model dir was trained for
LOWER_IS_BETTER = ("loss", "perplexity", "error")  # a metric whose name holds one of these: lower is better


def greater_is_better(metric: str) -> bool:
    """The default direction of a metric: lower is better for loss-like names (val_loss, eval_loss,
    perplexity, error_rate), higher for every other score (accuracy, f1, pearson, ...)."""
    return not any(word in metric.lower() for word in LOWER_IS_BETTER)


@dataclass(kw_only=True)
class FinetuneArgs(RunArgs):
    """`roberta-scratch finetune`: every field is also its command-line flag. The defaults follow
    the RoBERTa paper's GLUE recipe (see the module docstring)."""

    task: str = option(
        help="seq-cls, token-cls, qa or prompt-cls", choices=["seq-cls", "token-cls", "qa", "prompt-cls"]
    )
    model: str = option(help="a pretrained model dir (ours or Hugging Face) with its tokenizer")
    train: str = option(help="seq-cls: .csv/.jsonl; token-cls: CoNLL or .jsonl; qa: SQuAD .json")
    eval: str | None = option(None, "the eval file, same format; metrics after each epoch")
    out: str = option(help="run directory: ckpt/, metrics.jsonl, best/, model/")
    epochs: float = option(10.0, "passes over the training set (fractions allowed)", above=0)
    lr: float = option(2e-5, "peak learning rate", above=0)
    warmup_ratio: float = option(0.06, "share of the steps spent warming up", minimum=0)
    weight_decay: float = option(0.1, "AdamW weight decay (never on biases and LayerNorm weights)", minimum=0)
    clip: float = option(0.0, "max gradient norm; 0 (fairseq's GLUE recipe) turns clipping off", minimum=0)
    max_length: int | None = option(
        None, "tokens per example (default 512; qa 384), at most the model's positions", minimum=8
    )
    stride: int = option(128, "qa: tokens shared by consecutive windows of a long context", minimum=0)
    max_answer_length: int = option(30, "qa: the longest answer span considered, in tokens", minimum=1)
    label_type: str = option(
        "auto", "seq-cls: auto makes numeric labels regression", choices=["auto", "class", "regression"]
    )
    on_bad_row: str = option("skip", "skip bad rows with a count, or stop at the first", choices=["skip", "stop"])
    eval_every: int | None = option(None, "steps between evaluations (default: once per epoch)", minimum=1)
    save_every: int | None = option(None, "steps between checkpoints (default: once per epoch)", minimum=1)
    keep_last: int = option(2, "checkpoints kept in OUT/ckpt", minimum=1)
    # which parameters train (see FinetuneTrainer.freeze and lr_scale)
    freeze_embeddings: bool = option(
        False, "the embeddings (word, position, token type and their LayerNorm) do not train"
    )
    train_top_layers: int | None = option(
        None,
        "train only the top K encoder layers and the task head (0: the head alone, a linear probe); "
        "the embeddings train only when K is every layer (default: everything trains)",
        minimum=0,
    )
    layerwise_lr_decay: float = option(
        1.0,
        "layer-wise learning-rate decay D: encoder layer l of L trains at lr x D^(L-l), the embeddings at "
        "lr x D^L, the head at lr (1: off)",
        above=0,
        maximum=1,
    )
    # LoRA (roberta_scratch/lora.py): the encoder frozen, a low-rank update of some projections trains
    lora_r: int | None = option(
        None, "train a LoRA update of rank R on --lora-targets, the encoder frozen; saves an adapter", minimum=1
    )
    lora_alpha: float | None = option(
        None, "LoRA scale numerator: updates are scaled by alpha / r (default: r)", above=0
    )
    lora_dropout: float = option(0.0, "dropout on the input of each LoRA update", minimum=0, maximum=0.9)
    lora_targets: str | None = option(
        None, "the projections LoRA adapts, of query, key, value, proj, fc1, fc2 (default: query,value)"
    )
    # model selection and early stopping (see FinetuneTrainer.on_evaluated)
    metric: str | None = option(
        None, "the eval metric that picks OUT/best and drives --early-stopping (default: the task's own)"
    )
    greater_is_better: bool | None = option(
        None, "whether a larger --metric is better (default: no for loss-like names, else yes)", negatable=True
    )
    early_stopping: int | None = option(
        None, "stop after PATIENCE evaluations in a row without improving --metric (needs --eval)", minimum=1
    )
    # prompt-based few-shot classification (see finetune/prompt.py)
    template: str | None = option(None, "prompt-cls: the input as a cloze: {text}, optional {text_pair}, one <mask>")
    verbalizer: str | None = option(None, "prompt-cls: each label's word at <mask>, LABEL=WORD,... (single tokens)")
    shots: int | None = option(
        None, "train on K examples per class drawn with --seed (seq-cls, prompt-cls; default: all)", minimum=1
    )

    def __post_init__(self):
        super().__post_init__()
        self._check_lora()
        check_prompt_flags(self)
        if self.early_stopping is not None and not self.eval:
            raise TrainingError(
                f"--early-stopping {self.early_stopping} needs --eval: it stops when the eval set's metric "
                "stops improving"
            )

    def _check_lora(self) -> None:
        given = [f"--lora-{n}" for n in ("alpha", "targets") if getattr(self, f"lora_{n}") is not None]
        given += ["--lora-dropout"] if self.lora_dropout else []
        if self.lora_r is None:
            if given:
                needs = "need" if len(given) > 1 else "needs"
                raise TrainingError(f"{', '.join(given)} {needs} --lora-r R, the rank of the LoRA update")
            return
        if self.train_top_layers is not None or self.freeze_embeddings:
            raise TrainingError(
                "--lora-r freezes the whole encoder already: drop --train-top-layers and --freeze-embeddings"
            )
        try:
            self.lora_targets = ",".join(parse_targets(self.lora_targets or "query,value"))
        except ValueError as e:
            raise TrainingError(str(e)) from None
        if self.lora_alpha is None:
            self.lora_alpha = float(self.lora_r)

    # the model and the training data are compared by content, and epochs may change (run_args.RESUMING)
    RESUME_KEYS = RunArgs.RESUME_KEYS + (
        "task",
        "warmup_ratio",
        "max_length",
        "stride",
        "label_type",
        "freeze_embeddings",
        "train_top_layers",
        "layerwise_lr_decay",
        "metric",
        "greater_is_better",
        "early_stopping",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_targets",
        "template",
        "verbalizer",
        "shots",
    )
    ADJUSTABLE = RunArgs.ADJUSTABLE + ("warmup_ratio",)


# ----------------------------------------------------------------------------- the trainer


class FinetuneTrainer(BaseTrainer):
    """A task on top of the shared loop: the data are the task's features; an epoch is
    len(train features) / global batch steps (rounded up); evaluation and a checkpoint after
    each epoch; OUT/best holds the best model on the eval set and OUT/model the final one."""

    desc = "fine-tuning"
    extra_state_keys = ("best", "stale")  # the best eval so far, and evaluations since it (--early-stopping)

    def build(self) -> Built:
        a = self.args
        if a.task not in TASKS:
            raise TrainingError(f"--task {a.task!r} is not one of {sorted(TASKS)}")
        try:
            self.tok = load_tokenizer(a.model)
        except (FileNotFoundError, OSError, ValueError) as e:
            raise TrainingError(
                f"--model {a.model}: no tokenizer there ({e}); a model dir holds its tokenizer files too"
            ) from None
        self.task = TASKS[a.task](a, self.tok)
        self.skipped = {}
        train = self._read(a.train, "train", fit=True)
        if not train:
            raise DataError(f"{a.train}: no usable training examples")
        if a.shots:
            train = self._few_shot(train)
        self.eval_examples = self._read(a.eval, "eval") if a.eval else []
        if a.eval and not self.eval_examples:
            raise DataError(f"{a.eval}: no usable evaluation examples (every row was bad)")

        torch.manual_seed(a.seed)  # the fresh head starts the same on every rank and every run
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # a head trained for another label set starts afresh, with a warning naming it
            model = self.task.model_class.from_pretrained(
                a.model,
                reinit_mismatched_heads=True,
                trust_code=a.trust_code,
                attention=a.attention,
                **self.task.config_overrides(),
            )
        for w in caught:
            self._log(f"note: {w.message}")
        if model.config.quantization is not None:  # int8 weights have no gradients to follow
            raise TrainingError(
                f"{a.model} is an int8 model ({model.config.quantization['method']}): fine-tune the float "
                "model it was quantized from, then quantize the result"
            )
        self.freeze(model)
        self.adapter = self._add_lora(model) if a.lora_r else None
        max_length = min(a.max_length or self.task.default_max_length, model.config.max_tokens)
        # the task works with the effective settings; the caller's args stay as given
        self.task.args = dataclasses.replace(a, max_length=max_length)

        train_set = self.task.features(train)
        self.eval_features = self.task.features(self.eval_examples)
        # An epoch is steps_per_epoch steps (the last batch of a pass tops up from the next), so
        # --epochs 2 ends on an evaluation labelled epoch 2.0.
        self.steps_per_epoch = math.ceil(len(train_set) / self.global_batch)
        total_steps = max(1, math.ceil(a.epochs * self.steps_per_epoch))
        self.best, self.stale = None, 0
        metric = a.metric or self.task.best_metric
        if metric not in self.task.metric_names:
            raise TrainingError(
                f"--metric {metric!r} is not a metric of {a.task} evaluation, which gives: "
                + ", ".join(self.task.metric_names)
            )
        self._log(
            f"{a.task}: {len(train)} training examples ({len(train_set)} features), "
            f"{len(self.eval_examples)} eval; {total_steps} steps of {self.global_batch}, "
            f"{self.steps_per_epoch} per epoch"
        )
        resolved = {
            "max_length": max_length,
            "eval_every": a.eval_every or self.steps_per_epoch,
            "save_every": a.save_every or self.steps_per_epoch,
            "metric": metric,
            "greater_is_better": greater_is_better(metric) if a.greater_is_better is None else a.greater_is_better,
        }
        return Built(model, train_set, total_steps, round(a.warmup_ratio * total_steps), resolved)

    def freeze(self, model: torch.nn.Module) -> None:
        """--freeze-embeddings and --train-top-layers: what does not train gets requires_grad=False,
        so it receives no gradient and BaseTrainer gives it to no optimizer group (no AdamW state).
        With --train-top-layers K below the layer count the embeddings are frozen too: they sit
        under the frozen layers. The task head always trains."""
        a, layers = self.args, model.roberta.layers
        top = a.train_top_layers
        if top is not None and top > len(layers):
            raise TrainingError(
                f"--train-top-layers must be at most {len(layers)} (the layers of {a.model}), got {top}"
            )
        frozen = list(layers[: len(layers) - top]) if top is not None else []
        if a.freeze_embeddings or frozen:
            frozen.append(model.roberta.embeddings)
        for module in frozen:
            module.requires_grad_(False)

    def _add_lora(self, model: torch.nn.Module) -> dict:
        """--lora-r: freeze the encoder, add the updates, and return what the adapter file records
        besides its tensors: the settings, and the base model by path and by weights fingerprint."""
        a = self.args
        cfg, sd = read_checkpoint(a.model, trust_code=a.trust_code)
        targets = a.lora_targets.split(",")
        added = add_lora(model, a.lora_r, a.lora_alpha, targets, a.lora_dropout)
        meta = {
            "r": a.lora_r,
            "alpha": a.lora_alpha,
            "dropout": a.lora_dropout,
            "targets": targets,
            "base_model": os.path.abspath(a.model),
            "base_fingerprint": weights_fingerprint(sd),
            "config_overrides": self.task.config_overrides(),
        }
        self._log(f"LoRA {describe_adapter(meta)}: {added:,} parameters in {len(model.roberta.layers)} layers")
        if a.lr < 1e-4:
            self._log(
                f"note: --lr {a.lr:g} is low for LoRA, which usually takes 1e-4..1e-3 (the paper: 4e-4..5e-4 at base)"
            )
        return meta

    def lr_scale(self, name: str) -> float:
        """--layerwise-lr-decay D: encoder layer l (1..L, from the bottom) at lr x D^(L-l), the
        embeddings at lr x D^L, the task head at lr (ELECTRA's and DeBERTa's fine-tuning recipe)."""
        decay, n_layers = self.args.layerwise_lr_decay, len(self.raw_model.roberta.layers)
        if name.startswith("roberta.embeddings."):
            return decay**n_layers
        if name.startswith("roberta.layers."):
            return decay ** (n_layers - 1 - int(name.split(".")[2]))  # layers.0 is layer l = 1
        return 1.0

    def _read(self, path: str, split: str, fit: bool = False) -> list[dict]:
        if not os.path.isfile(path):
            raise DataError(f"--{split} {path}: no such file")
        bad = BadRows(path, self.args.on_bad_row)
        examples = self.task.read(path, bad)
        if fit:
            self.task = self.task.fit_labels(examples)
            said = self.task.describe_labels()
            if said:
                self._log(said)
        examples = self.task.check_labels(examples, bad)
        self.skipped[split] = len(bad.rows)
        if bad.summary():
            self._log(bad.summary())
        return examples

    def _few_shot(self, train: list[dict]) -> list[dict]:
        """--shots K: K training examples per class, the same ones for the same --seed."""
        if not getattr(self.task, "label_names", None) or self.task.name not in ("seq-cls", "prompt-cls"):
            raise TrainingError(f"--shots samples examples per class: {self.args.train} has no classes (regression)")
        picked, notes = sample_shots(train, self.args.shots, self.args.seed)
        for note in notes:
            self._log(f"note: {note}")
        self._log(f"few-shot: {len(picked)} of {len(train)} training examples (--shots {self.args.shots} per class)")
        return picked

    def collate(self, examples: list, step: int, micro_batch: int) -> dict:
        return self.task.collate(examples)

    def data_fingerprint(self) -> str:
        """What the model learns from: every training feature (ids and targets) and the labels."""
        h = hashlib.sha256(json.dumps(self.task.info(), sort_keys=True, default=str).encode())
        for f in self.train_set:
            h.update(json.dumps({k: v for k, v in f.items() if k != "example"}, sort_keys=True, default=str).encode())
        return h.hexdigest()

    def loss_weight(self, batch: dict) -> torch.Tensor:
        return self.task.loss_weight(batch).to(self.device)

    def evaluate(self) -> dict | None:
        if not self.eval_examples:
            return None
        self.raw_model.eval()
        try:
            with self._autocast():
                m = self.task.evaluate(
                    self.raw_model, self.eval_examples, self.eval_features, self.args.batch_size * 2, self.device
                )
        finally:
            self.raw_model.train()
        return {"epoch": round(self.step / self.steps_per_epoch, 3), **m}

    def on_evaluated(self, metrics: dict) -> None:
        """OUT/best by --metric; --early-stopping PATIENCE ends the run after PATIENCE evaluations in a
        row that do not beat the best so far (a tie is no improvement; NaN never improves)."""
        key, value = self.args.metric, metrics.get(self.args.metric)
        if value is None:  # the names were checked in build(): a task's metric_names is out of date
            raise TrainingError(f"--metric {key!r} is not among the evaluation's metrics: {', '.join(metrics)}")
        best = None if self.best is None else self.best["value"]
        if best is None or (not math.isnan(value) and (math.isnan(best) or self._beats(value, best))):
            self.best, self.stale = {"metric": key, "value": value, "step": self.step}, 0
            if self.rank == 0:
                self.save_model(os.path.join(self.args.out, "best"))
        else:
            self.stale += 1
        self._check_patience()

    def _beats(self, value: float, best: float) -> bool:
        return value > best if self.args.greater_is_better else value < best

    def _check_patience(self) -> None:
        patience = self.args.early_stopping
        if patience and self.stale >= patience:
            self.stop_early = (
                f"{self.best['metric']} has not improved for {self.stale} evaluation{'s' if self.stale > 1 else ''} "
                f"(best {self.best['value']:.4g} at step {self.best['step']})"
            )

    def load(self, path: str, state: dict | None = None) -> None:
        """A checkpoint older than --metric and --early-stopping resumes as what it was: selected by the
        task's metric, higher better, no early stopping, nothing counted (stale 0). A run that had
        already stopped early stays stopped (it goes straight to its export)."""
        state = read_training_checkpoint(path) if state is None else state
        saved = state.get("settings") or state["args"]
        for k, v in {"metric": self.task.best_metric, "greater_is_better": True, "early_stopping": None}.items():
            saved.setdefault(k, v)
        super().load(path, state)
        self._check_patience()

    def save_model(self, path: str) -> None:
        """A model dir predict can use: weights, config (with label names), tokenizer, task info.
        With --lora-r, an adapter folder instead (checkpoints/adapter.py): the trained tensors alone."""

        def write_task(folder: str) -> None:
            self.tok.save_pretrained(folder)
            with open(os.path.join(folder, TASK_FILE), "w") as f:
                json.dump(self.task.info(), f, indent=2)

        if self.adapter is not None:
            relative = os.path.relpath(self.adapter["base_model"], os.path.abspath(path))
            meta = {**self.adapter, "base_model_relative": relative}
            save_adapter(path, meta, lora_tensors(self.raw_model), write_extra=write_task)
            return
        self.raw_model.save_pretrained(path)
        write_task(path)

    def export(self) -> None:
        path = os.path.join(self.args.out, "model")
        self.save_model(path)
        best = (
            f"; the best on the eval set ({self.best['metric']} {self.best['value']:.4g} at step "
            f"{self.best['step']}) is in {os.path.join(self.args.out, 'best')}"
            if self.best
            else ""
        )
        png = os.path.join(self.args.out, "loss.png")
        drawn = plot_metrics(self.metrics_path, png, f"training loss: {self.task.loss_name}", "held-out loss")
        curve = f"; the loss curve is in {png}" if drawn else " (pip install matplotlib to draw loss.png)"
        self._log(f"saved the fine-tuned model and its tokenizer to {path}{best}{curve}")


def finetune(args: FinetuneArgs) -> int:
    trainer = FinetuneTrainer(args)
    try:
        return trainer.fit()
    finally:
        trainer.close()
