"""prepare commits a dataset atomically: killed at any point of its commit, it leaves the old
data or the new, never a mix that prepare or pretrain would accept; the next run cleans up."""

import json
import os
import shutil
import signal

import numpy as np
import pytest

from roberta_scratch.data.packed import TokenStream, load_meta, prepare, tokenizer_dir
from roberta_scratch.data.packed_dataset import PackedDataset
from roberta_scratch.tokenization.byte_level import ByteLevelBPETokenizer, load_tokenizer

WORDS = "the cat sat on a mat while the dog ran to the red house and a bird sang in the old tree".split()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepare")
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(WORDS, rng.integers(3, 15))) for _ in range(150)]
    (root / "corpus.txt").write_text("\n\n".join(docs) + "\n")
    # b has the smaller vocabulary, so more tokens: its shards are longer than a manifest of a expects,
    # and a reader that trusted that manifest would read part of them as if they were a's
    for name, vocab in (("tok_a", 340), ("tok_b", 300)):
        ByteLevelBPETokenizer.train(
            iter([" ".join(WORDS)] * 30), vocab_size=vocab, show_progress=False
        ).save_pretrained(str(root / name))
    return root


def run(setup, tok, out):
    return prepare(
        [str(setup / "corpus.txt")],
        str(setup / tok),
        str(out),
        seq_len=16,
        val_fraction=0.1,
        show_progress=False,
        num_workers=1,
    )


def contents(data_dir):
    """What pretraining would read: both token streams, the document ends and the tokenizer."""
    streams = {s: TokenStream(str(data_dir), s) for s in ("train", "val")}
    PackedDataset(str(data_dir), "train", 16)
    return (
        {s: (t[0 : len(t)].tolist(), t.doc_ends.tolist()) for s, t in streams.items()},
        load_tokenizer(tokenizer_dir(str(data_dir))).fingerprint(),
    )


MUTATIONS = [
    (os, "rename"),
    (os, "replace"),
    (os, "remove"),
    (os, "unlink"),
    (os, "rmdir"),
    (os, "mkdir"),
    (shutil, "rmtree"),
]


def prepare_killed_at(setup, tok, out, k) -> bool:
    """Run prepare in a forked child that SIGKILLs itself at its k-th file-system change.
    Returns False when the child got through without reaching it."""
    pid = os.fork()
    if pid == 0:  # the child
        try:
            calls = [0]
            for module, name in MUTATIONS:
                real = getattr(module, name)

                def counted(*args, _real=real, **kwargs):
                    calls[0] += 1
                    if calls[0] == k:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return _real(*args, **kwargs)

                setattr(module, name, counted)
            run(setup, tok, out)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_a_kill_at_any_step_of_the_commit_leaves_old_or_new_data(setup, tmp_path, capsys):
    run(setup, "tok_a", tmp_path / "clean_a")
    run(setup, "tok_b", tmp_path / "clean_b")
    clean = {"a": contents(tmp_path / "clean_a"), "b": contents(tmp_path / "clean_b")}
    assert clean["a"] != clean["b"]
    k, killed = 1, 0
    while True:
        out = tmp_path / f"run{k}"
        run(setup, "tok_a", out)
        if not prepare_killed_at(setup, "tok_b", out, k):
            break
        killed += 1
        try:
            state = contents(out)
        except (FileNotFoundError, ValueError):
            state = None  # refused with a clear error: acceptable, never silently wrong
        assert state is None or state in (clean["a"], clean["b"]), f"killed at change {k}: the data is a mix"
        run(setup, "tok_b", out)  # the next run finishes the job
        assert contents(out) == clean["b"], k
        names = sorted(os.listdir(out))
        assert [n for n in names if n.startswith((".prepare-", "data-"))] == [load_meta(str(out))["files_dir"]], names
        k += 1
    assert killed >= 5, killed  # the commit was interrupted at every one of its steps
    print(f"killed at {killed} points")
    capsys.readouterr()


def test_a_damaged_shard_is_refused_and_prepared_again(setup, tmp_path, capsys):
    out = tmp_path / "data"
    meta = run(setup, "tok_a", out)
    shard = out / meta["files_dir"] / "train-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])  # truncated
    with pytest.raises(ValueError, match="damaged.*train-00000.bin has"):
        TokenStream(str(out), "train")
    run(setup, "tok_a", out)
    assert "already prepared" not in capsys.readouterr().out
    TokenStream(str(out), "train")


def test_a_tokenizer_setting_that_changes_the_ids_is_a_new_dataset(setup, tmp_path, capsys):
    tok_dir = tmp_path / "tok"
    shutil.copytree(setup / "tok_a", tok_dir)
    out = tmp_path / "data"
    run(setup, "tok_a", out)
    prepare([str(setup / "corpus.txt")], str(tok_dir), str(out), seq_len=16, val_fraction=0.1, show_progress=False)
    assert "already prepared" in capsys.readouterr().out
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({**config, "add_prefix_space": True}))
    prepare([str(setup / "corpus.txt")], str(tok_dir), str(out), seq_len=16, val_fraction=0.1, show_progress=False)
    assert "already prepared" not in capsys.readouterr().out
    assert load_tokenizer(tokenizer_dir(str(out))).add_prefix_space


def test_two_prepares_on_one_folder_do_not_interleave(setup, tmp_path):
    from roberta_scratch.fileio import DirectoryBusy, lock_dir

    out = tmp_path / "data"
    with lock_dir(out, "a test"):
        pid = os.fork()
        if pid == 0:
            try:
                run(setup, "tok_a", out)
                os._exit(1)
            except DirectoryBusy as e:
                os._exit(0 if "in use by another process" in str(e) else 2)
            except BaseException:
                os._exit(3)
        _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


def test_a_jsonl_record_without_a_text_string_is_named_by_file_and_line(setup, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "the cat"}\n{"text": 5}\n')
    with pytest.raises(ValueError, match=rf"{corpus}:2: 'text' is a int, not a string"):
        prepare([str(corpus)], str(setup / "tok_a"), str(tmp_path / "out"), seq_len=16, show_progress=False)
    corpus.write_text('{"text": "the cat"}\n{"body": "x"}\n')
    with pytest.raises(ValueError, match=rf"{corpus}:2: no 'text' field"):
        prepare([str(corpus)], str(setup / "tok_a"), str(tmp_path / "out"), seq_len=16, show_progress=False)
