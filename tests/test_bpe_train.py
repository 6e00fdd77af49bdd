"""Training byte-level BPE: hand-worked merges, incremental counting against a naive
recount, identical merges to the `tokenizers` trainer, files, progress, the CLI."""

from __future__ import annotations

import json
import random
from collections import Counter
from itertools import pairwise

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from roberta_scratch.cli import main as cli_main
from roberta_scratch.tokenization import bpe_train
from roberta_scratch.tokenization.bpe_train import learn_merges
from roberta_scratch.tokenization.byte_level import (
    GPT2_SPLIT_PATTERN,
    ByteLevelBPETokenizer,
    bytes_to_unicode,
    load_tokenizer,
)

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def naive_merges(word_counts: dict[bytes, int], num_merges: int, min_frequency: int = 2) -> list[tuple[bytes, bytes]]:
    """minbpe's loop: recount every pair of every word after each merge. Slow, obviously right."""
    words = {tuple(w): n for w, n in word_counts.items()}
    token_bytes = {b: bytes([b]) for b in range(256)}
    merges = []
    new_id = 256
    while len({a + b for a, b in merges}) < num_merges:  # distinct new tokens, as learn_merges counts
        stats = Counter()
        for word, n in words.items():
            for pair in pairwise(word):
                stats[pair] += n
        if not stats:
            break
        # Most frequent; ties to the pair of older tokens (bytes by value here, as byte_order defaults to).
        pair = min(stats, key=lambda p: (-stats[p], p))
        if stats[pair] < min_frequency:
            break
        token_bytes[new_id] = token_bytes[pair[0]] + token_bytes[pair[1]]
        merges.append((token_bytes[pair[0]], token_bytes[pair[1]]))
        words = {tuple(bpe_train.merge(list(w), pair, new_id)): n for w, n in words.items()}
        new_id += 1
    return merges


def test_hand_worked_example():
    """hug x10, pug x5, pun x12, bun x4, hugs x5 (the worked example in bpe_train's docstring).

    (u,g)=20 is the most frequent pair; then (u,n)=16 beats (h,ug)=15; then (h,ug)=15;
    then (p,un)=12; then nothing left occurs twice but (p,ug)=5 and (ug,s)=5: the older
    token "p" comes before "ug", so (p,ug) wins the tie.
    """
    counts = {b"hug": 10, b"pug": 5, b"pun": 12, b"bun": 4, b"hugs": 5}
    expected = [(b"u", b"g"), (b"u", b"n"), (b"h", b"ug"), (b"p", b"un"), (b"p", b"ug")]
    assert learn_merges(counts, 5, show_progress=False) == expected
    assert learn_merges(counts, 100, min_frequency=6, show_progress=False) == expected[:4]


def test_hand_worked_byte_level_corpus():
    # Words: "ab" x1, " ab" x2, "abc" x1. (a,b)=4 -> "ab"; (Ġ,ab)=2 -> "Ġab"; (ab,c)=1 < min_frequency: stop.
    tok = ByteLevelBPETokenizer.train(iter(["ab ab ab\n", "abc"]), vocab_size=1000, show_progress=False)
    assert tok.merges == [("a", "b"), ("Ġ", "ab")]
    assert tok.vocab_size == 4 + 256 + 2 + 1
    assert [tok.id_to_token(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert tok.id_to_token(4) == "!" and tok.mask_token_id == tok.vocab_size - 1  # bytes in GPT-2's order; <mask> last
    assert tok.tokenize("ab ab abc") == ["ab", "Ġab", "Ġab", "c"]


def test_ties_break_by_vocabulary_order_whatever_the_corpus_order():
    # Every pair occurs once: the winner is the pair whose tokens come first in the vocabulary.
    lines = ["cd xy\n", "ab\n", "ba\n"]
    first = ByteLevelBPETokenizer.train(iter(lines), vocab_size=270, min_frequency=1, show_progress=False)
    assert first.merges[:3] == [("a", "b"), ("b", "a"), ("c", "d")]
    for seed in range(3):
        shuffled = lines[:]
        random.Random(seed).shuffle(shuffled)
        again = ByteLevelBPETokenizer.train(iter(shuffled), vocab_size=270, min_frequency=1, show_progress=False)
        assert again.merges == first.merges


@settings(max_examples=60, deadline=None)
@given(
    words=st.dictionaries(
        st.binary(min_size=1, max_size=8).map(lambda b: bytes(x % 6 for x in b)), st.integers(1, 9), max_size=30
    ),
    min_frequency=st.integers(1, 3),
)
def test_incremental_counts_match_a_full_recount(words, min_frequency):
    """Small alphabets make overlapping pairs ("aaa") and ties common."""
    assert learn_merges(words, 40, min_frequency, show_progress=False) == naive_merges(words, 40, min_frequency)


def test_a_merge_touches_only_the_words_holding_its_pair(monkeypatch, docstrings):  # noqa: F811
    calls = []
    real_merge = bpe_train.merge
    monkeypatch.setattr(bpe_train, "merge", lambda *a: calls.append(1) or real_merge(*a))
    counts = bpe_train.count_words(docstrings[:1500], regex.compile(GPT2_SPLIT_PATTERN).findall, show_progress=False)
    merges = learn_merges(counts, 1000, show_progress=False)
    assert len(merges) == 1000
    # A full recount would visit every word for every merge.
    assert len(calls) < 0.02 * len(merges) * len(counts), (len(calls), len(counts))


def test_same_merges_and_compression_as_the_tokenizers_trainer(tmp_path, docstrings):  # noqa: F811
    from tokenizers import ByteLevelBPETokenizer as ReferenceTrainer

    train, held_out = docstrings[: len(docstrings) * 4 // 5], docstrings[len(docstrings) * 4 // 5 :]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(train), encoding="utf-8")
    ours = ByteLevelBPETokenizer.train([corpus], vocab_size=2000, show_progress=False)
    reference = ReferenceTrainer()
    reference.train([str(corpus)], vocab_size=2000, min_frequency=2, special_tokens=SPECIALS, show_progress=False)

    reference_merges = [tuple(m) for m in json.loads(reference._tokenizer.to_str())["model"]["merges"]]
    assert ours.merges == reference_merges
    assert ours.vocab_size == reference.get_vocab_size() == 2000
    n_ours = sum(len(ours.encode(d, add_special_tokens=False)) for d in held_out)
    n_reference = sum(len(e.ids) for e in reference.encode_batch(held_out))
    assert abs(n_ours / n_reference - 1) < 0.02


def test_train_save_load_encode_round_trip(tmp_path, docstrings):  # noqa: F811
    specials = [*SPECIALS, "<extra>"]
    tok = ByteLevelBPETokenizer.train(
        iter(docstrings[:800]), vocab_size=600, special_tokens=specials, show_progress=False
    )
    assert tok.vocab_size == 600 and tok.special_tokens["<extra>"] == 4 and tok.mask_token_id == 599
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.vocab == tok.vocab and loaded.merges == tok.merges
    for text in [d for d in docstrings[800:900] if "<" not in d] + ["an <extra> token, a <mask>."]:
        ids = loaded.encode(text)
        assert ids == tok.encode(text)
        assert loaded.decode(ids, skip_special_tokens=True) == text.replace(" <mask>", "").replace("<extra>", "")
    assert loaded.tokenize("x<extra>y") == ["x", "<extra>", "y"]


def test_non_utf8_files_are_read_with_replacement_and_reported(tmp_path):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("caf\u00e9 au lait\ncaf\u00e9 noir\n", encoding="utf-8")
    bad.write_bytes("caf\u00e9 au lait\n".encode("latin-1") * 3 + b"fine line\n")
    with pytest.warns(UserWarning, match=r"bad\.txt: 3 line\(s\) are not valid UTF-8 \(first: line 1\)"):
        tok = ByteLevelBPETokenizer.train([good, bad], vocab_size=300, show_progress=False)
    replacement = "".join(bytes_to_unicode()[b] for b in "\ufffd".encode())
    assert replacement in tok.vocab  # U+FFFD was counted, 3 times, and merged


def test_progress_bars_are_shown(capsys):
    ByteLevelBPETokenizer.train(iter(["the cat sat on the mat\n"] * 10), vocab_size=270, show_progress=True)
    err = capsys.readouterr().err
    assert "counting words" in err and "learning merges" in err


def test_training_errors(tmp_path):
    with pytest.raises(ValueError, match="vocab_size=100 leaves no room for the 256 bytes and 5 special tokens"):
        ByteLevelBPETokenizer.train(iter(["x"]), vocab_size=100)
    with pytest.raises(FileNotFoundError, match="pass an iterator"):
        ByteLevelBPETokenizer.train(["a list of texts is read as paths"], vocab_size=300)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        ByteLevelBPETokenizer.train(tmp_path / "missing.txt", vocab_size=300)


def test_cli_train_and_encode(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat\nthe dog sat on the log\n" * 20, encoding="utf-8")
    assert (
        cli_main(["tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "270", "--out", str(tmp_path / "tok")])
        == 0
    )
    assert "saved a 270-token byte-level BPE tokenizer (9 merges)" in capsys.readouterr().out
    tok = load_tokenizer(tmp_path / "tok")
    assert cli_main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "tok"), str(corpus)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 40
    assert [int(i) for i in lines[0].split()] == tok.encode("the cat sat on the mat\n", add_special_tokens=False)

    # like `prepare`, training reads directories of .txt and .jsonl files
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.jsonl").write_text('{"text": "the cat sat on the mat"}\n' * 20, encoding="utf-8")
    assert (
        cli_main(
            [
                "tokenizer",
                "train",
                "--corpus",
                str(tmp_path / "dir"),
                "--vocab-size",
                "270",
                "--out",
                str(tmp_path / "tok2"),
            ]
        )
        == 0
    )
    assert load_tokenizer(tmp_path / "tok2").tokenize("the cat") == ["the", "Ġcat"]


@pytest.mark.slow
def test_training_8000_merges_on_10_mb_takes_minutes_at_most(tmp_path, docstrings):  # noqa: F811
    import time

    corpus = tmp_path / "10mb.txt"
    with open(corpus, "w", encoding="utf-8") as f:
        while f.tell() < 10_000_000:
            f.write("\n".join(docstrings) + "\n")
    start = time.perf_counter()
    tok = ByteLevelBPETokenizer.train([corpus], vocab_size=8000 + 256 + 5, show_progress=False)
    assert len(tok.merges) == 8000
    assert time.perf_counter() - start < 300
