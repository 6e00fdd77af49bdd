"""Corpora as public datasets ship them: compressed JSON lines and text, parquet, save_to_disk
folders, a chosen text field, bad records named, and `prepare --workers`."""

import bz2
import gzip
import json
import lzma
import sys

import pytest

from roberta_scratch.data.corpus import corpus_files, iter_documents
from roberta_scratch.data.packed import prepare
from roberta_scratch.tokenization.byte_level import ByteLevelBPETokenizer

DOCS = [f"Document {i} is about the cat number {i}, naïve café 😀." * (1 + i % 3) for i in range(40)]
OPENERS = {"": open, ".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def write_jsonl(path, docs, field="text", opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({field: d, "id": 1}) + "\n")
    return str(path)


@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2", ".xz"])
@pytest.mark.parametrize("kind", [".jsonl", ".json", ".txt"])
def test_every_text_format_plain_or_compressed_reads_the_same_documents(tmp_path, kind, suffix):
    path = tmp_path / f"corpus{kind}{suffix}"
    if kind == ".txt":
        with OPENERS[suffix](path, "wt", encoding="utf-8") as f:
            f.write("\n\n".join(DOCS) + "\n")
    else:
        write_jsonl(path, DOCS, opener=OPENERS[suffix])
    assert list(iter_documents([str(path)])) == DOCS


def test_a_chosen_field_and_bad_records(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl.gz", DOCS, field="content", opener=gzip.open)
    assert list(iter_documents([path], text_field="content")) == DOCS
    with pytest.raises(ValueError, match=rf"{path}:1: no 'text' field"):
        list(iter_documents([path]))
    damaged = tmp_path / "d.jsonl.gz"
    damaged.write_bytes(gzip.compress("\n".join(json.dumps({"text": d}) for d in DOCS).encode())[:-30])
    with pytest.raises(ValueError, match=rf"{damaged}: damaged after line"):
        list(iter_documents([str(damaged)]))
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(ValueError, match="not a format this reads"):
        corpus_files([str(tmp_path / "notes.md")])


def test_parquet_and_save_to_disk_folders(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.ipc
    import pyarrow.parquet as pq

    table = pa.table({"text": DOCS, "n": list(range(len(DOCS)))})
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=7)
    assert list(iter_documents([str(tmp_path / "c.parquet")])) == DOCS
    folder = tmp_path / "saved"  # what datasets' save_to_disk writes: arrow stream files and state.json
    folder.mkdir()
    for i, part in enumerate((table.slice(0, 25), table.slice(25))):
        with pa.OSFile(str(folder / f"data-{i:05d}-of-00002.arrow"), "wb") as sink:
            with pyarrow.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(part, max_chunksize=10)
    (folder / "state.json").write_text(json.dumps({"_data_files": []}))
    (folder / "dataset_info.json").write_text("{}")
    assert list(iter_documents([str(folder)])) == DOCS
    assert list(iter_documents([str(tmp_path)])) == DOCS * 2  # a directory: the folder and the parquet file
    with pytest.raises(ValueError, match=r"no column 'body' \(it has \['text', 'n'\]\); choose one with --text-field"):
        list(iter_documents([str(tmp_path / "c.parquet")], text_field="body"))
    pq.write_table(pa.table({"text": ["fine", None]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad.parquet:row 2: 'text' is null, not a string"):
        list(iter_documents([str(tmp_path / "bad.parquet")]))


def test_columnar_files_without_pyarrow_name_the_extra(tmp_path, monkeypatch):
    (tmp_path / "c.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    monkeypatch.setitem(sys.modules, "pyarrow.ipc", None)
    with pytest.raises(ImportError, match=r"needs pyarrow: pip install 'roberta-scratch\[data\]'"):
        list(iter_documents([str(tmp_path / "c.parquet")]))


@pytest.mark.parametrize("sentences", [False, True])
def test_prepare_with_two_workers_writes_the_same_bytes_as_one(tmp_path, docstrings, sentences):
    corpus = write_jsonl(tmp_path / "c.jsonl.xz", docstrings[:1500], opener=lzma.open)
    tok = ByteLevelBPETokenizer.train(iter(docstrings[:500]), vocab_size=600, show_progress=False)
    tok.save_pretrained(str(tmp_path / "tok"))
    metas = [
        prepare(
            [corpus],
            str(tmp_path / "tok"),
            str(tmp_path / f"w{n}"),
            seq_len=64,
            num_workers=n,
            batch_documents=64,
            show_progress=False,
            sentences=sentences,
        )
        for n in (1, 2)
    ]
    assert metas[0]["files"] == metas[1]["files"]  # every file, by size and sha256
    assert ("train.sents.bin" in metas[0]["files"]) == sentences
    assert metas[0]["splits"] == metas[1]["splits"] and metas[0]["splits"]["train"]["documents"] > 1000
