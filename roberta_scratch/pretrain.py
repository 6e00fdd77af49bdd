"""MLM pretraining, the RoBERTa recipe, on top of the shared loop (training.BaseTrainer).

Dynamic masking, FULL-SENTENCES blocks, big batches through gradient accumulation,
AdamW(0.9, 0.98, eps 1e-6, wd 0.01), warmup then linear decay.

One process, or DistributedDataParallel under torchrun (gloo on CPU, nccl on GPU):

    roberta-scratch pretrain --data DATA --config tiny --out RUN --steps 1000
    torchrun --nproc_per_node=8 -m roberta_scratch pretrain --data DATA --config base ...

Each micro-batch's mask is drawn from a generator seeded by (seed, step, micro-batch index),
so a resumed run draws the masks it would have drawn, and N ranks draw the same masks as
one rank on the same global batch.

The RoBERTa paper's ablations run through the same loop:
  --packing full | doc                    FULL- and DOC-SENTENCES: RobertaForMaskedLM
  --packing segment-pair | sentence-pair  BERT's formats with next-sentence prediction (pairs.py,
                                          data prepared with --sentences): RobertaForPreTraining with
                                          two token types, trained on MLM + NSP
  --static-masking, --static-copies K     BERT's static masks: one fixed mask, or K copies of the
                                          data with K masks (its dupe_factor) instead of dynamic ones
Whatever the run, the held-out MLM metrics (val_loss, val_ppl, val_acc) are measured on the
same blocks: the val split's FULL-SENTENCES blocks, masked once with --eval-seed (not --seed),
so runs of other packings, maskings or seeds are scored on identical inputs. Pair runs also
report val_nsp_acc on held-out pairs of the val split.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass

import torch

from .config import IGNORE_INDEX, PRESETS, RobertaConfig
from .data.masking import DynamicMaskingCollator, StaticCopies
from .data.packed import files_dir, load_meta
from .data.packed_dataset import PackedDataset
from .data.pairs import PAIR_MODES, PairDataset
from .errors import TrainingError
from .fileio import lock_dir
from .flops import mlm_training_flops_per_token
from .model import RobertaForMaskedLM, RobertaForPreTraining
from .plots import plot_metrics
from .run_args import RunArgs, option
from .tokenization.byte_level import load_tokenizer
from .training import BaseTrainer, Built, seed_for


@dataclass(kw_only=True)
class TrainArgs(RunArgs):
    """`roberta-scratch pretrain`: every field is also its command-line flag."""

    data: str = option(help="a directory made by `roberta-scratch prepare`")
    out: str = option(help="run directory: ckpt/, metrics.jsonl, loss.png, model/")
    config: str = option("tiny", "tiny|small|base|large or a config.json")
    steps: int = option(1000, "optimizer steps", minimum=1)
    warmup: int = option(100, "steps of linear warmup, then linear decay to 0", minimum=0)
    seq_len: int | None = option(None, "block length (default: the data's)", minimum=8)
    packing: str = option(
        "full",
        "input format: full (FULL-SENTENCES), doc (DOC-SENTENCES), segment-pair "
        "(SEGMENT-PAIR+NSP) or sentence-pair (SENTENCE-PAIR+NSP); the pair formats need "
        "data prepared with --sentences",
        choices=["full", "doc", *PAIR_MODES],
    )
    mlm_probability: float = option(0.15, "share of tokens selected for prediction")
    whole_word: bool = option(False, "mask whole words")
    static_masking: bool = option(
        False,
        "BERT's static masks instead of dynamic ones: one fixed mask per sequence (the same as --static-copies 1)",
    )
    static_copies: int = option(
        0, "BERT's static masking: K fixed masks per sequence, the data duplicated K times (0 = dynamic)"
    )
    eval_mlm_probability: float | None = option(
        None,
        "share of tokens masked in the held-out set (default: "
        "--mlm-probability); fix it to compare runs that train "
        "with different rates",
    )
    eval_blocks: int = option(256, "size of the fixed, pre-masked validation set", minimum=1)
    eval_seed: int = option(
        0,
        "seeds the held-out set's masks and pairs; not --seed, so that runs of every seed, "
        "packing and masking are scored on the same inputs",
    )

    # data and config are compared by content, and steps may change (run_args.RESUMING)
    RESUME_KEYS = RunArgs.RESUME_KEYS + (
        "warmup",
        "seq_len",
        "packing",
        "mlm_probability",
        "whole_word",
        "static_masking",
        "static_copies",
    )
    ADJUSTABLE = RunArgs.ADJUSTABLE + ("warmup",)


class Trainer(BaseTrainer):
    """MLM pretraining on a prepared data directory: the model, the masking, the held-out set."""

    desc = "pretraining"
    eval_at_start = True

    def build(self) -> Built:
        a = self.args
        meta = load_meta(a.data)
        self.meta = meta
        # subtle: the run keeps the tokenizer of the data it opened, and model/ gets that one, even
        # if the folder is prepared again meanwhile (fit holds it against that: hold_inputs)
        self.tokenizer = load_tokenizer(os.path.join(files_dir(a.data, meta), "tokenizer"))
        seq_len = a.seq_len or meta["seq_len"]  # the effective --seq-len (Built.resolved)
        self.pairs = a.packing in PAIR_MODES
        copies = self._static_copies()
        has_val = bool(meta["splits"]["val"]["tokens"])
        if not has_val and a.eval_every:
            self._log(
                f"note: {a.data} holds no held-out documents (prepared with --val-fraction 0, or too few "
                "documents), so this run writes no held-out metric"
            )
        if self.pairs:
            if not meta.get("sentences"):
                raise TrainingError(
                    f"--packing {a.packing} needs sentence boundaries, and {a.data} was prepared "
                    "without them: run `roberta-scratch prepare --sentences ...` again"
                )
            train_set = self._pairs("train", a.seed, seq_len)
        else:
            train_set = PackedDataset(a.data, "train", seq_len, a.packing)
        if copies:
            train_set = StaticCopies(train_set, copies)
        # the held-out MLM set is FULL-SENTENCES blocks whatever the packing: comparable across runs
        self.val_set = PackedDataset(a.data, "val", seq_len, "full") if has_val else None
        self.val_pairs = None
        if self.pairs and has_val:
            try:
                self.val_pairs = PairDataset(a.data, "val", seq_len, a.packing, seed=a.eval_seed)
            except ValueError as e:
                self._log(f"note: no held-out next-sentence accuracy: {e}")
        self.cfg = self._model_config(meta, seq_len)
        self.collator = self._collator(meta, static=bool(copies))
        eval_rate = a.mlm_probability if a.eval_mlm_probability is None else a.eval_mlm_probability
        self.eval_collator = self._collator(meta, static=False, mlm_probability=eval_rate)
        torch.manual_seed(a.seed)  # the same initial weights on every rank
        model = RobertaForPreTraining(self.cfg) if self.pairs else RobertaForMaskedLM(self.cfg)
        return Built(model, train_set, a.steps, a.warmup, resolved={"seq_len": seq_len})

    def _pairs(self, split: str, seed: int, seq_len: int) -> PairDataset:
        try:
            return PairDataset(self.args.data, split, seq_len, self.args.packing, seed=seed)
        except ValueError as e:
            raise TrainingError(str(e)) from None

    def _static_copies(self) -> int:
        """K, the static masks per sequence (0: dynamic masking), from --static-copies and --static-masking."""
        a = self.args
        if a.static_copies < 0:
            raise TrainingError(f"--static-copies must be 0 (dynamic masking) or more, got {a.static_copies}")
        if a.static_masking and a.static_copies > 1:
            raise TrainingError(
                f"--static-masking is one fixed mask per sequence (--static-copies 1), but "
                f"--static-copies is {a.static_copies}: pass one of them"
            )
        return a.static_copies or int(a.static_masking)

    def _model_config(self, meta: dict, seq_len: int) -> RobertaConfig:
        a = self.args
        if a.config in PRESETS:
            cfg = RobertaConfig.preset(a.config)
        elif os.path.isfile(a.config) or os.path.isdir(a.config):
            cfg = RobertaConfig.load(a.config, trust_code=a.trust_code)
        else:
            raise TrainingError(f"--config {a.config!r} is neither a preset ({', '.join(PRESETS)}) nor a config.json")
        positions = max(cfg.max_position_embeddings, seq_len + cfg.pad_token_id + 1)
        # the pair formats give A and B their own token type, as BERT does (RoBERTa has one)
        types = max(2, cfg.type_vocab_size) if self.pairs else cfg.type_vocab_size
        return cfg.replace(
            vocab_size=meta["vocab_size"],
            max_position_embeddings=positions,
            attention=a.attention,
            pad_token_id=meta["pad_token_id"],
            bos_token_id=meta["bos_token_id"],
            eos_token_id=meta["eos_token_id"],
            type_vocab_size=types,
        )

    def hold_inputs(self):
        """The prepared data, held against `prepare` for the run (readers share the folder's lock:
        a prepare of it meanwhile is refused, naming this run)."""
        return lock_dir(self.args.data, "a pretraining run reading it", shared=True)

    def _collator(self, meta: dict, static: bool, mlm_probability: float | None = None) -> DynamicMaskingCollator:
        a = self.args
        tok = self.tokenizer
        rate = a.mlm_probability if mlm_probability is None else mlm_probability
        return DynamicMaskingCollator.from_tokenizer(
            tok,
            whole_word=a.whole_word,
            mlm_probability=rate,
            static=static,
            static_seed=a.seed,
            generator=torch.Generator(),
        )

    def collate(self, examples: list, step: int, micro_batch: int) -> dict:
        # each micro-batch's masks come from (seed, step, m): N ranks draw what one rank would
        self.collator.generator.manual_seed(seed_for(self.args.seed, step, micro_batch))
        return self.collator(examples)

    def data_fingerprint(self) -> str:
        """The prepared data's fingerprint: the sha256 of every file, tokenizer included."""
        meta = self.meta
        if "fingerprint" in meta:
            return meta["fingerprint"]
        legacy = {k: meta.get(k) for k in ("splits", "tokenizer_hash", "inputs", "seq_len", "val_fraction")}
        return hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()  # format 1

    def loss_weight(self, batch: dict) -> torch.Tensor:
        """The masked tokens: the MLM loss is their mean.

        subtle: with NSP the loss is MLM + NSP, and the micro-batches are weighted by their
        masked tokens for both terms, so the step's NSP term is a mean over its sequences
        weighted by their micro-batch's masked tokens. With one micro-batch per step (and
        one rank) it is exactly MLM mean + NSP mean, BERT's loss.
        """
        return (batch["labels"] != IGNORE_INDEX).sum()

    def loss_parts(self, out) -> dict:
        """The pair formats log their two terms: mlm_loss and nsp_loss."""
        return {} if out.nsp_loss is None else {"mlm_loss": out.mlm_loss, "nsp_loss": out.nsp_loss}

    def train_flops_per_token(self) -> float:
        return mlm_training_flops_per_token(self.cfg, self.args.seq_len, self.args.mlm_probability)

    # ---- evaluation ----------------------------------------------------------------

    def validation_batches(self, dataset=None) -> list[dict]:
        """A fixed validation set, masked once with --eval-seed, so every eval (of every run with
        the same data, seq_len and eval settings) is comparable: the val split's FULL-SENTENCES
        blocks, or the given dataset (the held-out pairs).

        Example i is masked alone, by a generator seeded by (eval_seed, i), then grouped into
        batches: the masks depend neither on --seed nor on --batch-size, so the arms of a
        batch-size study are scored on the same masked tokens too.
        """
        cache = "_val_batches" if dataset is None else "_val_pair_batches"
        dataset = self.val_set if dataset is None else dataset
        if not hasattr(self, cache):
            batches = []
            if dataset is not None:
                n = min(len(dataset), self.args.eval_blocks)
                rows = []
                for i in range(n):
                    self.eval_collator.generator.manual_seed(seed_for(self.args.eval_seed, 2**31, i))
                    rows.append(self.eval_collator([dataset[i]]))
                batches = [self._stack(rows[s : s + self.args.batch_size]) for s in range(0, n, self.args.batch_size)]
            setattr(self, cache, batches)
        return getattr(self, cache)

    def _stack(self, rows: list[dict]) -> dict:
        """One batch from single-example batches, right-padded like the collator pads."""
        T = max(r["input_ids"].shape[1] for r in rows)
        fill = {
            "input_ids": self.eval_collator.pad_token_id,
            "attention_mask": 0,
            "labels": IGNORE_INDEX,
            "token_type_ids": 0,
        }
        batch = {}
        for key in rows[0]:
            if key in fill:
                batch[key] = torch.cat(
                    [torch.nn.functional.pad(r[key], (0, T - r[key].shape[1]), value=fill[key]) for r in rows]
                )
            else:  # next_sentence_label: one per example
                batch[key] = torch.cat([r[key] for r in rows])
        return batch

    @torch.no_grad()
    def evaluate(self) -> dict | None:
        batches = self.validation_batches()
        if not batches:
            return None
        model = self.raw_model
        model.eval()
        loss_sum, correct, count = 0.0, 0, 0
        for batch in batches:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with self._autocast():
                out = model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
            labels = batch["labels"][batch["labels"] != IGNORE_INDEX]  # the rows of out.logits, in order
            loss_sum += out.loss.item() * labels.numel()  # out.loss is the mean over them
            correct += int((out.logits.argmax(-1) == labels).sum())
            count += labels.numel()
        if count == 0:  # a loss of 0 and a perplexity of 1 would be nonsense
            self._log(
                "note: the held-out set has no masked tokens, so no validation metric is written "
                "(more held-out data or a higher --eval-mlm-probability gives some)"
            )
            model.train()
            return None
        loss = loss_sum / count
        metrics = {
            "val_loss": loss,
            "val_ppl": math.exp(min(loss, 50.0)),
            "val_acc": correct / max(count, 1),
            "val_tokens": count,
        }
        if self.val_pairs is not None:
            metrics.update(self._evaluate_nsp(model))
        model.train()
        return metrics

    def _evaluate_nsp(self, model) -> dict:
        """On the held-out pairs (masked like training, fixed seed): next-sentence accuracy and loss,
        and the MLM loss and masked accuracy in the pair format itself (val_pair_*), beside the
        FULL-SENTENCES blocks every arm is scored on (val_loss): a pair arm trains on short pairs,
        and scoring it on long blocks only would mix the format with the length."""
        loss_sum, correct, count = 0.0, 0, 0
        mlm_sum, mlm_correct, mlm_count = 0.0, 0, 0
        for batch in self.validation_batches(self.val_pairs):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with self._autocast():
                out = model(
                    batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    token_type_ids=batch["token_type_ids"],
                    labels=batch["labels"],
                    next_sentence_label=batch["next_sentence_label"],
                )
            n = len(batch["next_sentence_label"])
            loss_sum += out.nsp_loss.item() * n
            correct += int((out.nsp_logits.argmax(-1) == batch["next_sentence_label"]).sum())
            count += n
            labels = batch["labels"][batch["labels"] != IGNORE_INDEX]
            if labels.numel():
                mlm_sum += out.mlm_loss.item() * labels.numel()
                mlm_correct += int((out.logits.argmax(-1) == labels).sum())
                mlm_count += labels.numel()
        metrics = {"val_nsp_loss": loss_sum / max(count, 1), "val_nsp_acc": correct / max(count, 1), "val_pairs": count}
        if mlm_count:
            metrics.update(
                val_pair_loss=mlm_sum / mlm_count,
                val_pair_ppl=math.exp(min(mlm_sum / mlm_count, 50.0)),
                val_pair_acc=mlm_correct / mlm_count,
            )
        return metrics

    def describe(self, m: dict) -> str:
        nsp = (
            f"; next-sentence accuracy {m['val_nsp_acc']:.2%} ({m['val_pairs']:,} pairs)" if "val_nsp_acc" in m else ""
        )
        return (
            f"loss {m['val_loss']:.4f}, perplexity {m['val_ppl']:.2f}, masked accuracy {m['val_acc']:.2%} "
            f"({m['val_tokens']:,} masked tokens){nsp}"
        )

    def export(self) -> None:
        """RUN/model: the final model and its tokenizer, ready for from_pretrained and fill-mask."""
        path = os.path.join(self.args.out, "model")
        self.raw_model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        png = os.path.join(self.args.out, "loss.png")
        a = self.args
        eval_rate = a.mlm_probability if a.eval_mlm_probability is None else a.eval_mlm_probability
        what = "MLM + next-sentence loss" if self.pairs else "MLM loss"
        drawn = plot_metrics(
            self.metrics_path,
            png,
            f"training {what}, {a.mlm_probability:.0%} of tokens masked",
            f"held-out MLM loss, {eval_rate:.0%} masked (not comparable when the rates differ)"
            if eval_rate != a.mlm_probability
            else f"held-out MLM loss, {eval_rate:.0%} masked",
        )
        self._log(
            f"saved the model and its tokenizer to {path}; the metrics are in {self.metrics_path}"
            + (f", the loss curve in {png}" if drawn else " (pip install matplotlib to draw loss.png)")
        )


def pretrain(args: TrainArgs) -> int:
    trainer = Trainer(args)
    try:
        return trainer.fit()
    finally:
        trainer.close()
