"""prepare's throughput with 1 and with N worker processes, on a corpus of real text.

    python -m benchmarks.bench_prepare [--mb 24] [--workers 1 2] [--vocab roberta-base dir]
    python -m benchmarks.bench_prepare --whole-command --shuffle --mb 20    # issue 27's measure

The corpus is the docstrings and comments of the Python files installed on this machine
(site-packages and the standard library): real English and code, several hundred MB of it,
nothing downloaded. The first --mb megabytes are written once to a .jsonl file, then prepared
with each worker count, alternating, --repeats times (each run starts from an empty output
folder and a fresh tokenizer: the realistic, cold case). Reports MB/s of input and the speed-up
over one worker; the outputs are checked to be byte-identical. Results go to benchmarks/results/.

--whole-command times `roberta-scratch prepare` as a user runs it: a fresh interpreter each run
(imports, tokenizer load, fingerprint, saving, fsyncs: the fixed costs that weigh most on a small
corpus). --shuffle puts the texts in a random order (seed 0), as a real corpus mixes its sources,
instead of file by file.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import site
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

from benchmarks.common import print_table, write_result
from roberta_scratch.data.packed import prepare
from roberta_scratch.tokenization.byte_level import ByteLevelBPETokenizer, load_tokenizer


def installed_text(limit_bytes: int):
    """Docstrings and comments of installed Python files, in a fixed order, until limit_bytes."""
    roots = [sysconfig.get_paths()["stdlib"]] + site.getsitepackages()
    total = 0
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                try:
                    with open(os.path.join(folder, name), encoding="utf-8") as f:
                        source = f.read()
                    tree = ast.parse(source)
                except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
                    continue
                parts = [
                    ast.get_docstring(n)
                    for n in ast.walk(tree)
                    if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                ]
                comments = "\n".join(
                    line.strip()[1:].strip() for line in source.splitlines() if line.strip().startswith("#")
                )
                for text in [p for p in parts if p] + ([comments] if comments else []):
                    yield text
                    total += len(text.encode())
                    if total >= limit_bytes:
                        return


def run_prepare(corpus: str, tok_dir: str, out: str, workers: int, whole_command: bool) -> dict:
    """One cold run: in this process, or as the command a user types (a fresh interpreter)."""
    if not whole_command:
        return prepare([corpus], tok_dir, out, num_workers=workers, show_progress=False)
    command = [sys.executable, "-m", "roberta_scratch.cli", "prepare", "--corpus", corpus]
    command += ["--tokenizer", tok_dir, "--out", out, "--workers", str(workers)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(out, "meta.json"), encoding="utf-8") as f:
        return json.load(f)


def write_corpus(path: str, mb: float, shuffle: bool) -> None:
    texts = list(installed_text(int(mb * 1e6)))
    if shuffle:
        random.Random(0).shuffle(texts)
    with open(path, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=24, help="megabytes of input text (default 24)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare (default 1 2)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each worker count, alternating (default 2)")
    p.add_argument("--whole-command", action="store_true", help="time `roberta-scratch prepare` in a fresh process")
    p.add_argument("--shuffle", action="store_true", help="the texts in a random order (seed 0), not file by file")
    p.add_argument(
        "--vocab",
        default=os.environ.get("ROBERTA_REFERENCE_DIR"),
        help="a tokenizer dir (default: ROBERTA_REFERENCE_DIR, roberta-base; else one trained here)",
    )
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.jsonl")
        write_corpus(corpus, args.mb, args.shuffle)
        mb = os.path.getsize(corpus) / 1e6
        tok_dir = args.vocab
        if not tok_dir:
            tok_dir = os.path.join(tmp, "tok")
            ByteLevelBPETokenizer.train([corpus], vocab_size=8000, show_progress=False).save_pretrained(tok_dir)
        # which tokenizer, in the results: BPE on a 50k vocabulary costs more per word than on 8k
        tokenizer = {"dir": args.vocab or "trained here on the corpus", "vocab_size": len(load_tokenizer(tok_dir))}
        times = {n: [] for n in args.workers}
        files = {}
        for _ in range(args.repeats):
            for n in args.workers:
                out = os.path.join(tmp, f"out{n}")
                shutil.rmtree(out, ignore_errors=True)
                os.makedirs(out)
                start = time.perf_counter()
                meta = run_prepare(corpus, tok_dir, out, n, args.whole_command)
                times[n].append(time.perf_counter() - start)
                files[n] = meta["files"]
        identical = all(files[n] == files[args.workers[0]] for n in args.workers)
    report(args, mb, times, identical, tokenizer)


def report(args, mb: float, times: dict, identical: bool, tokenizer: dict) -> None:
    base = statistics.median(times[args.workers[0]])
    rows = [
        {
            "workers": n,
            "seconds": statistics.median(t),
            "MB/s": mb / statistics.median(t),
            "speedup": base / statistics.median(t),
            "runs": len(t),
            "all_seconds": " ".join(f"{x:.2f}" for x in t),
        }
        for n, t in times.items()
    ]
    mode = "the whole command, a fresh process each run" if args.whole_command else "prepare() in this process"
    order = "shuffled (seed 0)" if args.shuffle else "file by file"
    print(f"corpus: {mb:.1f} MB of installed Python docstrings and comments, {order}; timed: {mode}")
    print(f"tokenizer: {tokenizer['dir']}, vocabulary {tokenizer['vocab_size']:,}")
    print(f"outputs identical: {identical}")
    print_table(rows, ["workers", "seconds", "MB/s", "speedup", "runs", "all_seconds"])
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"load average (1, 5, 15 min): {load}")
    extra = {"corpus_MB": mb, "identical": identical, "load_average": load, "tokenizer": tokenizer}
    extra.update(whole_command=args.whole_command, shuffled=args.shuffle)
    print(f"wrote {write_result('prepare_cpu', rows, extra)}")


if __name__ == "__main__":
    main()
