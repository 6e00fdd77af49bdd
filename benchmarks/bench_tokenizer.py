"""Speed of our byte-level BPE against `tokenizers` and tiktoken, same process, same text.

    ROBERTA_REFERENCE_DIR=../shared/reference/roberta-base python -m benchmarks.bench_tokenizer [--repeats 5]

The text is the project's default corpus (the standard library's docstrings and pydoc
topics, about 2 MB), one document per call. The headline rows are COLD: a freshly built
tokenizer on each side (an empty word cache: text it has not seen), one pass, the kinds
alternating round by round, median of --repeats. That is what a user meets. Rows:
  encode, COLD, load included: loading the roberta-base tokenizer and `tok.encode(doc)` per
                       document, timed together, against `tokenizers` loading its own JSON
                       (the tokenizer.json form, parsed in Rust) and its serial `Tokenizer.encode`
                       (RobertaTokenizerFast's backend); target >= 1.5x. Beside it, labelled, the
                       same with both tokenizers loaded before the clock starts;
  tok(docs), COLD:     the batch call a user makes (it chooses its own processes: below 24 MB
                       forked children share only the BPE of the batch's new words, once there
                       are enough), against tiktoken's `encode_ordinary_batch` with
                       one thread per usable core; target >= 1.0x. Beside it, labelled,
                       `encode_batch` with one process per core forced, GPT-2's vocabulary;
  warm (labelled):     the same text again, every word already cached: a best case;
  short documents:     the same rows on the docstring of every standard-library function and
                       class, one document each (about 200 bytes on average): the per-call cost;
  sizes:               one cold pass over 1, 5 and 20 MB of installed docstrings and comments,
                       to show how the word cache pays off as a corpus grows;
  1 MB word:           a megabyte with no space (DNA, base64, minified prose), fresh tokenizers
                       each round (target: within 2x of `tokenizers`);
  train:               learning a vocabulary of 8,000 tokens from the same text, against
                       `tokenizers`' ByteLevelBPETokenizer trainer.
Before timing, outputs are checked to be identical. Results go to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from unittest import mock

from tokenizers import Tokenizer

from benchmarks.common import print_table, time_interleaved, write_result
from roberta_scratch.data.corpus import default_corpus
from roberta_scratch.tokenization import pool as tokenizer_pool
from roberta_scratch.tokenization.byte_level import GPT2_SPLIT_PATTERN, ByteLevelBPETokenizer

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def reference_tokenizers(ref: str):
    """RobertaTokenizerFast's `tokenizers` backend (mask lstrip as in the original) and tiktoken's GPT-2."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tokenizers import AddedToken
    from transformers import RobertaTokenizerFast

    mask = AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)
    backend = RobertaTokenizerFast.from_pretrained(ref, mask_token=mask).backend_tokenizer
    encoder, merges = os.path.join(ref, "gpt2-encoder.json"), os.path.join(ref, "merges.txt")
    with mock.patch.dict(os.environ, {"TIKTOKEN_CACHE_DIR": ""}):
        ranks = data_gym_to_mergeable_bpe_ranks(merges, encoder)
    gpt2 = tiktoken.Encoding(
        "gpt2", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}
    )
    return backend, gpt2


def once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def encode_each(tok, docs: list) -> list:
    return [tok.encode(d) for d in docs]


def cold_interleaved(makers: dict, run, repeats: int) -> dict:
    """Median seconds of one pass by a freshly built tokenizer of each kind, alternating kinds
    round by round: the realistic first encounter with text, with the machine's drift shared."""
    times = {name: [] for name in makers}
    for _ in range(repeats):
        for name, make in makers.items():
            tok = make()
            times[name].append(once(partial(run, name, tok)))
    return {name: statistics.median(t) for name, t in times.items()}


def _encode_row(mb: float, task: str, ours_s: float, reference: str, reference_s: float, target) -> dict:
    """One row of bench_encode's table: both times, our MB/s, the speed-up and the target."""
    return {
        "task": task,
        "ours_s": ours_s,
        "ours_MB/s": mb / ours_s,
        "reference": reference,
        "reference_s": reference_s,
        "speedup": reference_s / ours_s,
        "target": target,
        "met": None if target is None else reference_s / ours_s >= target,
    }


def bench_encode(ref: str, docs: list, repeats: int) -> list:
    backend, tiktoken_gpt2 = reference_tokenizers(ref)
    mb = sum(len(d.encode()) for d in docs) / 1e6
    cpus = tokenizer_pool.available_cpus()
    encoder, merges = os.path.join(ref, "gpt2-encoder.json"), os.path.join(ref, "merges.txt")

    ours = ByteLevelBPETokenizer.from_pretrained(ref)
    assert [ours.encode(d) for d in docs] == [e.ids for e in backend.encode_batch(docs)], "ids differ from tokenizers"
    gpt2 = ByteLevelBPETokenizer.from_files(encoder, merges)
    same = gpt2.encode_batch(docs, add_special_tokens=False) == tiktoken_gpt2.encode_ordinary_batch(docs)
    assert same, "ids differ from tiktoken"
    # subtle: `tokenizers` loads fastest from its own JSON (tokenizer.json, parsed in Rust), so
    # its load is timed from that, not through transformers' slower from_pretrained
    backend_json = backend.to_str()

    # The headline: fresh tokenizers (empty word caches) on text they have not seen, one pass,
    # loading included, as a user's first call is timed; beside it, the same with the load not timed.
    encode = lambda name, tok: [tok.encode(d) for d in docs]  # noqa: E731
    loaders = {
        "ours": lambda: ByteLevelBPETokenizer.from_pretrained(ref),
        "tokenizers": lambda: Tokenizer.from_str(backend_json),
    }
    loaded = cold_interleaved(
        {n: lambda f=f: f for n, f in loaders.items()}, lambda n, load: encode(n, load()), repeats
    )
    serial = cold_interleaved(loaders, encode, repeats)
    # tok(docs), the batch call a user makes (it picks its own number of processes), against
    # tiktoken's threads, one per usable core; and encode_batch with a process per core forced.
    batch = cold_interleaved(
        {"ours": lambda: ByteLevelBPETokenizer.from_pretrained(ref), "tiktoken": lambda: tiktoken_gpt2},
        lambda name, tok: tok(docs) if name == "ours" else tok.encode_ordinary_batch(docs, num_threads=cpus),
        repeats,
    )
    forced = cold_interleaved(
        {"ours": lambda: ByteLevelBPETokenizer.from_files(encoder, merges), "tiktoken": lambda: tiktoken_gpt2},
        lambda name, tok: (
            tok.encode_batch(docs, add_special_tokens=False, num_workers=cpus)
            if name == "ours"
            else tok.encode_ordinary_batch(docs, num_threads=cpus)
        ),
        repeats,
    )
    # Beside them, labelled: the same text again, every word already in the cache.
    warm = time_interleaved(
        {
            "ours encode": lambda: [ours.encode(d) for d in docs],
            "tokenizers encode": lambda: [backend.encode(d) for d in docs],
            "ours encode_batch": lambda: gpt2.encode_batch(docs, add_special_tokens=False, num_workers=1),
            "tiktoken encode_ordinary_batch": lambda: tiktoken_gpt2.encode_ordinary_batch(docs, num_threads=cpus),
        },
        repeats=repeats,
    )

    row = partial(_encode_row, mb)
    ref_serial, ref_batch = "tokenizers encode, serial, fresh", f"tiktoken encode_ordinary_batch, {cpus} threads"
    return [
        row("encode, 1 process, COLD, load included (headline)", loaded["ours"], ref_serial, loaded["tokenizers"], 1.5),
        row("encode, 1 process, COLD, load not timed", serial["ours"], ref_serial, serial["tokenizers"], None),
        row("tok(docs), COLD (headline)", batch["ours"], ref_batch, batch["tiktoken"], 1.0),
        row(f"encode_batch, {cpus} processes forced, COLD", forced["ours"], ref_batch, forced["tiktoken"], None),
        row(
            "encode, 1 process, warm (the same text again)",
            warm["ours encode"],
            "tokenizers encode, serial",
            warm["tokenizers encode"],
            None,
        ),
        row(
            "encode_batch, 1 process, warm (the same text again)",
            warm["ours encode_batch"],
            ref_batch,
            warm["tiktoken encode_ordinary_batch"],
            None,
        ),
    ]


def short_docs() -> list:
    """Many short documents, as most real corpora come (code, chat, reviews): the docstring of every
    function and class of the installed standard library, one document each, whatever its length
    (module docstrings and pydoc's long topics left out), parsed in sorted order."""
    import ast
    import sysconfig

    skip = ("site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__", "turtledemo")
    docs = []
    for root, dirs, files in os.walk(sysconfig.get_paths()["stdlib"]):
        dirs[:] = sorted(d for d in dirs if d not in skip)
        for name in sorted(f for f in files if f.endswith(".py")):
            try:
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            docs += [d for n in ast.walk(tree) if isinstance(n, kinds) and (d := ast.get_docstring(n))]
    return docs


def bench_short_docs(ref: str, repeats: int) -> list:
    """The encode rows again on short_docs(): the per-call cost shows where documents are short."""
    docs = short_docs()
    size = sum(len(d.encode()) for d in docs)
    print(f"short documents: {len(docs)}, {size / 1e6:.2f} MB, {size / len(docs):.0f} bytes on average")
    rows = bench_encode(ref, docs, repeats)
    return [{**r, "task": f"short documents ({len(docs)}): {r['task']}"} for r in rows]


def bench_sizes(ref: str, sizes_mb=(1, 5, 20)) -> list:
    """One cold pass over growing amounts of unseen text: how fast the word cache pays off."""
    from benchmarks.bench_prepare import installed_text

    rows = []
    for size in sizes_mb:
        docs = list(installed_text(int(size * 1e6)))
        mb = sum(len(d.encode()) for d in docs) / 1e6
        ours = ByteLevelBPETokenizer.from_pretrained(ref)
        backend_fresh = reference_tokenizers(ref)[0]
        ours_s = once(partial(encode_each, ours, docs))
        ref_s = once(partial(encode_each, backend_fresh, docs))
        rows.append(
            {
                "task": f"{size} MB of installed docstrings and comments, one pass, cold",
                "ours_s": ours_s,
                "ours_MB/s": mb / ours_s,
                "reference": "tokenizers encode, serial, fresh",
                "reference_s": ref_s,
                "speedup": ref_s / ours_s,
                "target": None,
                "met": None,
                "words_cached": len(ours._cache),
            }
        )
    return rows


def long_words(docs: list, n: int = 1_000_000) -> dict:
    """Texts of n characters with no space, as they arrive in real corpora: one regex word each."""
    import random
    import re

    rng = random.Random(0)
    letters = re.sub(r"[^A-Za-z]", "", " ".join(docs))
    return {
        "DNA (ACGT)": "".join(rng.choice("ACGT") for _ in range(n)),
        "minified prose (letters only)": (letters * (n // len(letters) + 1))[:n],
        "base64": "".join(
            rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/") for _ in range(n)
        ),
    }


def bench_long_words(ref: str, docs: list, repeats: int) -> list:
    """A 1 MB word: fresh tokenizers on both sides (no cache can help), alternating, median of repeats."""
    import statistics

    rows = []
    for kind, text in long_words(docs).items():
        times = {"ours": [], "tokenizers": []}
        for _ in range(repeats):
            ours = ByteLevelBPETokenizer.from_pretrained(ref)
            theirs, _ = reference_tokenizers(ref)
            times["ours"].append(once(partial(ours.encode, text)))
            times["tokenizers"].append(once(partial(theirs.encode, text)))
        assert ours.encode(text) == theirs.encode(text).ids, f"ids differ from tokenizers on {kind}"
        ours_s, ref_s = statistics.median(times["ours"]), statistics.median(times["tokenizers"])
        rows.append(
            {
                "task": f"1 MB word, {kind}, cold",
                "ours_s": ours_s,
                "ours_MB/s": 1.0 / ours_s,
                "reference": "tokenizers encode, fresh",
                "reference_s": ref_s,
                "speedup": ref_s / ours_s,
                "target": 0.5,
                "met": ref_s / ours_s >= 0.5,
            }
        )
    return rows


def bench_train(docs: list, vocab_size: int) -> list:
    from tokenizers import ByteLevelBPETokenizer as ReferenceTrainer

    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            f.write("\n".join(docs))
        ours_s = once(lambda: ByteLevelBPETokenizer.train([corpus], vocab_size=vocab_size, show_progress=False))
        reference = ReferenceTrainer()
        reference_s = once(
            lambda: reference.train([corpus], vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
        )
        ours = ByteLevelBPETokenizer.train([corpus], vocab_size=vocab_size, show_progress=False)
    same = ours.merges == [tuple(m) for m in json.loads(reference._tokenizer.to_str())["model"]["merges"]]
    return [
        {
            "task": f"train, vocab {vocab_size}",
            "ours_s": ours_s,
            "reference": "tokenizers ByteLevelBPETokenizer.train",
            "reference_s": reference_s,
            "speedup": reference_s / ours_s,
            "same_merges": same,
        }
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_ref = os.environ.get(
        "ROBERTA_REFERENCE_DIR",
        os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference", "roberta-base"),
    )
    parser.add_argument(
        "--reference-dir", default=default_ref, help="the roberta-base vocab.json, merges.txt and gpt2-encoder.json"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of the warm rows; the median counts")
    parser.add_argument("--vocab-size", type=int, default=8000, help="vocabulary size for the training row")
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["encode", "short-docs", "sizes", "long-words", "train"],
        choices=["encode", "short-docs", "sizes", "long-words", "train"],
        help="which rows to measure (default: all)",
    )
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.reference_dir, "vocab.json")):
        sys.exit(f"no roberta-base tokenizer files in {args.reference_dir}: set ROBERTA_REFERENCE_DIR")

    docs = list(default_corpus())
    mb = sum(len(d.encode()) for d in docs) / 1e6
    print(f"text: {len(docs)} documents, {mb:.2f} MB (the standard library's docstrings and pydoc topics)")
    rows = []
    if "encode" in args.sections:
        rows += bench_encode(args.reference_dir, docs, args.repeats)
    if "short-docs" in args.sections:
        rows += bench_short_docs(args.reference_dir, args.repeats)
    if "sizes" in args.sections:
        rows += bench_sizes(args.reference_dir)
    if "long-words" in args.sections:
        rows += bench_long_words(args.reference_dir, docs, args.repeats)
    if "train" in args.sections:
        rows += bench_train(docs, args.vocab_size)
    print_table(rows, ["task", "ours_s", "ours_MB/s", "reference", "reference_s", "speedup", "target", "met"])
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"load average (1, 5, 15 min): {load}")
    versions = {name: importlib.metadata.version(name) for name in ("regex", "tokenizers", "tiktoken", "transformers")}
    path = write_result(
        "tokenizer_cpu", rows, extra={"text_MB": mb, "documents": len(docs), "load_average": load, "versions": versions}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
