"""MLM pretraining, the RoBERTa recipe, on top of the shared loop (training.BaseTrainer).

Dynamic masking, FULL-SENTENCES blocks, big batches through gradient accumulation,
AdamW(0.9, 0.98, eps 1e-6, wd 0.01), warmup then linear decay.

One process, or DistributedDataParallel under torchrun (gloo on CPU, nccl on GPU):

    roberta-scratch pretrain --data DATA --config tiny --out RUN --steps 1000
    torchrun --nproc_per_node=8 -m roberta_scratch pretrain --data DATA --config base ...

Each micro-batch's mask is drawn from a generator seeded by (seed, step, micro-batch index),
so a resumed run draws the masks it would have drawn, and N ranks draw the same masks as
one rank on the same global batch.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from .config import IGNORE_INDEX, PRESETS, RobertaConfig
from .data import PackedDataset, load_meta, tokenizer_dir
from .flops import mlm_training_flops_per_token
from .masking import DynamicMaskingCollator
from .model import RobertaForMaskedLM
from .tokenizer import load_tokenizer
from .training import BaseTrainer, RunArgs, TrainingError, option, plot_metrics, seed_for


@dataclass(kw_only=True)
class TrainArgs(RunArgs):
    """`roberta-scratch pretrain`: every field is also its command-line flag."""

    data: str = option(help="a directory made by `roberta-scratch prepare`")
    out: str = option(help="run directory: ckpt/, metrics.jsonl, loss.png, model/")
    config: str = option("tiny", "tiny|small|base|large or a config.json")
    steps: int = option(1000, "optimizer steps")
    warmup: int = option(100, "steps of linear warmup, then linear decay to 0")
    seq_len: Optional[int] = option(None, "block length (default: the data's)")
    packing: str = option("full", "FULL- or DOC-SENTENCES", choices=["full", "doc"])
    mlm_probability: float = option(0.15, "share of tokens selected for prediction")
    whole_word: bool = option(False, "mask whole words")
    static_masking: bool = option(False, "BERT's static masks instead of dynamic ones (ablation)")
    eval_blocks: int = option(256, "size of the fixed, pre-masked validation set")

    # data and config are compared by content, and steps may change (training.RESUMING)
    RESUME_KEYS = RunArgs.RESUME_KEYS + ("warmup", "seq_len", "packing", "mlm_probability", "whole_word",
                                         "static_masking")


class Trainer(BaseTrainer):
    """MLM pretraining on a prepared data directory: the model, the masking, the held-out set."""

    desc = "pretraining"
    eval_at_start = True

    def build(self) -> torch.nn.Module:
        a = self.args
        meta = load_meta(a.data)
        self.meta = meta
        if a.seq_len is None:
            a.seq_len = meta["seq_len"]
        self.train_set = PackedDataset(a.data, "train", a.seq_len, a.packing)
        self.val_set = PackedDataset(a.data, "val", a.seq_len, a.packing) \
            if meta["splits"]["val"]["tokens"] else None
        self.total_steps, self.warmup_steps = a.steps, a.warmup
        self.cfg = self._model_config(meta)
        self.collator = self._collator(meta)
        torch.manual_seed(a.seed)  # the same initial weights on every rank
        return RobertaForMaskedLM(self.cfg)

    def _model_config(self, meta: dict) -> RobertaConfig:
        a = self.args
        if a.config in PRESETS:
            cfg = RobertaConfig.preset(a.config)
        elif os.path.isfile(a.config) or os.path.isdir(a.config):
            cfg = RobertaConfig.load(a.config)
        else:
            raise TrainingError(f"--config {a.config!r} is neither a preset ({', '.join(PRESETS)}) nor a config.json")
        positions = max(cfg.max_position_embeddings, a.seq_len + cfg.pad_token_id + 1)
        return cfg.replace(vocab_size=meta["vocab_size"], max_position_embeddings=positions, attention=a.attention,
                           pad_token_id=meta["pad_token_id"], bos_token_id=meta["bos_token_id"],
                           eos_token_id=meta["eos_token_id"])

    def _collator(self, meta: dict) -> DynamicMaskingCollator:
        a = self.args
        tok = load_tokenizer(tokenizer_dir(self.args.data))
        return DynamicMaskingCollator.from_tokenizer(tok, whole_word=a.whole_word, mlm_probability=a.mlm_probability,
                                                     static=a.static_masking, static_seed=a.seed,
                                                     generator=torch.Generator())

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
        """The masked tokens: the MLM loss is their mean."""
        return (batch["labels"] != IGNORE_INDEX).sum()

    def train_flops_per_token(self) -> float:
        return mlm_training_flops_per_token(self.cfg, self.args.seq_len, self.args.mlm_probability)

    # ---- evaluation ----------------------------------------------------------------

    def validation_batches(self) -> list[dict]:
        """A fixed validation set, masked once with a fixed seed, so every eval is comparable."""
        if not hasattr(self, "_val_batches"):
            self._val_batches = []
            if self.val_set is not None:
                n = min(len(self.val_set), self.args.eval_blocks)
                g = torch.Generator().manual_seed(seed_for(self.args.seed, 2**31))
                for start in range(0, n, self.args.batch_size):
                    examples = [self.val_set[i] for i in range(start, min(n, start + self.args.batch_size))]
                    self.collator.generator.manual_seed(int(torch.randint(2**62, (1,), generator=g)))
                    self._val_batches.append(self.collator(examples))
        return self._val_batches

    @torch.no_grad()
    def evaluate(self) -> Optional[dict]:
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
        model.train()
        loss = loss_sum / max(count, 1)
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_acc": correct / max(count, 1),
                "val_tokens": count}

    def describe(self, m: dict) -> str:
        return (f"loss {m['val_loss']:.4f}, perplexity {m['val_ppl']:.2f}, masked accuracy {m['val_acc']:.2%} "
                f"({m['val_tokens']:,} masked tokens)")

    def export(self) -> None:
        """RUN/model: the final model and its tokenizer, ready for from_pretrained and fill-mask."""
        path = os.path.join(self.args.out, "model")
        self.raw_model.save_pretrained(path)
        load_tokenizer(tokenizer_dir(self.args.data)).save_pretrained(path)
        png = os.path.join(self.args.out, "loss.png")
        drawn = plot_metrics(self.metrics_path, png)
        self._log(f"saved the model and its tokenizer to {path}; the metrics are in {self.metrics_path}"
                  + (f", the loss curve in {png}" if drawn else " (pip install matplotlib to draw loss.png)"))


def pretrain(args: TrainArgs) -> int:
    trainer = Trainer(args)
    try:
        return trainer.fit()
    finally:
        if trainer.distributed and dist.is_initialized():
            dist.destroy_process_group()
