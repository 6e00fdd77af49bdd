"""A command deletes only what it can prove it wrote: `prepare --out` next to (or on top of) the
user's own files, its inputs included."""

import shutil

import pytest

from roberta_scratch.data.packed import OWNER_MARK, load_meta, prepare


def quiet_prepare(corpus, tok, out, **kw):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture corpus's Latin-1 file
        return prepare(
            corpus, tok, out, **{"seq_len": 32, "val_fraction": 0.1, "show_progress": False, "num_workers": 1, **kw}
        )


def test_prepare_into_the_folder_that_holds_its_corpus_deletes_nothing(prepared, tmp_path):
    """`prepare --corpus data-raw --tokenizer ../tok --out .` deleted ./data-raw/, then failed."""
    shutil.copytree(prepared / "corpus", tmp_path / "data-raw")
    before = sorted(p.name for p in (tmp_path / "data-raw").iterdir())
    with pytest.raises(ValueError, match=r"is not empty and holds no prepared data .*data-raw.*--overwrite"):
        quiet_prepare([str(tmp_path / "data-raw")], str(prepared / "tok"), str(tmp_path))
    assert sorted(p.name for p in (tmp_path / "data-raw").iterdir()) == before
    quiet_prepare([str(tmp_path / "data-raw")], str(prepared / "tok"), str(tmp_path), overwrite=True)
    assert sorted(p.name for p in (tmp_path / "data-raw").iterdir()) == before
    meta = load_meta(str(tmp_path))
    assert meta["files_dir"].startswith("data-") and (tmp_path / meta["files_dir"] / OWNER_MARK).is_file()
    # again, with other settings: the new data replaces the old, the corpus stays
    quiet_prepare([str(tmp_path / "data-raw")], str(prepared / "tok"), str(tmp_path), sentences=True)
    assert sorted(p.name for p in (tmp_path / "data-raw").iterdir()) == before
    folders = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("data-"))
    assert folders == sorted(["data-raw", load_meta(str(tmp_path))["files_dir"]])


def test_prepare_never_deletes_its_tokenizer_folder(prepared, tmp_path):
    """`--tokenizer tokenizer --out .` deleted ./tokenizer/ (the old layout's name)."""
    shutil.copytree(prepared / "tok", tmp_path / "tokenizer")
    quiet_prepare([str(prepared / "corpus")], str(tmp_path / "tokenizer"), str(tmp_path), overwrite=True)
    quiet_prepare([str(prepared / "corpus")], str(tmp_path / "tokenizer"), str(tmp_path), sentences=True)
    assert sorted(p.name for p in (tmp_path / "tokenizer").iterdir()) == sorted(
        p.name for p in (prepared / "tok").iterdir()
    )


def test_only_folders_prepare_made_are_cleaned_up(prepared, tmp_path):
    out = tmp_path / "data"
    quiet_prepare([str(prepared / "corpus")], str(prepared / "tok"), str(out))
    first = load_meta(str(out))["files_dir"]
    (out / "data-backup").mkdir()  # the user's, named like ours
    (out / "data-backup" / "notes.txt").write_text("mine")
    (out / ".prepare-mine").mkdir()
    (out / ".prepare-mine" / "draft.txt").write_text("mine")
    killed = out / ".prepare-killed"  # what a killed run leaves: our mark inside
    killed.mkdir()
    (killed / OWNER_MARK).write_text("")
    (killed / "train-00000.bin").write_bytes(b"\0" * 10)
    quiet_prepare([str(prepared / "corpus")], str(prepared / "tok"), str(out), sentences=True)
    names = {p.name for p in out.iterdir()}
    assert {"data-backup", ".prepare-mine"} <= names and ".prepare-killed" not in names
    assert first not in names  # the data the old meta.json named, replaced
    assert (out / "data-backup" / "notes.txt").read_text() == "mine"


def test_special_token_text_in_a_corpus_is_plain_text(prepared, tmp_path):
    """fairseq reads a corpus as plain text: `<s>`, `</s>`, `<pad>` and `<mask>` written in it are
    characters, never the special ids (which would turn <pad> into padding for the collator)."""
    import numpy as np

    from roberta_scratch.data.packed import files_dir
    from roberta_scratch.tokenization.byte_level import load_tokenizer

    (tmp_path / "corpus.txt").write_text("price <s>old</s> new and <pad> here <mask>\n")
    quiet_prepare([str(tmp_path / "corpus.txt")], str(prepared / "tok"), str(tmp_path / "data"), val_fraction=0.0)
    meta = load_meta(str(tmp_path / "data"))
    ids = np.fromfile(tmp_path / "data" / meta["files_dir"] / "train-00000.bin", dtype=meta["dtype"]).tolist()
    tok = load_tokenizer(str(prepared / "tok"))
    specials = {tok.bos_token_id, tok.pad_token_id, tok.mask_token_id}
    assert ids[-1] == tok.eos_token_id and not specials & set(ids[:-1]) and tok.eos_token_id not in ids[:-1]
    assert tok.decode(ids[:-1]) == "price <s>old</s> new and <pad> here <mask>"
    # the plain-text reading is a copy: the tokenizer it came from still reads specials
    plain = tok.plain_text()
    assert tok.mask_token_id not in plain.encode("a <mask>") and tok.mask_token_id in tok.encode("a <mask>")
    assert plain.vocab is tok.vocab and plain.plain_text() is plain
    # the data's own copy of the tokenizer still reads them as specials, for fill-mask
    copy = load_tokenizer(f"{files_dir(str(tmp_path / 'data'), meta)}/tokenizer")
    assert tok.mask_token_id in copy.encode("a <mask>")


def test_tokenizer_encode_reads_plain_text_unless_asked(prepared, tmp_path, capsys):
    from roberta_scratch import cli
    from roberta_scratch.tokenization.byte_level import load_tokenizer

    (tmp_path / "t.txt").write_text("a <mask> b\n")
    tok = load_tokenizer(str(prepared / "tok"))
    assert cli.main(["tokenizer", "encode", "--tokenizer", str(prepared / "tok"), str(tmp_path / "t.txt")]) == 0
    assert str(tok.mask_token_id) not in capsys.readouterr().out.split()
    assert (
        cli.main(
            ["tokenizer", "encode", "--tokenizer", str(prepared / "tok"), "--special-tokens", str(tmp_path / "t.txt")]
        )
        == 0
    )
    assert str(tok.mask_token_id) in capsys.readouterr().out.split()


# ----------------------------------------------------------------------------- run folders


def test_overwrite_deletes_only_the_files_a_run_writes(prepared, tmp_path, capsys):
    from pretraining_helpers import args_for

    from roberta_scratch.pretrain import pretrain

    run = tmp_path / "run"
    assert pretrain(args_for(prepared, run, steps=4, save_every=4)) == 0
    (run / "ckpt" / "my-notes.txt").write_text("mine")
    (run / "notes.md").write_text("mine too")
    capsys.readouterr()
    assert pretrain(args_for(prepared, run, steps=4, save_every=4, overwrite=True)) == 0
    assert (run / "ckpt" / "my-notes.txt").read_text() == "mine" and (run / "notes.md").read_text() == "mine too"
    assert "kept what the run did not write: ckpt/my-notes.txt" in capsys.readouterr().out
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["my-notes.txt", "step_00000004.pt"]


def test_overwrite_checks_everything_before_it_deletes_anything(prepared, tmp_path):
    """model/ a link to the user's folder: refused before ckpt/ and metrics.jsonl are touched."""
    import os

    from pretraining_helpers import args_for

    from roberta_scratch.errors import TrainingError
    from roberta_scratch.pretrain import pretrain

    run = tmp_path / "run"
    assert pretrain(args_for(prepared, run, steps=4, save_every=4)) == 0
    shutil.move(run / "model", tmp_path / "kept-model")
    os.symlink(tmp_path / "kept-model", run / "model")
    before = sorted(os.listdir(run)), sorted(os.listdir(run / "ckpt")), (run / "metrics.jsonl").read_text()
    with pytest.raises(TrainingError, match=r"model is a symbolic link.*nothing was deleted"):
        pretrain(args_for(prepared, run, steps=4, overwrite=True))
    assert (sorted(os.listdir(run)), sorted(os.listdir(run / "ckpt")), (run / "metrics.jsonl").read_text()) == before
    assert (tmp_path / "kept-model" / "config.json").is_file()


def test_a_killed_export_leaves_no_temp_folder_behind(prepared, tmp_path):
    from pretraining_helpers import args_for

    from roberta_scratch.pretrain import pretrain

    run = tmp_path / "run"
    assert pretrain(args_for(prepared, run, steps=4, save_every=4)) == 0
    leftover = run / "model" / ".tmp-k1ll3d"  # what atomic_files leaves when the process dies mid-export
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"\0" * 1000)
    (run / "model" / "README.md").write_text("the user's")
    assert pretrain(args_for(prepared, run, steps=6, save_every=2, resume=True)) == 0
    assert not leftover.exists() and (run / "model" / "README.md").exists()


# ----------------------------------------------------------------------------- study folders


def test_study_refuses_a_folder_that_is_not_a_study(tmp_path):
    from roberta_scratch.study.runner import StudyError, run_study

    out = tmp_path / "mine"
    (out / "tokenizer").mkdir(parents=True)
    (out / "tokenizer" / "vocab.json").write_text("{}")
    (out / "corpus.jsonl").write_text('{"text": "my corpus"}\n')
    for overwrite in (False, True):
        with pytest.raises(
            StudyError, match=r"not a study folder .* holds corpus.jsonl, tokenizer.*nothing was changed"
        ):
            run_study("masking", "ci", str(out), overwrite=overwrite, show_progress=False)
    assert (out / "corpus.jsonl").read_text() == '{"text": "my corpus"}\n'
    assert (out / "tokenizer" / "vocab.json").read_text() == "{}"
    other = tmp_path / "notes"
    other.mkdir()
    (other / "notes.md").write_text("mine")
    with pytest.raises(StudyError, match=r"not a study folder .* not empty \(notes.md\).*--overwrite"):
        run_study("masking", "ci", str(other), show_progress=False)
    assert sorted(p.name for p in other.iterdir() if p.name != ".lock") == ["notes.md"]


# ----------------------------------------------------------------------------- data in use


def test_data_a_run_reads_cannot_be_prepared_meanwhile_and_the_model_keeps_its_tokenizer(prepared, tmp_path):
    """Re-preparing a run's data with another tokenizer saved a 400-token model with a 300-token
    tokenizer (fill-mask: `cannot decode id 306`). The run holds its data while it trains, and
    model/ gets the tokenizer the run trained with whatever happens to the folder."""
    import json

    from pretraining_helpers import WORDS, args_for

    from roberta_scratch.fileio import DirectoryBusy
    from roberta_scratch.pretrain import Trainer
    from roberta_scratch.tokenization.byte_level import ByteLevelBPETokenizer, load_tokenizer

    shutil.copytree(prepared / "data", tmp_path / "data")
    other = ByteLevelBPETokenizer.train(iter([" ".join(WORDS)] * 50), vocab_size=300, show_progress=False)
    other.save_pretrained(str(tmp_path / "tok300"))
    trainer = Trainer(
        args_for(prepared, tmp_path / "run", data=str(tmp_path / "data"), steps=2, eval_every=0, save_every=2)
    )
    with trainer.hold_inputs():
        with pytest.raises(DirectoryBusy, match="in use by a process reading it"):
            quiet_prepare([str(prepared / "corpus")], str(tmp_path / "tok300"), str(tmp_path / "data"))
    # prepared again after the run opened its data (between build and fit): the run goes on with its own
    quiet_prepare([str(prepared / "corpus")], str(tmp_path / "tok300"), str(tmp_path / "data"))
    assert trainer.fit() == 0
    model = tmp_path / "run" / "model"
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    trained_with = load_tokenizer(str(prepared / "tok"))
    assert vocab == load_tokenizer(str(model)).vocab_size == trained_with.vocab_size != other.vocab_size
    assert load_tokenizer(str(model)).fingerprint() == trained_with.fingerprint()


# ----------------------------------------------------------------------------- reading a corpus


def test_an_edit_that_keeps_size_and_mtime_is_prepared_again(prepared, tmp_path, capsys):
    import os

    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat\n\nthe dog ran to the red house\n")
    quiet_prepare([str(corpus)], str(prepared / "tok"), str(tmp_path / "data"))
    st = corpus.stat()
    corpus.write_text("the cat sat on the hat\n\nthe dog ran to the red house\n")  # same length
    os.utime(corpus, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert corpus.stat().st_size == st.st_size and corpus.stat().st_mtime_ns == st.st_mtime_ns
    capsys.readouterr()
    quiet_prepare([str(corpus)], str(prepared / "tok"), str(tmp_path / "data"))
    assert "nothing to do" not in capsys.readouterr().out


def test_a_corpus_error_leaves_no_file_open_and_nothing_behind(prepared, tmp_path):
    import subprocess
    import sys

    (tmp_path / "bad.jsonl").write_text('{"text": "a fine document"}\n{"text": 5}\n')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "roberta_scratch",
            "prepare",
            "--corpus",
            "bad.jsonl",
            "--tokenizer",
            str(prepared / "tok"),
            "--out",
            "data",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and "bad.jsonl:2: 'text' is a int" in proc.stderr
    assert "unclosed" not in proc.stderr, proc.stderr
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".lock"]


def test_a_huge_single_line_document_is_read_in_pieces_that_add_up_to_it(prepared, tmp_path):
    import numpy as np

    from roberta_scratch.data.corpus import MAX_DOCUMENT_CHARS
    from roberta_scratch.tokenization.byte_level import load_tokenizer

    words = ("the cat sat on a mat while the dog ran " * (MAX_DOCUMENT_CHARS // 15)).rstrip()
    assert len(words) > 2.5 * MAX_DOCUMENT_CHARS
    (tmp_path / "one-line.txt").write_text(words + "\n")
    with pytest.warns(UserWarning, match=r"documents longer than 1,048,576 are read as several, cut at whitespace"):
        prepare(
            [str(tmp_path / "one-line.txt")],
            str(prepared / "tok"),
            str(tmp_path / "data"),
            seq_len=32,
            val_fraction=0.0,
            show_progress=False,
            num_workers=1,
        )
    meta = load_meta(str(tmp_path / "data"))
    assert meta["report"]["documents"] == 3
    tok = load_tokenizer(str(prepared / "tok"))
    ids = np.fromfile(tmp_path / "data" / meta["files_dir"] / "train-00000.bin", dtype=meta["dtype"])
    pieces = tok.decode(ids.tolist()).split("</s>")
    assert pieces[-1] == "" and all(0 < len(p) <= MAX_DOCUMENT_CHARS for p in pieces[:-1])
    assert "".join(pieces) == words and all(p.startswith(" ") for p in pieces[1:-1])
