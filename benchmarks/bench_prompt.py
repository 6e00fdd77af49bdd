"""Few-shot classification: a fresh head (seq-cls) against prompting the MLM head (prompt-cls).

    python -m benchmarks.bench_prompt --model runs/demo/run/model

On the study's downstream task (study/tasks.py: which standard-library package a docstring
comes from, 10 classes, 40 test docstrings each), each method fine-tunes the demo's pretrained
model on K training docstrings per class (--shots K, drawn with --seed) for K = 8, 16, 32 and
seeds 0, 1, 2, with the same settings (a fixed number of steps, lr, batch, warmup, weight decay),
then scores the final model on the whole test set (one evaluation, at the last step: the test
set picks nothing). The table is the mean and standard deviation over seeds of test accuracy
per (method, K); the JSON in benchmarks/results/ has every run.

prompt-cls reads '{text} This is about <mask>.' and a label word per package (WORDS), each a
single token of the model's tokenizer after a space (checked before anything trains).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from roberta_scratch.finetune.trainer import FinetuneArgs, finetune
from roberta_scratch.study.tasks import build_task
from roberta_scratch.tokenization.byte_level import load_tokenizer

from .common import print_table, write_result

TEMPLATE = "{text} This is about <mask>."
# Each package's word, picked by hand as LM-BFF's manual verbalizers are: a word the docstrings
# use for what the package is about. Candidates in order; the first single token wins.
WORDS = {
    "asyncio": ["loop", "async", "asyncio"],
    "collections": ["collection", "dictionary"],
    "concurrent": ["future", "thread"],
    "ctypes": ["pointer", "C"],
    "curses": ["window", "screen"],
    "distutils": ["setup", "distribution"],
    "email": ["email", "message"],
    "encodings": ["codec", "encoding"],
    "html": ["HTML", "tag"],
    "http": ["HTTP", "server"],
    "importlib": ["module", "import"],
    "json": ["JSON"],
    "logging": ["logging", "log"],
    "multiprocessing": ["process", "processes"],
    "sqlite3": ["database", "SQL"],
    "tkinter": ["widget", "window"],
    "unittest": ["test", "tests"],
    "urllib": ["URL", "url"],
    "xml": ["XML", "element"],
    "xmlrpc": ["RPC", "server"],
}


def verbalizer(model: str, classes: list[str]) -> dict[str, str]:
    """Each class's first candidate word that the model's tokenizer holds whole after a space."""
    tok = load_tokenizer(model)
    chosen, used = {}, set()
    for label in classes:
        whole = [w for w in WORDS.get(label, []) + [label] if w not in used]
        whole = [w for w in whole if len(tok.encode(" " + w, add_special_tokens=False)) == 1]
        if not whole:
            raise SystemExit(f"no single-token word for {label!r} in {model}'s vocabulary: add one to WORDS")
        chosen[label] = whole[0]
        used.add(whole[0])
    return chosen


def run_one(method: str, k: int, seed: int, data: str, model: str, words: dict, settings: dict) -> dict:
    """One fine-tuning run; its final test accuracy and macro F1."""
    with tempfile.TemporaryDirectory(prefix="bench-prompt-") as out:
        n_train = k * len(words)
        steps_per_epoch = -(-n_train // settings["batch_size"])
        args = FinetuneArgs(
            task=method,
            model=model,
            train=os.path.join(data, "train.jsonl"),
            eval=os.path.join(data, "test.jsonl"),
            out=out,
            shots=k,
            seed=seed,
            epochs=settings["steps"] / steps_per_epoch,  # the same number of steps at every K
            eval_every=settings["steps"],
            save_every=settings["steps"],
            lr=settings["lr"],
            batch_size=settings["batch_size"],
            warmup_ratio=settings["warmup_ratio"],
            weight_decay=settings["weight_decay"],
            max_length=settings["max_length"],
            progress=False,
            overwrite=True,
            **(
                {"template": TEMPLATE, "verbalizer": ",".join(f"{c}={w}" for c, w in words.items())}
                if method == "prompt-cls"
                else {}
            ),
        )
        start = time.perf_counter()
        assert finetune(args) == 0
        with open(os.path.join(out, "metrics.jsonl")) as f:
            last = [r for r in map(json.loads, f) if "accuracy" in r][-1]
    return {
        "method": method,
        "k": k,
        "seed": seed,
        "accuracy": last["accuracy"],
        "macro_f1": last["macro_f1"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def summarise(runs: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds of each (method, K)."""
    rows = []
    for method in ("seq-cls", "prompt-cls"):
        for k in sorted({r["k"] for r in runs}):
            acc = [r["accuracy"] for r in runs if r["method"] == method and r["k"] == k]
            f1 = [r["macro_f1"] for r in runs if r["method"] == method and r["k"] == k]
            rows.append(
                {
                    "method": method,
                    "K": k,
                    "seeds": len(acc),
                    "accuracy_mean": round(statistics.mean(acc), 4),
                    "accuracy_std": round(statistics.stdev(acc), 4) if len(acc) > 1 else 0.0,
                    "macro_f1_mean": round(statistics.mean(f1), 4),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/demo/run/model", help="a pretrained MLM folder (the demo's)")
    parser.add_argument("--shots", default="8,16,32", help="K values, comma-separated")
    parser.add_argument("--seeds", default="0,1,2", help="seeds, comma-separated")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per run, at every K")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, both methods")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per step, both methods")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per docstring with its template")
    parser.add_argument("--data", default=None, help="where the task's files go (default: a temporary folder)")
    a = parser.parse_args(argv)
    settings = {
        "steps": a.steps,
        "lr": a.lr,
        "batch_size": a.batch_size,
        "warmup_ratio": 0.1,
        "weight_decay": 0.01,
        "max_length": a.max_length,
    }
    with tempfile.TemporaryDirectory(prefix="bench-prompt-data-") as tmp:
        data = a.data or tmp
        split, _ = build_task(data)
        words = verbalizer(a.model, split["classes"])
        print(f"{len(words)} classes; words: {words}")
        runs = []
        for k in map(int, a.shots.split(",")):
            for seed in map(int, a.seeds.split(",")):
                for method in ("seq-cls", "prompt-cls"):
                    runs.append(run_one(method, k, seed, data, a.model, words, settings))
                    print(json.dumps(runs[-1]), flush=True)
    rows = summarise(runs)
    print_table(rows, ["method", "K", "seeds", "accuracy_mean", "accuracy_std", "macro_f1_mean"])
    extra = {"model": a.model, "template": TEMPLATE, "verbalizer": words, "settings": settings, "runs": runs}
    path = write_result("prompt_fewshot", rows, extra)
    print(path)
    return path


if __name__ == "__main__":
    main()
