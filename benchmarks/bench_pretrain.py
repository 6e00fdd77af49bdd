"""Pretraining throughput and quality: our trainer against a reference loop built from
transformers' RobertaForMaskedLM and DataCollatorForLanguageModeling, in one process.

    python -m benchmarks.bench_pretrain [--config tiny] [--steps 200] [--batch-size 16] [--seq-len 128]
                                           [--attention sdpa] [--data DATA_DIR]

Same initial weights, same blocks in the same order, same optimiser (AdamW 0.9/0.98,
eps 1e-6, wd 0.01 off biases and LayerNorms; the fused one on CUDA for both), same warmup +
linear decay and clipping, and the same autocast: our trainer's (bf16 on CUDA, none on the
CPU) wraps the reference's forward passes too, training and evaluation.
The two loops alternate step by step, so machine noise hits both alike. Reports
tokens/s of each and the held-out MLM loss of each, at equal steps, on the same fixed
masked validation set. Without --data it trains a tokenizer on the default corpus
(the standard library's docstrings) and prepares it under benchmarks/.cache/.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
import torch.nn.functional as F

from benchmarks.common import print_table, write_result
from roberta_scratch.checkpoint import save_hf
from roberta_scratch.config import IGNORE_INDEX
from roberta_scratch.corpus import default_corpus
from roberta_scratch.data import prepare, tokenizer_dir
from roberta_scratch.pretrain import TrainArgs, Trainer
from roberta_scratch.tokenizer import ByteLevelBPETokenizer
from roberta_scratch.training import linear_schedule, param_groups

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_data(seq_len: int) -> str:
    cache = os.path.join(ROOT, "benchmarks", ".cache")
    tok = os.path.join(cache, "tokenizer-8192")
    if not os.path.isfile(os.path.join(tok, "vocab.json")):
        ByteLevelBPETokenizer.train(default_corpus(), vocab_size=8192).save_pretrained(tok)
    data = os.path.join(cache, f"stdlib-{seq_len}")
    prepare(None, tok, data, seq_len=seq_len, val_fraction=0.02)
    return data


class ReferenceLoop:
    """The loop a transformers user would write, on the same weights and the same blocks."""

    def __init__(self, ours: Trainer):
        import transformers

        self.ours = ours
        with tempfile.TemporaryDirectory() as tmp:
            save_hf(ours.cfg, {k: v.detach().clone() for k, v in ours.raw_model.state_dict().items()}, tmp)
            self.model = transformers.RobertaForMaskedLM.from_pretrained(tmp).to(ours.device).train()
        tdir = tokenizer_dir(ours.args.data)
        tok = transformers.RobertaTokenizerFast(vocab_file=os.path.join(tdir, "vocab.json"),
                                                merges_file=os.path.join(tdir, "merges.txt"))
        self.collator = transformers.DataCollatorForLanguageModeling(tok, mlm_probability=ours.args.mlm_probability)
        a = ours.args
        self.optimizer = torch.optim.AdamW(param_groups(self.model, a.weight_decay), lr=a.lr, betas=tuple(a.betas),
                                           eps=a.eps, fused=ours.device.type == "cuda")  # as the trainer's
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(  # the same schedule as ours
            self.optimizer, lambda s: linear_schedule(s, 1.0, ours.warmup_steps, ours.total_steps))

    def step(self, step: int) -> int:
        a = self.ours.args
        per_step = a.batch_size * a.grad_accum
        tokens = 0
        for k in range(a.grad_accum):
            start = step * per_step + k * a.batch_size
            examples = [{"input_ids": self.ours._example(start + j).tolist()} for j in range(a.batch_size)]
            batch = {key: v.to(self.ours.device) for key, v in self.collator(examples).items()}
            with self.ours._autocast():  # like for like: ours runs every forward under it
                loss = self.model(**batch).loss / a.grad_accum
                loss.backward()
            tokens += int(batch["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), a.clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return tokens

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        total, count = 0.0, 0
        for batch in self.ours.validation_batches():
            batch = {k: v.to(self.ours.device) for k, v in batch.items()}
            with self.ours._autocast():  # as Trainer.evaluate
                logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            total += F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), batch["labels"].view(-1),
                                     ignore_index=IGNORE_INDEX, reduction="sum").item()
            count += int((batch["labels"] != IGNORE_INDEX).sum())
        self.model.train()
        return total / count


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="a prepared data dir (default: the default corpus, prepared under "
                                                "benchmarks/.cache/)")
    p.add_argument("--config", default="tiny", help="model preset or config.json (default tiny)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps of each loop (default 200)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step (default 16)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of both loops (default 2e-3)")
    p.add_argument("--attention", default="sdpa", choices=["eager", "sdpa", "triton"],
                   help="our model's attention backend (default sdpa)")
    args = p.parse_args(argv)
    data = args.data or default_data(args.seq_len)
    with tempfile.TemporaryDirectory() as out:
        ours = Trainer(TrainArgs(data=data, out=out, config=args.config, steps=args.steps,
                                 batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                                 warmup=max(1, args.steps // 10), attention=args.attention, progress=False))
        ref = ReferenceLoop(ours)
        times = {"ours": 0.0, "ref": 0.0}
        tokens = {"ours": 0, "ref": 0}
        ours.model.train()
        for step in range(args.steps):
            t = time.perf_counter()
            _, n = ours.forward_backward(step)
            ours.optimizer_step()
            times["ours"] += time.perf_counter() - t
            tokens["ours"] += n
            t = time.perf_counter()
            tokens["ref"] += ref.step(step)
            times["ref"] += time.perf_counter() - t
            if (step + 1) % 50 == 0:
                print(f"step {step + 1}/{args.steps}: ours {tokens['ours'] / times['ours']:,.0f} tok/s, "
                      f"reference {tokens['ref'] / times['ref']:,.0f} tok/s", flush=True)
        ours_loss, ref_loss = ours.evaluate()["val_loss"], ref.evaluate()
    row = {"config": args.config, "attention": args.attention, "steps": args.steps,
           "batch": [args.batch_size, args.seq_len], "device": str(ours.device),
           "tokens_per_s_ours": tokens["ours"] / times["ours"], "tokens_per_s_ref": tokens["ref"] / times["ref"],
           "speedup": (tokens["ours"] / times["ours"]) / (tokens["ref"] / times["ref"]),
           "val_loss_ours": ours_loss, "val_loss_ref": ref_loss, "val_loss_gap": ours_loss - ref_loss}
    print_table([row], list(row))
    print(f"wrote {write_result('pretrain_' + row['device'].split(':')[0], [row], {'data': data})}")


if __name__ == "__main__":
    main()
