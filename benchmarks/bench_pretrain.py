"""Pretraining throughput and quality: our trainer against a reference loop built from
transformers' RobertaForMaskedLM and DataCollatorForLanguageModeling, in one process.

    python -m benchmarks.bench_pretrain [--config tiny] [--steps 200] [--batch-size 16] [--seq-len 128]
                                           [--attention sdpa] [--data DATA_DIR]

Same initial weights, same blocks in the same order, same optimiser (AdamW 0.9/0.98,
eps 1e-6, wd 0.01 off biases and LayerNorms; fused, as both libraries' trainers default to), same warmup +
linear decay and clipping, and the same autocast: our trainer's (bf16 on CUDA, none on the
CPU) wraps the reference's forward passes too, training and evaluation.
The two loops alternate step by step, so machine noise hits both alike. Reports
tokens/s of each and the held-out MLM loss of each, at equal steps, on the same fixed
masked validation set. Without --data it trains a tokenizer on the default corpus
(the standard library's docstrings) and prepares it under benchmarks/.cache/.

On the CPU it also reports each loop's achieved FLOP/s (the FLOPs it really executes: ours
projects only the masked positions onto the vocabulary) as a fraction of this machine's fp32
GEMM rate, measured in the same process before and after. Two more sections:

    --section threads   our loop with 1 thread, with every core, and with the trainer's own
                        choice (training.cpu_threads), on a quiet machine and then beside one
                        busy background process: why the trainer picks its thread count.
    --section profile   where our training step's CPU time goes (torch.profiler): the top
                        operators by self time, and the share spent in matmuls.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time

import torch
import torch.nn.functional as F

from benchmarks.common import cpu_gemm_flops, print_table, write_result
from roberta_scratch.checkpoints.formats import save_hf
from roberta_scratch.config import IGNORE_INDEX
from roberta_scratch.data.corpus import default_corpus
from roberta_scratch.data.packed import prepare, tokenizer_dir
from roberta_scratch.flops import flops_per_token
from roberta_scratch.machine import cpu_threads
from roberta_scratch.pretrain import TrainArgs, Trainer
from roberta_scratch.tokenization.byte_level import ByteLevelBPETokenizer
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
        tok = transformers.RobertaTokenizerFast(
            vocab_file=os.path.join(tdir, "vocab.json"), merges_file=os.path.join(tdir, "merges.txt")
        )
        self.collator = transformers.DataCollatorForLanguageModeling(tok, mlm_probability=ours.args.mlm_probability)
        a = ours.args
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, a.weight_decay),
            lr=a.lr,
            betas=tuple(a.betas),
            eps=a.eps,
            fused=ours.optimizer.defaults["fused"],
        )  # as the trainer's
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(  # the same schedule as ours
            self.optimizer, lambda s: linear_schedule(s, 1.0, ours.warmup_steps, ours.total_steps)
        )

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
            total += F.cross_entropy(
                logits.view(-1, logits.shape[-1]).float(),
                batch["labels"].view(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            ).item()
            count += int((batch["labels"] != IGNORE_INDEX).sum())
        self.model.train()
        return total / count


def _spin() -> None:  # a background process that keeps one core busy, as another user's job would
    while True:
        pass


def _steps_per_s(ours: Trainer, first_step: int, steps: int) -> float:
    """Tokens/s of our loop over `steps` steps from `first_step`."""
    tokens, start = 0, time.perf_counter()
    for step in range(first_step, first_step + steps):
        tokens += ours.forward_backward(step)[1]
        ours.optimizer_step()
    return tokens / (time.perf_counter() - start)


def threads_section(ours: Trainer, rounds: int = 3, steps: int = 10) -> list:
    """Our loop's tokens/s per thread count, quiet and beside one busy process, interleaved."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    rows, step = [], 0
    for load in (0, 1):
        spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(load)]
        for proc in spinners:
            proc.start()
        try:
            time.sleep(0.5 if load else 0)
            os.environ.pop("OMP_NUM_THREADS", None)  # let the trainer's rule see the machine
            auto, why = cpu_threads()
            counts = sorted({1, cores, auto})
            speed = {n: [] for n in counts}
            for _ in range(rounds):
                for n in counts:
                    torch.set_num_threads(n)
                    _steps_per_s(ours, step, 2)  # settle the new thread pool
                    speed[n].append(_steps_per_s(ours, step + 2, steps))
                    step += steps + 2
        finally:
            for proc in spinners:
                proc.terminate()
        for n in counts:
            rows.append(
                {
                    "background_busy_processes": load,
                    "threads": n,
                    "trainer_choice": n == auto,
                    "tokens_per_s": sorted(speed[n])[len(speed[n]) // 2],
                    "why": why if n == auto else "",
                }
            )
            print(
                f"busy processes {load}, {n} thread(s): {rows[-1]['tokens_per_s']:,.0f} tok/s"
                + (f"  <- the trainer's choice ({why})" if n == auto else ""),
                flush=True,
            )
    return rows


def profile_section(ours: Trainer, steps: int = 10, top: int = 15) -> list:
    """The top operators of our training step by self CPU time, and the matmuls' share."""
    from torch.profiler import ProfilerActivity, profile

    _steps_per_s(ours, 0, 3)  # warm
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _steps_per_s(ours, 3, steps)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMULS)
    rows = [
        {
            "op": e.key,
            "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
            "share": e.self_cpu_time_total / total,
            "calls_per_step": e.count / steps,
        }
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    ]
    print_table(rows, list(rows[0]))
    print(f"matmuls ({', '.join(sorted(MATMULS))}): {matmul / total:.1%} of the step's CPU time")
    return rows + [{"op": "ALL MATMULS", "self_ms_per_step": matmul / 1e3 / steps, "share": matmul / total}]


MATMULS = {
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
}


def interleaved_steps(ours, ref, steps: int) -> tuple[dict, dict]:
    """Our training step, then the reference's, `steps` times: seconds and real tokens of each."""
    times = {"ours": 0.0, "ref": 0.0}
    tokens = {"ours": 0, "ref": 0}
    ours.model.train()
    for step in range(steps):
        t = time.perf_counter()
        _, n = ours.forward_backward(step)
        ours.optimizer_step()
        times["ours"] += time.perf_counter() - t
        tokens["ours"] += n
        t = time.perf_counter()
        tokens["ref"] += ref.step(step)
        times["ref"] += time.perf_counter() - t
        if (step + 1) % 50 == 0:
            print(
                f"step {step + 1}/{steps}: ours {tokens['ours'] / times['ours']:,.0f} tok/s, "
                f"reference {tokens['ref'] / times['ref']:,.0f} tok/s",
                flush=True,
            )
    return times, tokens


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data",
        default=None,
        help="a prepared data dir (default: the default corpus, prepared under benchmarks/.cache/)",
    )
    p.add_argument("--config", default="tiny", help="model preset or config.json (default tiny)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps of each loop (default 200)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step (default 16)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of both loops (default 2e-3)")
    p.add_argument(
        "--attention",
        default="sdpa",
        choices=["eager", "sdpa", "triton"],
        help="our model's attention backend (default sdpa)",
    )
    p.add_argument(
        "--section",
        default="compare",
        choices=["compare", "threads", "profile"],
        help="compare with transformers (default), thread counts under load, or the profiler",
    )
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    data = args.data or default_data(args.seq_len)
    with tempfile.TemporaryDirectory() as out:
        ours = Trainer(
            TrainArgs(
                data=data,
                out=out,
                config=args.config,
                steps=args.steps,
                batch_size=args.batch_size,
                seq_len=args.seq_len,
                lr=args.lr,
                warmup=max(1, args.steps // 10),
                attention=args.attention,
                progress=False,
            )
        )
        if args.section != "compare":
            ours.model.train()
            rows = threads_section(ours) if args.section == "threads" else profile_section(ours)
            info = {"config": args.config, "batch": [args.batch_size, args.seq_len], "data": data}
            print(f"wrote {write_result(f'pretrain_{args.section}_{ours.device.type}', rows, info)}")
            return
        on_cpu = ours.device.type == "cpu"
        gemm = [cpu_gemm_flops()] if on_cpu else []
        ref = ReferenceLoop(ours)
        times, tokens = interleaved_steps(ours, ref, args.steps)
        ours_loss, ref_loss = ours.evaluate()["val_loss"], ref.evaluate()
        if on_cpu:
            gemm.append(cpu_gemm_flops())
    row = {
        "config": args.config,
        "attention": args.attention,
        "steps": args.steps,
        "batch": [args.batch_size, args.seq_len],
        "device": str(ours.device),
        "tokens_per_s_ours": tokens["ours"] / times["ours"],
        "tokens_per_s_ref": tokens["ref"] / times["ref"],
        "speedup": (tokens["ours"] / times["ours"]) / (tokens["ref"] / times["ref"]),
        "val_loss_ours": ours_loss,
        "val_loss_ref": ref_loss,
        "val_loss_gap": ours_loss - ref_loss,
    }
    extra = {"data": data}
    if on_cpu:  # FLOPs really executed per token: ours runs the vocabulary projection at the masked share only
        f = flops_per_token(ours.cfg, args.seq_len)
        body = f["attention"] + f["feed_forward"]
        per_token = {"ours": 3 * (body + ours.args.mlm_probability * f["mlm_head"]), "ref": 3 * (body + f["mlm_head"])}
        limit = max(gemm)
        for side in ("ours", "ref"):
            row[f"gemm_fraction_{side}"] = row[f"tokens_per_s_{side}"] * per_token[side] / limit
        extra["gemm_gflops_before_after"] = [g / 1e9 for g in gemm]
        print(f"this machine's fp32 GEMM: {limit / 1e9:.1f} GFLOP/s with {torch.get_num_threads()} threads")
    print_table([row], list(row))
    print(f"wrote {write_result('pretrain_' + row['device'].split(':')[0], [row], extra)}")


if __name__ == "__main__":
    main()
