"""Pretraining data: corpus -> token ids on disk -> packed blocks.

    documents  .txt (blank lines separate documents), .jsonl ({"text": ...}), directories
               of them, or the embedded default corpus (the standard library's docstrings)
    prepare    tokenizes them with progress into memory-mapped shards, streaming, so a
               corpus larger than RAM is fine; re-running on the same inputs is a no-op
    pack       FULL-SENTENCES (RoBERTa's choice): documents back to back with </s> between
               them, cut into <s> ... </s> blocks of exactly seq_len; or DOC-SENTENCES:
               blocks never cross a document, and the rest is padding (packed_dataset.py:
               the one part that needs torch, which prepare does not import)

On disk, each split is a token stream in which every document is followed by </s>:
    meta.json                     the manifest: counts, dtype, the tokenizer's fingerprint, the
                                  inputs' fingerprint, and every file below with its size and sha256
    data-<id>/train-00000.bin ... the stream, uint16 when the vocabulary fits, else uint32
    data-<id>/train.docs.bin      int64 end offset (after the </s>) of every document in the stream
    data-<id>/train.sents.bin     with --sentences: int64 end offset of every sentence (sentences.py),
                                  a document's last one at its end (after the </s>), for the pair formats
    data-<id>/tokenizer/          the tokenizer it was made with

Committing is one atomic step: a run writes a fresh data-<id>/ folder, then replaces
meta.json, the only file that names it. Until then the previous data stays whole and in
use; after it, the new data is. A run killed at any moment leaves one or the other, never
a mix, and the next run removes what the killed one left behind.

What it deletes, it can prove it wrote: a folder holding OWNER_MARK (written into each
folder the moment it is made), or the data-<id>/ that the previous meta.json named; never
an input (the corpus, the tokenizer), wherever they sit. A non-empty folder without a
meta.json is refused unless overwrite=True, which writes beside what is there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections import deque
from collections.abc import Iterator

import numpy as np

from ..fileio import atomic_write, chunked, fsync_dir, lock_dir
from ..progress import progress
from ..tokenization.byte_level import load_tokenizer
from ..tokenization.pool import available_cpus
from .corpus import DEFAULT_CORPUS, CorpusReport, corpus_files, inputs_fingerprint, iter_documents
from .sentences import split_sentences

FORMAT_VERSION = 2  # 2: files in data-<id>/, named with sizes and checksums in meta.json
BATCH_CHARS = 4 << 20  # at most about this many characters tokenized at once by one process
OWNER_MARK = ".roberta-scratch-prepare"  # inside every folder prepare makes: the proof that it wrote it
LEGACY_FILE = re.compile(r"(train|val)(-\d{5}\.bin|\.docs\.bin)")  # format 1 kept these at the top
SHARD_TOKENS = 1 << 28  # 512 MB of uint16 per shard file


# ----------------------------------------------------------------------------- writing


class _SplitWriter:
    """Appends documents to one split's shard files and document index, streaming."""

    def __init__(self, directory: str, split: str, dtype, shard_tokens: int, eos: int, sentences: bool = False):
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
        self.eos = eos
        self.tokens = 0
        self.documents = 0
        self.shards: list[int] = []  # tokens per shard
        self.files: dict[str, dict] = {}  # name -> {"bytes", "sha256"}, for the manifest
        self._shard = None
        self._shard_name = None
        self._hashes: dict = {}  # name -> running sha256 of what was written
        self._docs_name = f"{split}.docs.bin"
        self._docs = open(os.path.join(directory, self._docs_name), "wb")
        self._hashes[self._docs_name] = hashlib.sha256()
        self._sents_name = f"{split}.sents.bin" if sentences else None
        self._sents = open(os.path.join(directory, self._sents_name), "wb") if sentences else None
        if sentences:
            self._hashes[self._sents_name] = hashlib.sha256()

    def _write(self, f, name: str, data: bytes) -> None:
        f.write(data)
        self._hashes[name].update(data)

    def add(self, ids) -> None:
        """Append one document: its ids (a list or an array), then </s>."""
        self.add_many([ids])

    def add_many(self, docs: list, sentence_lengths: list | None = None) -> None:
        """Append documents, each followed by </s>, with one write per shard and one index write.
        With sentences, sentence_lengths[d] holds the token count of each sentence of docs[d]."""
        if not docs:
            return
        if self._sents is not None:
            self._write(self._sents, self._sents_name, _sentence_ends(docs, sentence_lengths, self.tokens).tobytes())
        eos = np.array([self.eos], dtype=self.dtype)
        # one conversion for the batch, not one per document (the workers' rows are int32 views)
        arr = np.concatenate([part for ids in docs for part in ((ids, eos) if len(ids) else (eos,))])
        arr = arr.astype(self.dtype, copy=False)
        ends = self.tokens + np.cumsum([len(ids) + 1 for ids in docs], dtype=np.int64)
        self.tokens = int(ends[-1])
        self.documents += len(docs)
        self._write(self._docs, self._docs_name, ends.tobytes())
        while len(arr):
            if self._shard is None or self.shards[-1] == self.shard_tokens:
                self._next_shard()
            room = self.shard_tokens - self.shards[-1]
            self._write(self._shard, self._shard_name, arr[:room].tobytes())
            self.shards[-1] += len(arr[:room])
            arr = arr[room:]

    def _next_shard(self):
        if self._shard is not None:
            self._finish(self._shard, self._shard_name)
        self._shard_name = f"{self.split}-{len(self.shards):05d}.bin"
        self._shard = open(os.path.join(self.directory, self._shard_name), "wb")
        self._hashes[self._shard_name] = hashlib.sha256()
        self.shards.append(0)

    def _finish(self, f, name: str) -> None:
        f.flush()
        os.fsync(f.fileno())
        self.files[name] = {"bytes": f.tell(), "sha256": self._hashes[name].hexdigest()}
        f.close()

    def close(self) -> dict:
        if self._shard is not None:
            self._finish(self._shard, self._shard_name)
        self._finish(self._docs, self._docs_name)
        if self._sents is not None:
            self._finish(self._sents, self._sents_name)
        return {"tokens": self.tokens, "documents": self.documents, "shards": self.shards}

    def abort(self) -> None:
        """Close every file without a record: the folder is being thrown away (a corpus error, a
        kill), and a file left open would be a `ResourceWarning: unclosed file` note."""
        for f in (self._shard, self._docs, self._sents):
            if f is not None:
                f.close()


def _sentence_ends(docs: list, sentence_lengths: list, offset: int) -> np.ndarray:
    """The stream offsets where the sentences of `docs` end, the stream holding `offset` tokens
    before them: each document's sentences back to back, its last one ending after its </s>."""
    ends = []
    for ids, lengths in zip(docs, sentence_lengths, strict=True):
        if sum(lengths) != len(ids):
            raise AssertionError(f"sentence lengths {lengths} do not add up to the document's {len(ids)} tokens")
        ends.append(offset + np.cumsum(lengths[:-1], dtype=np.int64))
        offset += len(ids) + 1
        ends.append(np.array([offset], dtype=np.int64))  # a document's end is a sentence end
    return np.concatenate(ends)


def _sentence_batches(batches, counts: deque) -> Iterator[list[str]]:
    """Each batch of documents as the flat list of their sentences; how many each document has
    goes on `counts` (one list per batch, in order) for _regroup."""
    for docs in batches:
        pieces = [split_sentences(doc) for doc in docs]
        counts.append([len(p) for p in pieces])
        yield [sentence for p in pieces for sentence in p]


def _regroup(rows: list, counts: list) -> tuple[list, list]:
    """(each document's ids, each document's sentence lengths) from the ids of its sentences.
    Exact: encoding sentence by sentence gives the document's ids (sentences.py)."""
    docs, lengths, i = [], [], 0
    for n in counts:
        part = rows[i : i + n]
        docs.append(np.concatenate([np.asarray(r, dtype=np.int64) for r in part]) if part else [])
        lengths.append([len(r) for r in part])
        i += n
    return docs, lengths


def prepare(
    corpus: list[str] | None,
    tokenizer_dir: str,
    out_dir: str,
    seq_len: int = 512,
    val_fraction: float = 0.01,
    num_workers: int | None = None,
    batch_documents: int = 256,
    shard_tokens: int = SHARD_TOKENS,
    show_progress: bool = True,
    text_field: str = "text",
    sentences: bool = False,
    overwrite: bool = False,
) -> dict:
    """Tokenize a corpus (None: the default one; see corpus.py for the formats) into out_dir;
    returns meta.json's contents.

    Every document is followed by </s>. Document i goes to the validation split when
    floor((i + 1) * val_fraction) > floor(i * val_fraction): an even, deterministic spread.
    num_workers processes tokenize (None: one per usable core), batch_documents documents
    at a time, in order: the output is byte-identical whatever the number of workers, and
    memory stays bounded whatever the size of the corpus. Re-running with the same inputs,
    tokenizer and settings does nothing. The new data replaces the old in one atomic step
    (see the module docstring). sentences=True also records where each sentence ends
    ({split}.sents.bin, for the pair formats); the token stream is the same either way.
    out_dir must be empty, or hold data prepared before, unless overwrite=True (which writes
    beside what is there and deletes none of it).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if seq_len < 8:
        raise ValueError(f"seq_len must be at least 8, got {seq_len}")
    tok = load_tokenizer(tokenizer_dir)
    settings = {
        "format": FORMAT_VERSION,
        "inputs": inputs_fingerprint(corpus),
        "seq_len": seq_len,
        "val_fraction": val_fraction,
        "tokenizer_hash": None,  # below: computing it takes ~0.1 s, which a first run overlaps
        "text_field": text_field,
        # subtle: a corpus is plain text, as fairseq reads it: "<s>" or "<mask>" written in it
        # are characters, never special ids (data prepared before this is prepared again)
        "special_tokens_in_text": "plain",
    }
    if sentences:  # only when asked: data prepared before sentences existed stays up to date
        settings["sentences"] = True
    num_workers = available_cpus() if num_workers is None else max(1, num_workers)
    inputs = [tokenizer_dir] + list(corpus or [])
    with lock_dir(out_dir, "prepare"):
        previous = _current_meta(out_dir)
        if previous is None and not overwrite:
            foreign = sorted(n for n in os.listdir(out_dir) if n != ".lock" and not _made_here(out_dir, n))
            if foreign:
                raise ValueError(
                    f"--out {out_dir} is not empty and holds no prepared data (no meta.json; it has "
                    f"{', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}): use an empty "
                    "folder, or pass --overwrite to write beside what is there (none of it is deleted)"
                )
        # subtle: the tokenizer's fingerprint is needed now only to tell whether there is nothing
        # to do; when another setting differs (always, on a first run), it waits for the manifest,
        # and _write_data computes it while the workers encode
        same = previous is not None and all(previous.get(k) == v for k, v in settings.items() if k != "tokenizer_hash")
        if same:
            settings["tokenizer_hash"] = tok.fingerprint()
            same = previous.get("tokenizer_hash") == settings["tokenizer_hash"]
        done = same and not check_files(out_dir, previous)
        _remove_leftovers(out_dir, previous, previous, inputs)
        if done:
            print(f"{out_dir} is already prepared from these inputs; nothing to do")
            return previous
        meta = _write_data(corpus, tok, out_dir, settings, num_workers, batch_documents, shard_tokens, show_progress)
        _remove_leftovers(out_dir, meta, previous, inputs)
    _print_report(meta)
    return meta


def _write_data(
    corpus, tok, out_dir: str, settings: dict, num_workers, batch_documents: int, shard_tokens: int, show_progress: bool
) -> dict:
    """Tokenize into a fresh data-<id>/ folder, then commit it by replacing meta.json."""
    eos, val_fraction = tok.eos_token_id, settings["val_fraction"]
    dtype = np.uint16 if tok.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    report = CorpusReport()
    tmp = tempfile.mkdtemp(dir=out_dir, prefix=".prepare-")
    writers: dict = {}
    try:
        with open(os.path.join(tmp, OWNER_MARK), "w") as f:
            f.write("written by roberta-scratch prepare; removed with the folder when no meta.json names it\n")
        sentences = settings.get("sentences", False)
        for split in ("train", "val"):
            writers[split] = _SplitWriter(tmp, split, dtype, shard_tokens, eos, sentences)
        docs = iter_documents(corpus, report, settings["text_field"])
        bar = progress(desc="preparing", unit="docs", disable=not show_progress)
        index = 0
        # subtle: a batch is also bounded in characters, so a few huge documents (cut into
        # MAX_DOCUMENT_CHARS pieces) are not tokenized all at once; the output is the same
        batches, counts = chunked(docs, batch_documents, max_size=BATCH_CHARS), deque()
        if sentences:  # encode sentence by sentence, then put each document back together
            batches = _sentence_batches(batches, counts)

        def meanwhile() -> None:  # what needs the tokenizer alone: done while the workers encode
            if settings["tokenizer_hash"] is None:
                settings["tokenizer_hash"] = tok.fingerprint()
            tok.save_pretrained(os.path.join(tmp, "tokenizer"))  # the data dir is self-contained

        for rows in tok.plain_text().encode_batches(batches, num_workers=num_workers, meanwhile=meanwhile):
            lengths = None
            if sentences:
                rows, lengths = _regroup(rows, counts.popleft())
            split = {"train": [], "val": []}
            split_lengths = {"train": [], "val": []}
            for d, ids in enumerate(rows):
                in_val = int((index + 1) * val_fraction) > int(index * val_fraction)
                split["val" if in_val else "train"].append(ids)
                if lengths is not None:
                    split_lengths["val" if in_val else "train"].append(lengths[d])
                index += 1
            for name, docs_of_split in split.items():
                writers[name].add_many(docs_of_split, split_lengths[name] if sentences else None)
            bar.update(len(rows))
            bar.set_postfix(tokens=f"{sum(w.tokens for w in writers.values()):,}")
        bar.close()
        splits = {s: w.close() for s, w in writers.items()}
        if splits["train"]["tokens"] == 0:
            raise ValueError("the corpus produced no training tokens: every document was empty")
        files = {name: info for w in writers.values() for name, info in w.files.items()}
        for name in sorted(os.listdir(os.path.join(tmp, "tokenizer"))):
            files[f"tokenizer/{name}"] = _file_info(os.path.join(tmp, "tokenizer", name))
        name = f"data-{uuid.uuid4().hex[:16]}"
        os.rename(tmp, os.path.join(out_dir, name))  # not in use yet: only meta.json would name it
    except BaseException:
        for w in writers.values():
            w.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out_dir)
    meta = _manifest(corpus, tok, settings, dtype, splits, report, name, files)
    with atomic_write(os.path.join(out_dir, "meta.json"), "w") as f:  # the commit
        json.dump(meta, f, indent=2)
    return meta


def _manifest(corpus, tok, settings: dict, dtype, splits: dict, report: CorpusReport, name: str, files: dict) -> dict:
    """meta.json's contents: the settings, what was written, and where."""
    eos = tok.eos_token_id
    return {
        **settings,
        "dtype": np.dtype(dtype).name,
        "vocab_size": tok.vocab_size,
        "splits": splits,
        "corpus": DEFAULT_CORPUS if corpus is None else corpus_files(corpus),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": eos,
        "pad_token_id": tok.pad_token_id,
        "report": {
            "files": report.files,
            "documents": report.documents,
            "characters": report.characters,
            "non_utf8_files": report.non_utf8_files,
            "empty_files": report.empty_files,
        },
        "files_dir": name,
        "files": files,
        # what the data is, for `pretrain --resume` to compare: the hashes of every file
        "fingerprint": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(),
    }


def _file_info(path: str) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"bytes": os.path.getsize(path), "sha256": h.hexdigest()}


def _current_meta(out_dir: str) -> dict | None:
    """The committed manifest, or None when there is none (or it cannot be read)."""
    try:
        return load_meta(out_dir)
    except (FileNotFoundError, ValueError):
        return None


def check_files(data_dir: str, meta: dict, checksums: bool = False) -> list[str]:
    """What is wrong with the files a manifest names: missing, of another size, or (with
    checksums) of other content. An empty list means the data is whole."""
    problems = []
    base = files_dir(data_dir, meta)
    for name, info in meta.get("files", {}).items():
        path = os.path.join(base, name)
        if not os.path.isfile(path):
            problems.append(f"{path} is missing")
        elif os.path.getsize(path) != info["bytes"]:
            problems.append(f"{path} has {os.path.getsize(path)} bytes, the manifest says {info['bytes']}")
        elif checksums and _file_info(path)["sha256"] != info["sha256"]:
            problems.append(f"{path} does not match its sha256 in the manifest")
    return problems


def _made_here(out_dir: str, name: str, previous: dict | None = None) -> bool:
    """Whether prepare provably wrote out_dir/name: a real folder holding OWNER_MARK, or the
    data-<id>/ folder that the previous manifest named."""
    path = os.path.join(out_dir, name)
    if os.path.islink(path) or not os.path.isdir(path):
        return False
    named = previous is not None and previous.get("files_dir") == name
    return os.path.isfile(os.path.join(path, OWNER_MARK)) or named


def _remove_leftovers(out_dir: str, meta: dict | None, previous: dict | None, inputs: list[str]) -> None:
    """Remove what prepare wrote and no manifest names now: a killed run's .prepare-* and data-*
    folders, data from before the last commit, and the files of the old layout (format 1 kept its
    shards at the top) once a format-2 manifest replaced a format-1 one. Never an input, and
    never anything it cannot prove it wrote (_made_here)."""
    keep = meta.get("files_dir") if meta else None
    migrated = previous is not None and "files_dir" not in previous and meta is not None and "files_dir" in meta
    protected = [os.path.realpath(p) for p in inputs]

    def is_input(path: str) -> bool:
        real = os.path.realpath(path)
        return any(real == p or p.startswith(real + os.sep) or real.startswith(p + os.sep) for p in protected)

    for name in os.listdir(out_dir):
        path = os.path.join(out_dir, name)
        if name == keep or is_input(path):
            continue
        stale = (name.startswith(".prepare-") or name.startswith("data-")) and _made_here(out_dir, name, previous)
        old_layout = (
            migrated
            and not os.path.islink(path)
            and (
                (LEGACY_FILE.fullmatch(name) and os.path.isfile(path)) or (name == "tokenizer" and os.path.isdir(path))
            )
        )
        if stale:
            _remove_marked(path)
        elif old_layout:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
        elif name.startswith((".prepare-", "data-")) and os.path.isdir(path) and not os.path.islink(path):
            # killed between making a folder and marking it, or between unmarking and removing it:
            # an empty folder goes (rmdir removes nothing else); one with anything in it stays
            with contextlib.suppress(OSError):
                os.rmdir(path)


def _remove_marked(path: str) -> None:
    """Delete a folder prepare wrote, its OWNER_MARK last: a run killed halfway leaves the mark,
    so the next run can still prove the rest is its own and finish the job."""
    for name in os.listdir(path):
        if name != OWNER_MARK:
            inner = os.path.join(path, name)
            if os.path.isdir(inner) and not os.path.islink(inner):
                shutil.rmtree(inner, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(inner)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(path, OWNER_MARK))
    with contextlib.suppress(OSError):
        os.rmdir(path)


def _print_report(meta: dict) -> None:
    r = meta["report"]
    source = f"{r['files']} file(s)" if r["files"] else "the default corpus"
    print(
        f"prepared {r['documents']:,} documents ({r['characters']:,} characters) from {source}: "
        + ", ".join(f"{s} {v['tokens']:,} tokens in {v['documents']:,} documents" for s, v in meta["splits"].items())
    )
    if r["non_utf8_files"]:
        print(
            f"  {len(r['non_utf8_files'])} file(s) were not valid UTF-8 and were decoded with replacement: "
            + ", ".join(r["non_utf8_files"][:5])
            + (" ..." if len(r["non_utf8_files"]) > 5 else "")
        )
    if r["empty_files"]:
        print(f"  {len(r['empty_files'])} file(s) held no text: " + ", ".join(r["empty_files"][:5]))


# ----------------------------------------------------------------------------- reading back


def files_dir(data_dir: str, meta: dict) -> str:
    """Where a manifest's files are: its data-<id>/ folder (the top folder for format 1)."""
    return os.path.join(data_dir, meta.get("files_dir", ""))


def tokenizer_dir(data_dir: str) -> str:
    """The copy of the tokenizer a prepared data directory was made with."""
    return os.path.join(files_dir(data_dir, load_meta(data_dir)), "tokenizer")


def load_meta(data_dir: str) -> dict:
    """The manifest of a prepared data directory; ValueError when it is unreadable."""
    path = os.path.join(data_dir, "meta.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{data_dir} is not a prepared data directory (no meta.json); run `roberta-scratch prepare` first"
        )
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); run `roberta-scratch prepare` again") from None
    if not isinstance(meta, dict) or "splits" not in meta:
        raise ValueError(f"{path} is not a prepared data manifest; run `roberta-scratch prepare` again")
    return meta


class TokenStream:
    """One split's token stream, memory-mapped across its shards; stream[a:b] -> np.ndarray."""

    def __init__(self, data_dir: str, split: str):
        meta = load_meta(data_dir)
        problems = check_files(data_dir, meta)
        if problems:
            raise ValueError(
                f"{data_dir} is damaged: " + "; ".join(problems[:3]) + "; run `roberta-scratch prepare` again"
            )
        info = meta["splits"][split]
        base = files_dir(data_dir, meta)
        self.shards = [
            np.memmap(os.path.join(base, f"{split}-{i:05d}.bin"), dtype=meta["dtype"], mode="r", shape=(n,))
            for i, n in enumerate(info["shards"])
        ]
        self.starts = np.cumsum([0] + info["shards"])  # global offset of each shard
        self.doc_ends = np.fromfile(os.path.join(base, f"{split}.docs.bin"), dtype=np.int64)
        # where each sentence ends (every document end is one), when prepared with --sentences
        self.sent_ends = (
            np.fromfile(os.path.join(base, f"{split}.sents.bin"), dtype=np.int64) if meta.get("sentences") else None
        )
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
            parts.append(self.shards[i][local : local + take])
            start += take
            i += 1
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
