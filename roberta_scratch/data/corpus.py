"""Reading a corpus as public corpora ship it: documents, one at a time, in a fixed order.

    .txt                    blank lines separate documents
    .jsonl, .json           one JSON object per line, the text in --text-field (default "text")
    + .gz, .bz2, .xz        any of the above compressed, streamed (never decompressed to disk)
    .parquet                a column of strings (needs pyarrow: the [data] extra)
    a save_to_disk folder   a Hugging Face `datasets` folder of .arrow files (needs pyarrow)
    a directory             every file above in it, recursively, in sorted order
    None                    the embedded default corpus: this Python's standard library docstrings

Bytes that are not UTF-8 are read as U+FFFD and the file is reported; a record without a
string in its text field is an error naming FILE:LINE (FILE:ROW for columnar files).
"""

from __future__ import annotations

import ast
import glob
import hashlib
import os
import sys
import sysconfig
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..fileio import COMPRESSED, iter_jsonl, iter_lines

DEFAULT_CORPUS = "stdlib-docstrings"
TEXT_FORMATS = (".txt", ".jsonl", ".json")
COLUMNAR_FORMATS = (".parquet",)
DATA_EXTRA = "pip install 'roberta-scratch[data]' (pyarrow)"


@dataclass
class CorpusReport:
    """What was read, for the user: files, documents, and files that were not UTF-8."""

    files: int = 0
    documents: int = 0
    characters: int = 0
    non_utf8_files: list = field(default_factory=list)
    empty_files: list = field(default_factory=list)
    split_documents: int = 0  # documents longer than MAX_DOCUMENT_CHARS, read as several


# A document longer than this is read as several, cut at whitespace: tokenizing one 200 MB line
# whole took 3.6 GB of memory (every word of it listed at once). 1M characters is far beyond any
# training block, so the cut changes nothing a model sees but where a block may start.
MAX_DOCUMENT_CHARS = 1 << 20


def file_format(path: str) -> str | None:
    """ ".txt", ".jsonl", ".json", ".parquet" or "arrow" for a file or folder we read, else None."""
    if os.path.isdir(path):
        return "arrow" if _arrow_files(path) else None
    name = path.lower()
    for suffix in COMPRESSED:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        if name.endswith(COLUMNAR_FORMATS):
            return ".parquet"
    return next((ext for ext in TEXT_FORMATS if name.endswith(ext)), None)


def _arrow_files(folder: str) -> list[str]:
    """The .arrow files of a `datasets` save_to_disk folder (it holds state.json), in order."""
    if not os.path.isfile(os.path.join(folder, "state.json")):
        return []
    return sorted(glob.glob(os.path.join(folder, "*.arrow")))


def corpus_files(paths: Iterable[str]) -> list[str]:
    """Expand directories (recursively) into a sorted, de-duplicated list of the files (and
    save_to_disk folders) we read; a file given by name must be of a format we read."""
    files = []
    for path in paths:
        if os.path.isdir(path) and file_format(path) != "arrow":
            found = []
            for root, dirs, names in os.walk(path):
                dirs.sort()
                kept = [d for d in dirs if file_format(os.path.join(root, d)) == "arrow"]
                found += [os.path.join(root, d) for d in kept]
                dirs[:] = [d for d in dirs if d not in kept]
                found += [os.path.join(root, n) for n in sorted(names) if file_format(os.path.join(root, n))]
            if not found:
                raise FileNotFoundError(
                    f"corpus directory {path} holds no .txt, .jsonl, .json (plain or .gz, .bz2, "
                    ".xz), .parquet or save_to_disk folder"
                )
            files += sorted(found)
        elif os.path.exists(path):
            if file_format(path) is None:
                raise ValueError(
                    f"corpus file {path}: not a format this reads (.txt, .jsonl, .json, plain or "
                    ".gz, .bz2, .xz; .parquet; a save_to_disk folder)"
                )
            files.append(path)
        else:
            raise FileNotFoundError(f"corpus path {path} does not exist")
    return list(dict.fromkeys(files))


def iter_documents(
    paths: Iterable[str] | None, report: CorpusReport | None = None, text_field: str = "text"
) -> Iterator[str]:
    """Every document of the corpus, in a fixed order. paths=None means the default corpus."""
    report = report if report is not None else CorpusReport()
    if paths is None:
        docs = default_corpus()
    else:
        docs = (doc for path in corpus_files(paths) for doc in _file_documents(path, report, text_field))
    for doc in docs:
        pieces = (doc,)
        if len(doc) > MAX_DOCUMENT_CHARS:
            if not report.split_documents:
                warnings.warn(
                    f"document {report.documents + 1} has {len(doc):,} characters: documents longer than "
                    f"{MAX_DOCUMENT_CHARS:,} are read as several, cut at whitespace, to bound the memory "
                    "tokenizing takes (said once)",
                    stacklevel=2,
                )
            report.split_documents += 1
            pieces = _pieces(doc)
        for piece in pieces:
            report.documents += 1
            report.characters += len(piece)
            yield piece


def _pieces(doc: str) -> Iterator[str]:
    """`doc` in pieces of at most MAX_DOCUMENT_CHARS, each cut before a whitespace character in
    its second half when there is one (the next piece starts with it, as GPT-2's split wants),
    so that the pieces put back together are the document."""
    start = 0
    while len(doc) - start > MAX_DOCUMENT_CHARS:
        end = start + MAX_DOCUMENT_CHARS
        window = doc[start + MAX_DOCUMENT_CHARS // 2 : end]
        cut = max(window.rfind(" "), window.rfind("\n"), window.rfind("\t"))
        end = start + MAX_DOCUMENT_CHARS // 2 + cut if cut > 0 else end
        yield doc[start:end]
        start = end
    yield doc[start:]


def _file_documents(path: str, report: CorpusReport, text_field: str) -> Iterator[str]:
    report.files += 1
    fmt = file_format(path)
    if fmt in (".jsonl", ".json"):
        docs = _json_lines(path, report, text_field)
    elif fmt in (".parquet", "arrow"):
        docs = _columnar(path, fmt, text_field)
    else:
        docs = _paragraphs(path, report)
    n = 0
    for doc in docs:
        n += 1
        yield doc
    if n == 0:
        report.empty_files.append(path)


def _paragraphs(path: str, report: CorpusReport) -> Iterator[str]:
    paragraph: list[str] = []
    for line in iter_lines([path], report.non_utf8_files):
        if line and not line.isspace():
            paragraph.append(line)
        elif paragraph:
            yield "".join(paragraph).rstrip("\n")
            paragraph = []
    if paragraph:
        yield "".join(paragraph).rstrip("\n")


def _json_lines(path: str, report: CorpusReport, text_field: str) -> Iterator[str]:
    def bad(lineno: int, problem: str):
        raise ValueError(f"{path}:{lineno}: {problem}; expected a JSON object with a {text_field!r} field")

    for lineno, obj in iter_jsonl(path, bad, report.non_utf8_files):
        text = obj.get(text_field)
        if not isinstance(text, str):
            bad(
                lineno,
                f"no {text_field!r} field"
                if text is None
                else f"{text_field!r} is a {type(text).__name__}, not a string",
            )
        if text and not text.isspace():  # not blank (isspace makes no copy; strip would)
            yield text


def _columnar(path: str, fmt: str, text_field: str) -> Iterator[str]:
    """The strings of one column of a .parquet file or a save_to_disk folder, batch by batch."""
    try:
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise ImportError(f"reading {path} needs pyarrow: {DATA_EXTRA}") from None
    if fmt == ".parquet":
        source = pyarrow.parquet.ParquetFile(path)
        names = source.schema_arrow.names
        batches = ((path, b) for b in source.iter_batches(columns=[text_field])) if text_field in names else None
    else:
        files = _arrow_files(path)
        names = _arrow_names(files[0]) if files else []
        batches = ((f, b) for f in files for b in _arrow_batches(f, text_field)) if text_field in names else None
    if batches is None:
        raise ValueError(f"{path}: no column {text_field!r} (it has {names}); choose one with --text-field")
    row = 0
    for source_path, batch in batches:
        for value in batch.column(0).to_pylist():
            row += 1
            if not isinstance(value, str):
                raise ValueError(
                    f"{source_path}:row {row}: {text_field!r} is "
                    f"{'null' if value is None else 'a ' + type(value).__name__}, not a string"
                )
            if value and not value.isspace():
                yield value


def _arrow_reader(path: str):
    import pyarrow
    import pyarrow.ipc

    source = pyarrow.memory_map(path)
    try:  # datasets writes the streaming format; accept the file format too
        return pyarrow.ipc.open_stream(source)
    except pyarrow.ArrowInvalid:
        return pyarrow.ipc.open_file(source)


def _arrow_names(path: str) -> list[str]:
    return _arrow_reader(path).schema.names


def _arrow_batches(path: str, column: str):
    reader = _arrow_reader(path)
    batches = reader if hasattr(reader, "__iter__") else (reader.get_batch(i) for i in range(reader.num_record_batches))
    for batch in batches:
        yield batch.select([column])


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
            for node in [tree] + [
                n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            ]:
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 40:
                    yield doc
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return
    for key in sorted(topics):
        yield topics[key].strip()


HASHED_WHOLE = 256 << 20  # files up to this size are fingerprinted by their whole content
SAMPLE = 4 << 20  # of a larger file: its first and last 4 MiB, besides its size and mtime


def inputs_fingerprint(paths: Iterable[str] | None) -> str:
    """Identifies the inputs, so that `prepare` knows when there is nothing to do: each file's
    path, size, mtime and content (a sha256 of the whole file up to 256 MiB; of a larger one,
    its first and last 4 MiB); for the default corpus, the Python it comes from.

    subtle: size and mtime alone miss an edit that keeps both (a tool that restores mtimes,
    a same-length fix within the clock's resolution); the content hash catches it.
    """
    h = hashlib.sha256()
    if paths is None:
        h.update(f"{DEFAULT_CORPUS}:{sys.version}:{sysconfig.get_paths()['stdlib']}".encode())
    else:
        for path in corpus_files(paths):
            for part in [path] if os.path.isfile(path) else _arrow_files(path):
                st = os.stat(part)
                digest = _content_hash(part, st.st_size)
                h.update(f"{os.path.abspath(part)}:{st.st_size}:{st.st_mtime_ns}:{digest}\n".encode())
    return h.hexdigest()


def _content_hash(path: str, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= HASHED_WHOLE:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(f.read(SAMPLE))
            f.seek(size - SAMPLE)
            h.update(f.read(SAMPLE))
    return h.hexdigest()
