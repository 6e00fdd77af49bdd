"""Pretraining data: corpus -> token ids on disk -> packed blocks.

    documents  .txt (blank lines separate documents), .jsonl ({"text": ...}), directories
               of them, or the embedded default corpus (the standard library's docstrings)
    prepare    tokenizes them with progress into memory-mapped shards, streaming, so a
               corpus larger than RAM is fine; re-running on the same inputs is a no-op
    pack       FULL-SENTENCES (RoBERTa's choice): documents back to back with </s> between
               them, cut into <s> ... </s> blocks of exactly seq_len; or DOC-SENTENCES:
               blocks never cross a document, and the rest is padding

On disk, each split is a token stream in which every document is followed by </s>:
    train-00000.bin ...   the stream, uint16 when the vocabulary fits, else uint32
    train.docs.bin        int64 end offset (after the </s>) of every document in the stream
    meta.json             counts, dtype, the tokenizer's hash and the inputs' fingerprint
"""
from __future__ import annotations

import ast
import glob
import hashlib
import json
import os
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from .fileio import atomic_write, chunked, iter_jsonl, iter_lines
from .tokenizer import load_tokenizer

FORMAT_VERSION = 1
SHARD_TOKENS = 1 << 28  # 512 MB of uint16 per shard file
DEFAULT_CORPUS = "stdlib-docstrings"


# ----------------------------------------------------------------------------- reading

@dataclass
class CorpusReport:
    """What was read, for the user: files, documents, and files that were not UTF-8."""

    files: int = 0
    documents: int = 0
    characters: int = 0
    non_utf8_files: list = field(default_factory=list)
    empty_files: list = field(default_factory=list)


def corpus_files(paths: Iterable[str]) -> list[str]:
    """Expand directories (recursively, .txt and .jsonl) into a sorted, de-duplicated file list."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = [f for ext in ("txt", "jsonl") for f in glob.glob(os.path.join(path, "**", f"*.{ext}"),
                                                                        recursive=True)]
            if not found:
                raise FileNotFoundError(f"corpus directory {path} holds no .txt or .jsonl files")
            files += sorted(found)
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"corpus path {path} does not exist")
    return list(dict.fromkeys(files))


def iter_documents(paths: Optional[Iterable[str]], report: Optional[CorpusReport] = None) -> Iterator[str]:
    """Every document of the corpus, in a fixed order. paths=None means the default corpus."""
    report = report if report is not None else CorpusReport()
    if paths is None:
        docs = default_corpus()
    else:
        docs = (doc for path in corpus_files(paths) for doc in _file_documents(path, report))
    for doc in docs:
        report.documents += 1
        report.characters += len(doc)
        yield doc


def _file_documents(path: str, report: CorpusReport) -> Iterator[str]:
    report.files += 1
    n = 0
    if path.endswith(".jsonl"):
        def bad(lineno: int, problem: str):
            raise ValueError(f"{path}:{lineno}: {problem}; expected a JSON object with a 'text' field")

        for lineno, obj in iter_jsonl(path, bad, report.non_utf8_files):
            text = obj.get("text")
            if not isinstance(text, str):
                bad(lineno, "no 'text' field" if text is None else f"'text' is a {type(text).__name__}, not a string")
            if text.strip():
                n += 1
                yield text
    else:
        paragraph: list[str] = []
        for line in iter_lines([path], report.non_utf8_files):
            if line.strip():
                paragraph.append(line)
            elif paragraph:
                n += 1
                yield "".join(paragraph).rstrip("\n")
                paragraph = []
        if paragraph:
            n += 1
            yield "".join(paragraph).rstrip("\n")
    if n == 0:
        report.empty_files.append(path)


def default_corpus() -> Iterator[str]:
    """The docstrings of this Python's standard library, then pydoc's help topics.

    Real English prose that exists on every machine with Python: nothing is downloaded,
    nothing is committed. Sources are parsed (never imported), in sorted order.
    """
    stdlib = sysconfig.get_paths()["stdlib"]
    skip = ("site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__", "turtledemo")
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in skip)
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in [tree] + [n for n in ast.walk(tree)
                                  if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]:
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 40:
                    yield doc
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return
    for key in sorted(topics):
        yield topics[key].strip()


def inputs_fingerprint(paths: Optional[Iterable[str]]) -> str:
    """Identifies the inputs: each file's path, size and mtime, or the Python for the default."""
    h = hashlib.sha256()
    if paths is None:
        h.update(f"{DEFAULT_CORPUS}:{sys.version}:{sysconfig.get_paths()['stdlib']}".encode())
    else:
        for path in corpus_files(paths):
            st = os.stat(path)
            h.update(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- writing

class _SplitWriter:
    """Appends documents to one split's shard files and document index, streaming."""

    def __init__(self, directory: str, split: str, dtype, shard_tokens: int):
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
        self.tokens = 0
        self.documents = 0
        self.shards: list[int] = []  # tokens per shard
        self._shard = None
        self._docs = open(os.path.join(directory, f"{split}.docs.bin"), "wb")

    def add(self, ids: list[int]) -> None:
        arr = np.asarray(ids, dtype=self.dtype)
        while len(arr):
            if self._shard is None or self.shards[-1] == self.shard_tokens:
                self._next_shard()
            room = self.shard_tokens - self.shards[-1]
            self._shard.write(arr[:room].tobytes())
            self.shards[-1] += len(arr[:room])
            arr = arr[room:]
        self.tokens += len(ids)
        self.documents += 1
        self._docs.write(np.int64(self.tokens).tobytes())

    def _next_shard(self):
        if self._shard is not None:
            self._shard.close()
        self._shard = open(os.path.join(self.directory, f"{self.split}-{len(self.shards):05d}.bin"), "wb")
        self.shards.append(0)

    def close(self) -> dict:
        for f in (self._shard, self._docs):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())
                f.close()
        return {"tokens": self.tokens, "documents": self.documents, "shards": self.shards}


def prepare(corpus: Optional[list[str]], tokenizer_dir: str, out_dir: str, seq_len: int = 512,
            val_fraction: float = 0.01, num_workers: Optional[int] = None, batch_documents: int = 512,
            shard_tokens: int = SHARD_TOKENS, show_progress: bool = True) -> dict:
    """Tokenize a corpus (None: the default one) into out_dir; returns meta.json's contents.

    Every document is followed by </s>. Document i goes to the validation split when
    floor((i + 1) * val_fraction) > floor(i * val_fraction): an even, deterministic spread.
    Re-running with the same inputs, tokenizer and settings does nothing.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if seq_len < 8:
        raise ValueError(f"seq_len must be at least 8, got {seq_len}")
    tok = load_tokenizer(tokenizer_dir)
    settings = {"format": FORMAT_VERSION, "inputs": inputs_fingerprint(corpus), "seq_len": seq_len,
                "val_fraction": val_fraction, "tokenizer_hash": tok.fingerprint()}
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if all(meta.get(k) == v for k, v in settings.items()):
            print(f"{out_dir} is already prepared from these inputs; nothing to do")
            return meta

    eos = tok.eos_token_id
    dtype = np.uint16 if tok.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    os.makedirs(out_dir, exist_ok=True)
    report = CorpusReport()
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".prepare-") as tmp:
        writers = {s: _SplitWriter(tmp, s, dtype, shard_tokens) for s in ("train", "val")}
        docs = iter_documents(corpus, report)
        bar = tqdm(desc="preparing", unit=" docs", disable=not show_progress)
        index = 0
        for batch in chunked(docs, batch_documents):
            for ids in tok.encode_batch(batch, add_special_tokens=False, num_workers=num_workers):
                in_val = int((index + 1) * val_fraction) > int(index * val_fraction)
                writers["val" if in_val else "train"].add(ids + [eos])
                index += 1
            bar.update(len(batch))
            bar.set_postfix(tokens=f"{sum(w.tokens for w in writers.values()):,}")
        bar.close()
        splits = {s: w.close() for s, w in writers.items()}
        if splits["train"]["tokens"] == 0:
            raise ValueError("the corpus produced no training tokens: every document was empty")
        for name in os.listdir(tmp):
            os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
    _remove_stale_shards(out_dir, splits)
    tok.save_pretrained(os.path.join(out_dir, "tokenizer"))  # the data dir is self-contained
    meta = {**settings, "dtype": np.dtype(dtype).name, "vocab_size": tok.vocab_size, "splits": splits,
            "corpus": DEFAULT_CORPUS if corpus is None else corpus_files(corpus),
            "bos_token_id": tok.bos_token_id, "eos_token_id": eos, "pad_token_id": tok.pad_token_id,
            "report": {"files": report.files, "documents": report.documents, "characters": report.characters,
                       "non_utf8_files": report.non_utf8_files, "empty_files": report.empty_files}}
    with atomic_write(meta_path, "w") as f:  # written last: its presence means "complete"
        json.dump(meta, f, indent=2)
    _print_report(meta)
    return meta


def _remove_stale_shards(out_dir: str, splits: dict) -> None:
    for split, info in splits.items():
        for path in glob.glob(os.path.join(out_dir, f"{split}-*.bin")):
            if int(os.path.basename(path)[len(split) + 1:-4]) >= len(info["shards"]):
                os.remove(path)


def _print_report(meta: dict) -> None:
    r = meta["report"]
    source = f"{r['files']} file(s)" if r["files"] else "the default corpus"
    print(f"prepared {r['documents']:,} documents ({r['characters']:,} characters) from {source}: "
          + ", ".join(f"{s} {v['tokens']:,} tokens in {v['documents']:,} documents" for s, v in meta["splits"].items()))
    if r["non_utf8_files"]:
        print(f"  {len(r['non_utf8_files'])} file(s) were not valid UTF-8 and were decoded with replacement: "
              + ", ".join(r["non_utf8_files"][:5]) + (" ..." if len(r["non_utf8_files"]) > 5 else ""))
    if r["empty_files"]:
        print(f"  {len(r['empty_files'])} file(s) held no text: " + ", ".join(r["empty_files"][:5]))


# ----------------------------------------------------------------------------- reading back

def tokenizer_dir(data_dir: str) -> str:
    """The copy of the tokenizer a prepared data directory was made with."""
    return os.path.join(data_dir, "tokenizer")


def load_meta(data_dir: str) -> dict:
    path = os.path.join(data_dir, "meta.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{data_dir} is not a prepared data directory (no meta.json); "
                                "run `roberta-scratch prepare` first")
    with open(path) as f:
        return json.load(f)


class TokenStream:
    """One split's token stream, memory-mapped across its shards; stream[a:b] -> np.ndarray."""

    def __init__(self, data_dir: str, split: str):
        meta = load_meta(data_dir)
        info = meta["splits"][split]
        self.shards = [np.memmap(os.path.join(data_dir, f"{split}-{i:05d}.bin"), dtype=meta["dtype"], mode="r",
                                 shape=(n,)) for i, n in enumerate(info["shards"])]
        self.starts = np.cumsum([0] + info["shards"])  # global offset of each shard
        self.doc_ends = np.fromfile(os.path.join(data_dir, f"{split}.docs.bin"), dtype=np.int64)
        self.meta = meta

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, s: slice) -> np.ndarray:
        start, stop, _ = s.indices(len(self))
        parts = []
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        while start < stop:
            local = start - self.starts[i]
            take = min(stop - start, len(self.shards[i]) - local)
            parts.append(self.shards[i][local:local + take])
            start += take
            i += 1
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


class PackedDataset(torch.utils.data.Dataset):
    """<s> ... </s> blocks of seq_len tokens from a prepared split.

    mode="full" (FULL-SENTENCES): block i is the stream's tokens [i*(L-2), (i+1)*(L-2)), so
    blocks cross documents (each document already ends with </s>) and every block but the
    last is exactly seq_len long; the last holds the remainder. Nothing is dropped.
    mode="doc" (DOC-SENTENCES): each document (without its </s>) is cut into pieces of at most
    L-2 tokens; blocks are shorter where a document ends, and the collator pads them.
    """

    def __init__(self, data_dir: str, split: str = "train", seq_len: int = 512, mode: str = "full"):
        if mode not in ("full", "doc"):
            raise ValueError(f"packing mode must be 'full' or 'doc', got {mode!r}")
        if seq_len < 3:
            raise ValueError(f"seq_len must be at least 3, got {seq_len}")
        self.stream = TokenStream(data_dir, split)
        self.bos, self.eos = self.stream.meta["bos_token_id"], self.stream.meta["eos_token_id"]
        self.seq_len, self.mode = seq_len, mode
        body = seq_len - 2
        if mode == "full":
            starts = np.arange(0, len(self.stream), body, dtype=np.int64)
            self.spans = np.stack([starts, np.minimum(starts + body, len(self.stream))], axis=1)
        else:
            ends = self.stream.doc_ends - 1  # drop each document's trailing </s>
            begins = np.concatenate([[0], self.stream.doc_ends[:-1]])
            pieces = -(-(ends - begins) // body)  # ceil
            first = np.repeat(begins, pieces)
            offset = np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces)
            starts = first + offset * body
            self.spans = np.stack([starts, np.minimum(starts + body, np.repeat(ends, pieces))], axis=1)
        if len(self.spans) == 0:
            raise ValueError(f"the {split} split of {data_dir} is empty")

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, i: int) -> torch.Tensor:
        a, b = self.spans[i]
        body = torch.from_numpy(self.stream[int(a):int(b)].astype(np.int64))
        return torch.cat([torch.tensor([self.bos]), body, torch.tensor([self.eos])])

