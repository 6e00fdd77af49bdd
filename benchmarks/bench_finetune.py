"""Fine-tuning methods compared: what each trains, its step time, its adapter's size, its accuracy.

    ROBERTA_REFERENCE_DIR=... python -m benchmarks.bench_finetune --part speed      # `base`, random weights
    python -m benchmarks.bench_finetune --part accuracy --model runs/demo/run/model   # the demo's model

speed: a `base` RoBERTa (random weights: speed does not depend on them) with the roberta-base
tokenizer, fine-tuned for seq-cls by FinetuneTrainer itself, one trainer per method, built
side by side and stepped round-robin (forward, backward, AdamW: the trainer's own step), so
drift on a shared machine hits every method alike. Methods: full fine-tuning, LoRA r=8 on
query and value (`--lora-r 8`), the top layer (`--train-top-layers 1`) and the head alone
(`--train-top-layers 0`). Also: trainable share and adapter size against peft's on the same
model (peft's LoraConfig(r=8, target_modules=["query", "value"]) on transformers' classifier),
and the largest logit change between the adapter as trained and merged into its base.

accuracy: the study's downstream task (roberta_scratch/study/tasks.py: which standard-library
package a docstring comes from, split by module file) fine-tuned from a pretrained model with
each method and --seeds seeds; test accuracy mean and standard deviation, and the wall time of
a run. Each method keeps one declared learning rate (--lrs): LoRA and the head alone train far
fewer numbers and take larger rates, as the LoRA paper's did.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from benchmarks.common import print_table, write_result

METHODS = {
    "full": {},
    "lora-r8-qv": {"lora_r": 8},
    "top-layer": {"train_top_layers": 1},
    "head-only": {"train_top_layers": 0},
}
# accuracy only (their step time is full fine-tuning's, less the frozen embeddings' update)
MORE_METHODS = {"freeze-embeddings": {"freeze_embeddings": True}, "layerwise-0.8": {"layerwise_lr_decay": 0.8}}
WORDS = "the a of to and in is for that with as by on this returns value object list file name".split()


def synthetic_rows(n: int, words: int, seed: int) -> list[dict]:
    import random

    rng = random.Random(seed)
    return [{"text": " ".join(rng.choices(WORDS, k=words)), "label": rng.choice(["a", "b"])} for _ in range(n)]


def write_jsonl(path: str, rows: list[dict]) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def base_folder(root: str, ref: str, shape: str) -> str:
    """A random `shape` MLM model with the roberta-base tokenizer, as a pretrained folder."""
    from roberta_scratch import RobertaConfig, RobertaForMaskedLM
    from roberta_scratch.tokenization.byte_level import load_tokenizer

    tok = load_tokenizer(ref)
    cfg = RobertaConfig.preset(shape, vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    path = os.path.join(root, "base")
    RobertaForMaskedLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def trainers(base: str, train: str, root: str, args) -> dict:
    from roberta_scratch.finetune.trainer import FinetuneArgs, FinetuneTrainer

    out = {}
    for name, kw in METHODS.items():
        fa = FinetuneArgs(
            task="seq-cls",
            model=base,
            train=train,
            out=os.path.join(root, name),
            batch_size=args.batch,
            max_length=args.length,
            progress=False,
            threads=args.threads,
            lr=5e-4 if "lora_r" in kw else 2e-5,
            **kw,
        )
        out[name] = FinetuneTrainer(fa)
    return out


def step_times(ts: dict, steps: int, warmup: int) -> dict:
    """Median seconds of the trainer's own step (forward, backward, AdamW), round-robin."""
    times = {name: [] for name in ts}
    for i in range(warmup + steps):
        for name, t in ts.items():
            start = time.perf_counter()
            t.forward_backward(i)
            t.optimizer_step()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in times.items()}


def peft_anchor(base: str, root: str) -> dict:
    """peft's trainable share and adapter size for LoRA r=8 on query and value, same model."""
    import peft
    import transformers

    from roberta_scratch.checkpoints.formats import read_checkpoint, save_hf

    cfg, sd = read_checkpoint(base)
    hf_dir = os.path.join(root, "hf")
    save_hf(cfg, sd, hf_dir)
    model = transformers.RobertaForSequenceClassification.from_pretrained(hf_dir, num_labels=2)
    model = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_CLS", r=8, target_modules=["query", "value"]))
    trainable, total = model.get_nb_trainable_parameters()
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    model.save_pretrained(os.path.join(root, "peft-adapter"))
    size = os.path.getsize(os.path.join(root, "peft-adapter", "adapter_model.safetensors"))
    return {"trainable": trainable, "total": total, "lora_params": lora, "adapter_bytes": size}


def speed(args) -> tuple[list, dict]:
    from roberta_scratch.checkpoints.adapter import ADAPTER_WEIGHTS
    from roberta_scratch.checkpoints.formats import read_checkpoint
    from roberta_scratch.lora import load_unmerged
    from roberta_scratch.model import RobertaForSequenceClassification, build_model
    from roberta_scratch.testing import padded_batch

    ref = os.environ.get("ROBERTA_REFERENCE_DIR")
    if not ref:
        sys.exit("--part speed needs ROBERTA_REFERENCE_DIR (the roberta-base tokenizer files)")
    root = tempfile.mkdtemp(prefix="bench-finetune-")
    base = base_folder(root, ref, args.shape)
    train = write_jsonl(os.path.join(root, "train.jsonl"), synthetic_rows(args.batch * 64, args.length, 0))
    ts = trainers(base, train, root, args)
    times = step_times(ts, args.steps, args.warmup)
    rows = []
    for name, t in ts.items():
        counts = t.parameter_counts
        rows.append(
            {
                "method": name,
                "trainable": counts["trainable_params"],
                "share": counts["trainable_params"] / counts["total_params"],
                "step_s": times[name],
                "vs_full": times[name] / times["full"],
            }
        )
    lora = ts["lora-r8-qv"]
    lora.save_model(os.path.join(root, "adapter"))
    adapter_bytes = os.path.getsize(os.path.join(root, "adapter", ADAPTER_WEIGHTS))
    lora_only = sum(p.numel() for n, p in lora.raw_model.named_parameters() if ".lora." in n)
    ids, mask = padded_batch(lora.raw_model.config.vocab_size, lengths=[args.length, args.length // 2, 5], seed=1)
    with torch.no_grad():
        unmerged = load_unmerged(os.path.join(root, "adapter"))(ids, attention_mask=mask).logits
        cfg, sd = read_checkpoint(os.path.join(root, "adapter"))
        merged = build_model(RobertaForSequenceClassification, cfg, sd).eval()(ids, attention_mask=mask).logits
    extra = {
        "settings": {k: getattr(args, k) for k in ("shape", "batch", "length", "steps", "warmup", "threads")},
        "lora": {
            "lora_params": lora_only,
            "lora_share": lora_only / lora.parameter_counts["total_params"],
            "adapter_bytes": adapter_bytes,
            "merged_vs_unmerged_max_abs": (merged - unmerged).abs().max().item(),
        },
        "peft": peft_anchor(base, root),
    }
    return rows, extra


def accuracy(args) -> tuple[list, dict]:
    from roberta_scratch.finetune.trainer import FinetuneArgs, finetune
    from roberta_scratch.study.tasks import build_task

    root = tempfile.mkdtemp(prefix="bench-finetune-acc-")
    summary, _ = build_task(os.path.join(root, "task"))
    lrs = {**dict(zip(METHODS, args.lrs, strict=True)), **dict.fromkeys(MORE_METHODS, args.lrs[0])}
    rows = []
    for name, kw in {**METHODS, **MORE_METHODS}.items():
        if (args.methods or list(METHODS)).count(name) == 0:
            continue
        kw = {**kw, **({"lora_targets": args.lora_targets} if "lora_r" in kw and args.lora_targets else {})}
        accs, seconds = [], []
        for seed in range(args.seeds):
            out = os.path.join(root, f"{name}-{seed}")
            fa = FinetuneArgs(
                task="seq-cls",
                model=args.model,
                train=os.path.join(root, "task", "train.jsonl"),
                eval=os.path.join(root, "task", "test.jsonl"),
                out=out,
                epochs=args.epochs,
                lr=lrs[name],
                batch_size=16,
                max_length=64,
                seed=seed,
                progress=False,
                threads=args.threads,
                **kw,
            )
            start = time.perf_counter()
            assert finetune(fa) == 0
            seconds.append(time.perf_counter() - start)
            with open(os.path.join(out, "metrics.jsonl")) as f:
                accs.append([json.loads(line) for line in f if '"accuracy"' in line][-1]["accuracy"])
        rows.append(
            {
                "method": name,
                "lr": lrs[name],
                "accuracy_mean": statistics.mean(accs),
                "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "accuracies": accs,
                "run_s_mean": statistics.mean(seconds),
            }
        )
    extra = {
        "task": {"classes": summary["classes"], "counts": summary["counts"]},
        "settings": {
            "model": args.model,
            "epochs": args.epochs,
            "seeds": args.seeds,
            "batch": 16,
            "max_length": 64,
            "lora_targets": args.lora_targets or "query,value",
        },
    }
    return rows, extra


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["speed", "accuracy"], default="speed", help="what to measure (see above)")
    p.add_argument("--shape", default="base", help="speed: the model preset (tiny, small, base, ...)")
    p.add_argument("--batch", type=int, default=8, help="speed: examples per step")
    p.add_argument("--length", type=int, default=64, help="speed: tokens per example")
    p.add_argument("--steps", type=int, default=6, help="speed: timed steps per method")
    p.add_argument("--warmup", type=int, default=2, help="speed: untimed steps per method first")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the trainer's choice)")
    p.add_argument("--model", default="runs/demo/run/model", help="accuracy: the pretrained model (make demo's)")
    p.add_argument("--epochs", type=float, default=3.0, help="accuracy: passes over the training set")
    p.add_argument("--seeds", type=int, default=3, help="accuracy: runs per method, seeds 0..N-1")
    p.add_argument(
        "--lrs",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[1e-3, 5e-3, 1e-3, 5e-3],
        help="accuracy: the learning rate of each method, in the order full, LoRA, top layer, head only",
    )
    p.add_argument(
        "--methods",
        type=lambda s: s.split(","),
        default=None,
        help=f"accuracy: some of {list(METHODS) + list(MORE_METHODS)} (default: the first four)",
    )
    p.add_argument("--lora-targets", default=None, help="accuracy: LoRA's targets (default query,value)")
    args = p.parse_args(argv)
    rows, extra = speed(args) if args.part == "speed" else accuracy(args)
    columns = ["method", "trainable", "share", "step_s", "vs_full"] if args.part == "speed" else None
    print_table(rows, columns or ["method", "lr", "accuracy_mean", "accuracy_std", "run_s_mean"])
    print(json.dumps(extra, indent=2, default=str))
    path = write_result(f"finetune_{args.part}_cpu", rows, extra)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
